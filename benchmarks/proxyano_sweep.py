"""Where does ProxyAno's anomaly signal come from? Train one variant and score it every N epochs, label-free.

A plain training loop (the model's own ``training_losses``, no Lightning), with the data held as tensors on
one device. Whole groups (patients, with ``--group-column``) of the *training* split are held out as a
validation set, and half of its images get a synthetic lesion (the BrainMRIDemo generator,
:mod:`proxyano_plugin.data.synthetic_validation`). Every ``--every`` epochs one JSON line gives the summed
loss terms and the validation AUROCs of several readings of the model:

- ``full_*``: the real inference path, |x - IRM(PEM(x))| scored as configured (what anomalib reports);
- ``irm_on_true_proxy_*``: the IRM fed the *extracted* proxy instead of the predicted one;
- ``pem_error_*``: the PEM's own error |G2*(proxy(x) - PEM(x))| (needs the proxy extractor at test time);
- ``pem_vs_image_*``: |G2*(x - PEM(x))|, the predicted proxy against the image itself;
- ``memory_residual_*`` / ``memory_nearest_*`` / ``memory_unaddressed_*``: how unfamiliar the bottleneck
  features are to the PEM's memory (see :func:`memory_maps`), a signal the skips cannot copy away;
- ``masked{B}_*``: every pixel reconstructed from a pass in which its B x B block of the input was blanked
  (see :func:`masked_reconstruction`), so the skips cannot copy a lesion that covers the block;
- ``sigma{S}_top{K}_image`` / ``sigma{S}_pixel``: the full path with other map smoothings and top-k;
- ``preblur{S}_*``: the error of the blurred image and reconstruction, |G*x - G*x_hat|;
- ``brighter{S}_*``: its positive part only, max(G*x - G*x_hat, 0) (``error_sign="brighter"``);
- ``ema_full_*`` / ``ema_bn_full_*`` (with ``--set weight_averaging=...``): the averaged networks, as they are
  and with their BatchNorm statistics recomputed on the training images.

The epoch with the best ``--select`` reading (mean of its image and pixel validation AUROC) is kept; with
``--test`` that state alone is scored once on the test split of every ``--test-csv`` (a line with
``"split": "test"``). Nothing in the loop looks at a test image before that. Examples::

    python benchmarks/proxyano_sweep.py --label base --root ../shared/data/lgg_flair \
        --split-csv patients_seed0 --group-column patient --epochs 30 --every 3
    python benchmarks/proxyano_sweep.py --label skips --set pem_skips='"memory"' ...   # --set values are JSON
    python benchmarks/proxyano_sweep.py --label demo --epochs 200 --every 25            # BrainMRIDemo

``--table OUT.jsonl ...`` prints the image-level readings of saved outputs as a Markdown table. This measures
one seed: use it to find out what matters, then confirm with ``proxyano-bench`` over seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F  # noqa: N812
from torch.optim.swa_utils import update_bn
from torchmetrics.functional.classification import binary_auroc

from proxyano_plugin import BrainMRIDemo, ProxyAno
from proxyano_plugin.data import SplitCSV
from proxyano_plugin.data.split_csv import resolve_split_csv
from proxyano_plugin.data.synthetic_validation import hold_out, paint_validation
from proxyano_plugin.models.image_errors import gaussian_blur, gaussian_kernel, gradient_l1, head_mean, ssim_error

SIGMAS = (1.0, 2.0, 4.0)
MASK_BLOCKS = (8, 16)  # px at 64 px: blanked blocks of the masked readings
TOP_FRACTIONS = (0.001, 0.01, 0.05, 1.0)  # 1.0: the mean error


def by_subject(model: ProxyAno, validation: tuple[torch.Tensor, ...], sources: list[str]) -> list[dict]:
    """Readings per subject (a source name's part before its first ``_``), with the model's own scoring.

    Subjects whose *normal* slices score high are what an image-level AUROC pays for; a slice reaches the
    border when a pixel of its outermost rows or columns is brighter than 0.1.
    """
    images, labels, _ = validation
    net = model.model
    net.eval()
    with torch.no_grad():
        scores = net(images).pred_score.flatten()
    net.train()
    frame = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], dim=-1)
    reaches_border = frame.amax(dim=(1, 2)) > 0.1
    subjects = [Path(source).name.split("_")[0] for source in sources]
    lines = []
    for subject in sorted(set(subjects)):
        chosen = torch.tensor([name == subject for name in subjects], device=images.device)
        normal, lesion = scores[chosen & (labels == 0)], scores[chosen & (labels == 1)]
        line = {"subject": subject, "normal_median": round(normal.median().item(), 4)}
        if len(lesion) and len(normal):
            line["lesion_median"] = round(lesion.median().item(), 4)
            within = binary_auroc(scores[chosen], labels[chosen]).item()
            line["auroc_within"] = round(within, 3)
        line["reaches_border"] = round(reaches_border[chosen].float().mean().item(), 3)
        lines.append(line)
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="run", help="name printed on every line")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--every", type=int, default=5, help="evaluate every N epochs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default=None, help="BrainMRIDemo cache folder, or the --split-csv dataset's root")
    parser.add_argument("--split-csv", default=None, help="a SplitCSV split (e.g. medianomaly) instead of the demo")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="a ProxyAno argument")
    parser.add_argument(
        "--data", action="append", default=[], metavar="KEY=JSON", help="a datamodule argument (--harness-validation)"
    )
    parser.add_argument("--group-column", default=None, help="split-CSV column whose groups are held out whole")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="share of training groups held out")
    parser.add_argument("--lesion-appearance", default="t1ce", choices=("t1ce", "flair"), help="validation lesions")
    parser.add_argument(
        "--harness-validation",
        action="store_true",
        help="validate on the datamodule's own label-free set (val_split_mode='lesions'), as the harness does",
    )
    parser.add_argument(
        "--lesion-area", type=float, nargs=2, default=(0.01, 0.08), help="validation lesion area, share of the head"
    )
    parser.add_argument(
        "--paired-validation",
        action="store_true",
        help="every held-out image clean and painted (val_lesion_pairs): only the lesions separate the classes",
    )
    parser.add_argument("--select", default="full", help="reading whose validation AUROCs choose the epoch")
    parser.add_argument("--test", action="store_true", help="score the selected epoch once on the test split(s)")
    parser.add_argument("--test-csv", action="append", default=[], help="split CSVs to test on (default --split-csv)")
    parser.add_argument("--save", default=None, help="file to save the selected epoch's model state into")
    parser.add_argument("--load", default=None, help="train nothing: evaluate a state saved with --save")
    parser.add_argument("--gallery", default=None, help="PNG of validation lesions through the selected epoch")
    parser.add_argument(
        "--by-subject",
        action="store_true",
        help="with --harness-validation: per validation subject, the median score of its normal and lesion "
        "slices, their AUROC and the share of its slices that reach the image border",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--table", nargs="+", metavar="JSONL", help="train nothing: print the image AUROCs of these outputs as Markdown"
    )
    args = parser.parse_args()
    if args.by_subject and not (args.harness_validation and args.load):
        parser.error("--by-subject reads a saved model (--load) on the harness's validation set (--harness-validation)")
    return args


# The image-level readings the results READMEs tabulate: JSON key -> column title.
TABLE_COLUMNS = {
    "full_image": "default score (top 1 %)",
    "full_pixel": "pixel, default map",
    "sigma1_top1_image": "mean error",
    "preblur4_top0.01_image": "blurred error σ=4, top 1 %",
    "preblur4_top1_image": "blurred error σ=4, mean",
    "irm_on_true_proxy_image": "IRM on the extracted proxy",
}


def markdown_table(paths: list[str]) -> str:
    """One row per JSON line of the sweep outputs (AUROC in %), in file order."""
    lines = [
        "| label | epoch | " + " | ".join(TABLE_COLUMNS.values()) + " |",
        "|---|---:|" + "---:|" * len(TABLE_COLUMNS),
    ]
    for path in paths:
        with open(path) as handle:
            for row in map(json.loads, filter(str.strip, handle)):
                values = " | ".join(f"{100 * row[key]:.1f}" if key in row else "" for key in TABLE_COLUMNS)
                lines.append(f"| {row['label']} | {row['epoch']} | {values} |")
    return "\n".join(lines)


def load_split(model: ProxyAno, loader, device: torch.device) -> tuple[torch.Tensor | list[str] | None, ...]:
    """Images (pre-processed, model channels), labels, masks (at model size) and file paths of a whole split."""
    images, labels, masks, paths = [], [], [], []
    for batch in loader:  # masks: all or none (image-level datasets)
        batch_images = model.model.to_model_channels(model.pre_processor.transform(batch.image))
        images.append(batch_images)
        paths += [str(path) for path in batch.image_path]
        labels.append(batch.gt_label)
        if batch.gt_mask is not None:
            mask = batch.gt_mask.float().reshape(batch_images.shape[0], 1, *batch.gt_mask.shape[-2:])
            masks.append(torch.nn.functional.interpolate(mask, size=batch_images.shape[-2:], mode="nearest"))
    stacked = [torch.cat(images), torch.cat(labels).int(), torch.cat(masks).int() if masks else None]
    return *(t.to(device) if t is not None else None for t in stacked), paths


def validation_split(
    images: torch.Tensor, paths: list[str], args: argparse.Namespace
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Split training images into (kept, validation); validation = held-out groups, half with lesions."""
    groups = paths
    if args.group_column:
        table = pd.read_csv(resolve_split_csv(args.root, args.split_csv))
        by_file = dict(
            zip(table.file.map(lambda f: str((Path(args.root) / f).resolve())), table[args.group_column], strict=True)
        )
        groups = [str(by_file[str(Path(path).resolve())]) for path in paths]
    held = torch.from_numpy(hold_out(groups, args.val_fraction, args.seed)).to(images.device)
    held_images = list(images[held, 0].cpu().numpy())
    area = tuple(args.lesion_area)
    painted = paint_validation(
        held_images, args.seed, area_range=area, appearance=args.lesion_appearance, paired=args.paired_validation
    )
    val_images, val_masks = (torch.from_numpy(np.stack(arrays)).unsqueeze(1) for arrays in painted[:2])
    labels = torch.from_numpy(painted.labels).int()
    return images[~held], (val_images.to(images.device), labels.to(images.device), val_masks.int().to(images.device))


def train_epoch(
    model: ProxyAno, optimizer: torch.optim.Optimizer, images: torch.Tensor, batch_size: int
) -> dict[str, float]:
    """One pass over ``images`` in order, full batches only; the loss terms summed over the steps."""
    totals: dict[str, float] = {}
    for start in range(0, images.shape[0] - batch_size + 1, batch_size):
        terms = model.training_losses(images[start : start + batch_size])
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        model.on_train_batch_end(None, None, start)  # moves the averaged weights (weight_averaging > 0)
        for name, value in terms.items():
            totals[name] = totals.get(name, 0.0) + value.item()
    return totals


@torch.no_grad()
def evaluate(
    model: ProxyAno,
    images: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor | None,
    normals: torch.Tensor | None = None,
) -> dict[str, float]:
    net = model.model
    net.eval()
    scores = {}

    def pixel(name: str, anomaly_map: torch.Tensor) -> None:
        if masks is not None:
            scores[name] = binary_auroc(anomaly_map.flatten(), masks.flatten()).item()

    proxies = model.proxy_extractor(images)
    full = net.reconstruct(images)
    predicted = full.proxy  # the image itself with reconstruct_from="image"
    readings = {"full": full.reconstruction, "irm_on_true_proxy": net.irm(proxies)}
    for name, reconstruction in readings.items():
        anomaly_map = net.error_map(images, reconstruction)
        scores[f"{name}_image"] = binary_auroc(net.image_score(anomaly_map), labels).item()
        pixel(f"{name}_pixel", anomaly_map)
    if net.pem is not None:
        # The PEM against the image's own proxy (needs the extractor at test time) and against the image.
        for name, target in (("pem_error", proxies), ("pem_vs_image", images)):
            pem_map = (
                gaussian_blur(target - predicted, gaussian_kernel(2.0).to(images.device)).abs().mean(1, keepdim=True)
            )
            pixel(f"{name}_pixel", pem_map)
            scores[f"{name}_image"] = binary_auroc(net.image_score(pem_map), labels).item()
    if net.pem is not None:
        for block in MASK_BLOCKS:
            anomaly_map = net.error_map(images, masked_reconstruction(net, images, block))
            scores[f"masked{block}_image"] = binary_auroc(net.image_score(anomaly_map), labels).item()
            pixel(f"masked{block}_pixel", anomaly_map)
    if net.pem is not None and len(net.pem.memories):
        for name, memory_map in memory_maps(net, images).items():
            pixel(f"{name}_pixel", memory_map)
            scores[f"{name}_image"] = binary_auroc(net.image_score(memory_map), labels).item()
    kernel, top = net.smoothing_kernel, net.score_topk
    for sigma in SIGMAS:
        net.smoothing_kernel = gaussian_kernel(sigma).to(images.device)
        anomaly_map = net.error_map(images, readings["full"])
        pixel(f"sigma{sigma:g}_pixel", anomaly_map)
        for fraction in TOP_FRACTIONS:
            net.score_topk = fraction
            scores[f"sigma{sigma:g}_top{fraction:g}_image"] = binary_auroc(net.image_score(anomaly_map), labels).item()
        blur = gaussian_kernel(sigma).to(images.device)
        blurred = gaussian_blur(images - readings["full"], blur)
        for prefix, coarse in (("preblur", blurred.abs()), ("brighter", blurred.clamp_min(0))):
            coarse = coarse.mean(1, keepdim=True)
            pixel(f"{prefix}{sigma:g}_pixel", coarse)
            for fraction in (0.01, 1.0):
                net.score_topk = fraction
                key = f"{prefix}{sigma:g}_top{fraction:g}_image"
                scores[key] = binary_auroc(net.image_score(coarse), labels).item()
    net.smoothing_kernel, net.score_topk = kernel, top
    scores |= calibrated_readings(net, images, readings["full"], labels, masks, normals)
    net.train()
    return scores


def masked_reconstruction(net: torch.nn.Module, images: torch.Tensor, block: int) -> torch.Tensor:
    """The full path's reconstruction, each pixel taken from the one of four passes that blanked (zeroed) its
    ``block`` x ``block`` block of the input.

    Blocks are assigned to the passes by their (row, column) parity, so in every pass a blanked block has only
    unblanked neighbours: the networks fill it from the anatomy around it, and a lesion inside it cannot pass
    through the skips. Inpainting as a reading of the trained model, not a training change.
    """
    height, width = images.shape[-2:]
    rows = torch.arange(height, device=images.device) // block % 2
    columns = torch.arange(width, device=images.device) // block % 2
    parity = rows[:, None] * 2 + columns[None, :]
    combined = 0
    for part in range(4):
        blanked = (parity == part).to(images.dtype)
        combined = combined + net.reconstruct(images * (1 - blanked)).reconstruction * blanked
    return combined


def memory_maps(net: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """How unfamiliar each bottleneck location is to the PEM's memory, upsampled to image maps.

    The skips let the decoders copy what the memory would not express, so the reconstruction can hide a
    lesion that the bottleneck features still show: ``memory_residual`` is |z - read(z)|^2 (channel mean),
    ``memory_nearest`` the squared distance of z to its nearest item, ``memory_unaddressed`` 1 - the largest
    addressing weight.
    """
    memory = net.pem.memories[-1]
    features = net.pem.encoder(net.to_model_channels(images))[-1]
    read_out, weights = memory(features)
    batch, channels, height, width = features.shape
    queries = features.permute(0, 2, 3, 1).reshape(-1, channels)
    grids = {
        "memory_residual": (features - read_out).pow(2).mean(1),
        "memory_nearest": torch.cdist(queries, memory.items).pow(2).min(1).values.reshape(batch, height, width)
        / channels,
        "memory_unaddressed": 1 - weights.max(1).values.reshape(batch, height, width),
    }
    size = images.shape[-2:]
    return {
        name: F.interpolate(grid.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
        for name, grid in grids.items()
    }


def calibrated_readings(net, images, reconstructions, labels, masks, normals) -> dict[str, float]:
    """Maps and scores relative to what normal images show: the image's own head, or each pixel's normal error."""
    scores = {}
    anomaly_map = net.error_map(images, reconstructions)
    top, reference = net.image_score(anomaly_map), head_mean(anomaly_map, images)
    scores["minus_head_mean_image"] = binary_auroc(top - reference, labels).item()
    scores["over_head_mean_image"] = binary_auroc(net.image_score(anomaly_map, images, relative=True), labels).item()
    structural = {
        f"ssim{sigma:g}": ssim_error(images, reconstructions, gaussian_kernel(sigma).to(images.device))
        for sigma in (1.0, 1.5, 3.0)
    }
    gradient = gradient_l1(images - reconstructions).mean(1, keepdim=True)  # error="gradient", before smoothing
    structural["gradient"] = gradient
    structural["gradient_plus_l1"] = gradient + (images - reconstructions).abs()
    structural["gradient_magnitude"] = (
        gradient_l1(images).mean(1, keepdim=True) - gradient_l1(reconstructions).mean(1, keepdim=True)
    ).abs()
    for name, error in list(structural.items()):
        if name.startswith("gradient"):
            structural[f"{name}_s2"] = gaussian_blur(error, gaussian_kernel(2.0).to(images.device))
    for name, error in structural.items():
        if not name.endswith("_s2") and net.smoothing_kernel is not None:
            error = gaussian_blur(error, net.smoothing_kernel)
        scores[f"{name}_image"] = binary_auroc(net.image_score(error), labels).item()
        if masks is not None:
            scores[f"{name}_pixel"] = binary_auroc(error.flatten(), masks.flatten()).item()
    if normals is not None:
        normal_maps = torch.cat([net.reconstruct(chunk).anomaly_map for chunk in normals.split(64)])
        mean, std = normal_maps.mean(0), normal_maps.std(0)
        floor = std.median()
        for name, calibrated in (
            ("minus_pixel_mean", (anomaly_map - mean).clamp_min(0)),
            ("pixel_z", (anomaly_map - mean) / (std + floor)),
        ):
            scores[f"{name}_image"] = binary_auroc(net.image_score(calibrated), labels).item()
            if masks is not None:
                scores[f"{name}_pixel"] = binary_auroc(calibrated.flatten(), masks.flatten()).item()
    return scores


@torch.no_grad()
def save_gallery(model: ProxyAno, validation: tuple[torch.Tensor, ...], path: str, count: int = 8) -> None:
    """Rows: image, extracted proxy, predicted proxy, reconstruction, error map (own scale), lesion mask."""
    import cv2

    images, labels, masks = validation
    chosen = images[labels == 1][:count]
    model.model.eval()
    output = model.model.reconstruct(chosen)
    error = output.anomaly_map / output.anomaly_map.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)
    rows = [
        chosen,
        model.proxy_extractor(chosen),
        output.proxy,
        output.reconstruction,
        error,
        masks[labels == 1][:count],
    ]
    grid = torch.cat([torch.cat(list(row[:, 0].float().cpu()), dim=1) for row in rows], dim=0)
    cv2.imwrite(path, (grid.clamp(0, 1) * 255).byte().numpy())
    model.model.train()


def selection_score(scores: dict[str, float], reading: str) -> float:
    """Mean of a reading's image and (when there are masks) pixel AUROC."""
    values = [scores[key] for key in (f"{reading}_image", f"{reading}_pixel") if key in scores]
    return sum(values) / len(values)


def with_batch_statistics(net: torch.nn.Module, images: torch.Tensor, batch_size: int) -> torch.nn.Module:
    """A copy of ``net`` whose BatchNorm statistics are recomputed on ``images`` through its own inference path.

    Averaged weights inherit running statistics measured for other weights; SWA recomputes them for that reason.
    """
    recomputed = copy.deepcopy(net)
    update_bn(images.split(batch_size), recomputed)
    return recomputed.eval()


@torch.no_grad()
def averaged_readings(model: ProxyAno, validation: tuple, train_images: torch.Tensor, batch_size: int) -> dict:
    """``ema_*``: the averaged networks as they are; ``ema_bn_*``: the same with BatchNorm statistics recomputed."""
    trained, readings = model.model, {}
    try:
        for label, net in (
            ("ema", model.averaged),
            ("ema_bn", with_batch_statistics(model.averaged, train_images, batch_size)),
        ):
            model.model = net
            scores = evaluate(model, *validation)
            readings |= {f"{label}_{key}": value for key, value in scores.items() if key.startswith("full_")}
    finally:
        model.model = trained
    return readings


def main() -> None:
    args = parse_args()
    if args.table:
        print(markdown_table(args.table))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides, data_overrides = (
        {key: json.loads(value) for key, value in (item.split("=", 1) for item in items)}
        for items in (args.set, args.data)
    )
    model = ProxyAno(**overrides)
    model.model.to(device)
    loaders = {"train_batch_size": args.batch_size, "eval_batch_size": 64, "seed": args.seed, "num_workers": 0}

    def datamodule(split_csv: str | None, harness_validation: bool = False):
        validation_args = {"val_split_mode": "lesions" if harness_validation else "same_as_test"}
        if harness_validation:
            validation_args |= {"val_lesion_appearance": args.lesion_appearance, **data_overrides}
        if split_csv and harness_validation:
            validation_args |= {"val_split_ratio": args.val_fraction, "val_group_column": args.group_column}
        data = (
            SplitCSV(root=args.root, split_csv=split_csv, **validation_args, **loaders)
            if split_csv
            else BrainMRIDemo(root=args.root, **validation_args, **loaders)
        )
        data.prepare_data()
        data.setup()
        return data

    data = datamodule(args.split_csv, args.harness_validation)
    train_images, _, _, train_paths = load_split(model, data.train_dataloader(), device)
    if args.harness_validation:
        validation = load_split(model, data.val_dataloader(), device)[:3]
    else:
        train_images, validation = validation_split(train_images, train_paths, args)
    optimizer = model.optimizer()
    schedule = model.lr_scheduler(optimizer, args.epochs)
    started = time.perf_counter()
    best: tuple[float, int, dict] | None = None
    if args.load:
        saved = torch.load(args.load, map_location=device, weights_only=True)
        best, args.epochs = (0.0, saved["epoch"], saved["state"]), 0
        model.model.load_state_dict(saved["state"])
        scores = evaluate(model, *validation, normals=train_images)
        print(json.dumps({"label": args.label, "split": "validation", "epoch": saved["epoch"]} | scores), flush=True)
        if args.by_subject:
            for line in by_subject(model, validation, list(data.val_data.samples.source)):
                print(json.dumps({"label": args.label, "split": "validation"} | line), flush=True)
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(train_images.shape[0], device=device)
        totals = train_epoch(model, optimizer, train_images[order], args.batch_size)
        schedule.step()
        if epoch % args.every == 0 or epoch == args.epochs:
            scores = evaluate(model, *validation)
            if model.averaged is not None:
                scores |= averaged_readings(model, validation, train_images, args.batch_size)
            line = {"label": args.label, "split": "validation", "epoch": epoch}
            line |= {"seconds": round(time.perf_counter() - started, 1)}
            line |= {f"loss_{k}": round(v, 4) for k, v in totals.items()}
            line |= {k: round(v, 3) for k, v in scores.items()}
            print(json.dumps(line), flush=True)
            score = selection_score(scores, args.select)
            if best is None or score > best[0]:
                best = (score, epoch, copy.deepcopy(model.model.state_dict()))
    if best is not None:
        model.model.load_state_dict(best[2])
        if args.save:
            torch.save({"epoch": best[1], "state": best[2]}, args.save)
    if args.gallery:
        save_gallery(model, validation, args.gallery)
    if args.test and best is not None:
        for split_csv in args.test_csv or [args.split_csv]:
            test_images, test_labels, test_masks, _ = load_split(model, datamodule(split_csv).test_dataloader(), device)
            scores = evaluate(model, test_images, test_labels, test_masks)
            line = {"label": args.label, "split": "test", "test_csv": split_csv, "epoch": best[1]}
            print(json.dumps(line | {k: round(v, 3) for k, v in scores.items()}), flush=True)


if __name__ == "__main__":
    main()
