"""Where does ProxyAno's anomaly signal come from? Train one variant on BrainMRIDemo and score it every N epochs.

A plain training loop (the model's own ``training_losses``, no Lightning), with the whole demo held as
tensors on one device, so a variant trains in seconds per epoch on a GPU. Every ``--every`` epochs it
prints one JSON line with the summed loss terms and test AUROCs of several readings of the model:

- ``full_*``: the real inference path, |x - IRM(PEM(x))| (what anomalib reports);
- ``irm_on_true_proxy_*``: the IRM fed the *extracted* proxy of the test image instead of the predicted one;
- ``pem_error_pixel``: the PEM's own error |PEM(x) - proxy(x)| as a pixel map (does the memory refuse
  lesions?; absent without a PEM);
- ``sigma{S}_top{K}_image`` / ``sigma{S}_pixel``: the full path scored with other map smoothings and top-k;
- ``preblur{S}_*``: the error of the blurred image and reconstruction, |G*x - G*x_hat| (texture the proxy
  drops cancels out before the difference, instead of being smoothed after it).

Examples (the numbers in the model README came from these, on one NVIDIA H200 and on this repo's CPUs)::

    python benchmarks/proxyano_sweep.py --label base --epochs 200 --every 25
    python benchmarks/proxyano_sweep.py --label no-memory --epochs 200 --set memory_size=0
    python benchmarks/proxyano_sweep.py --label identity --set proxy='"identity"'

``--set`` values are JSON (strings need quotes). ``--split-csv`` swaps the demo for a real split-CSV dataset
(image labels only: the pixel readings are left out), e.g. brain_tumor_mri::

    python benchmarks/proxyano_sweep.py --label bt --root ../shared/data/brain_tumor_mri --split-csv medianomaly

``--table OUT.jsonl ...`` prints the image-level readings of saved outputs as the Markdown table the results
READMEs show. This measures one seed: use it to find out what matters, then confirm with ``proxyano-bench`` over seeds.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torchmetrics.functional.classification import binary_auroc

from proxyano_plugin import BrainMRIDemo, ProxyAno
from proxyano_plugin.data import SplitCSV
from proxyano_plugin.models.proxyano.torch_model import gaussian_blur, gaussian_kernel

SIGMAS = (1.0, 2.0, 4.0)
TOP_FRACTIONS = (0.001, 0.01, 0.05, 1.0)  # 1.0: the mean error


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
        "--table", nargs="+", metavar="JSONL", help="train nothing: print the image AUROCs of these outputs as Markdown"
    )
    return parser.parse_args()


# The image-level readings the results READMEs tabulate: JSON key -> column title.
TABLE_COLUMNS = {
    "full_image": "default score (top 1 %)",
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


def load_split(model: ProxyAno, loader, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Images (pre-processed, model channels), labels and masks (at model size) of a whole split."""
    images, labels, masks = [], [], []
    for batch in loader:  # masks: all or none (image-level datasets)
        batch_images = model.model.to_model_channels(model.pre_processor.transform(batch.image))
        images.append(batch_images)
        labels.append(batch.gt_label)
        if batch.gt_mask is not None:
            mask = batch.gt_mask.float().reshape(batch_images.shape[0], 1, *batch.gt_mask.shape[-2:])
            masks.append(torch.nn.functional.interpolate(mask, size=batch_images.shape[-2:], mode="nearest"))
    stacked = [torch.cat(images), torch.cat(labels).int(), torch.cat(masks).int() if masks else None]
    return tuple(t.to(device) if t is not None else None for t in stacked)


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
        for name, value in terms.items():
            totals[name] = totals.get(name, 0.0) + value.item()
    return totals


@torch.no_grad()
def evaluate(
    model: ProxyAno, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None
) -> dict[str, float]:
    net = model.model
    net.eval()
    scores = {}

    def pixel(name: str, anomaly_map: torch.Tensor) -> None:
        if masks is not None:
            scores[name] = binary_auroc(anomaly_map.flatten(), masks.flatten()).item()

    proxies = model.proxy_extractor(images)
    predicted = net.reconstruct(images).proxy  # the image itself with reconstruct_from="image"
    readings = {"full": net.irm(predicted), "irm_on_true_proxy": net.irm(proxies)}
    for name, reconstruction in readings.items():
        anomaly_map = net.error_map(images, reconstruction)
        scores[f"{name}_image"] = binary_auroc(net.image_score(anomaly_map), labels).item()
        pixel(f"{name}_pixel", anomaly_map)
    if net.pem is not None:
        pixel("pem_error_pixel", (predicted - proxies).abs().mean(1))
    kernel, top = net.smoothing_kernel, net.score_topk
    for sigma in SIGMAS:
        net.smoothing_kernel = gaussian_kernel(sigma).to(images.device)
        anomaly_map = net.error_map(images, readings["full"])
        pixel(f"sigma{sigma:g}_pixel", anomaly_map)
        for fraction in TOP_FRACTIONS:
            net.score_topk = fraction
            scores[f"sigma{sigma:g}_top{fraction:g}_image"] = binary_auroc(net.image_score(anomaly_map), labels).item()
        blur = gaussian_kernel(sigma).to(images.device)
        coarse = gaussian_blur(images - readings["full"], blur).abs().mean(1, keepdim=True)
        pixel(f"preblur{sigma:g}_pixel", coarse)
        for fraction in (0.01, 1.0):
            net.score_topk = fraction
            scores[f"preblur{sigma:g}_top{fraction:g}_image"] = binary_auroc(net.image_score(coarse), labels).item()
    net.smoothing_kernel, net.score_topk = kernel, top
    net.train()
    return scores


def main() -> None:
    args = parse_args()
    if args.table:
        print(markdown_table(args.table))
        return
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    model = ProxyAno(**overrides)
    model.model.to(device)
    loaders = {"train_batch_size": args.batch_size, "eval_batch_size": 64, "seed": args.seed}
    if args.split_csv:
        data = SplitCSV(root=args.root, split_csv=args.split_csv, val_split_mode="same_as_test", **loaders)
    else:
        data = BrainMRIDemo(root=args.root, **loaders)
    data.prepare_data()
    data.setup()
    train_images, _, _ = load_split(model, data.train_dataloader(), device)
    test_images, test_labels, test_masks = load_split(model, data.test_dataloader(), device)
    optimizer = model.configure_optimizers()
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(train_images.shape[0], device=device)
        totals = train_epoch(model, optimizer, train_images[order], args.batch_size)
        if epoch % args.every == 0 or epoch == args.epochs:
            scores = evaluate(model, test_images, test_labels, test_masks)
            line = {"label": args.label, "epoch": epoch, "seconds": round(time.perf_counter() - started, 1)}
            line |= {f"loss_{k}": round(v, 4) for k, v in totals.items()}
            line |= {k: round(v, 3) for k, v in scores.items()}
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
