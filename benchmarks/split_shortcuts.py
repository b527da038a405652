"""How far does a trivial statistic of each test image get on an image-level split, with no training at all?

If one number per image (mean intensity, contrast, fine-texture energy, brain area) separates the test
normals from the abnormal images, the split has a shortcut: a detector can score well by tracking it, and a
detector whose score tracks it the other way round lands below chance. Reconstruction errors grow with
fine texture, so a split whose abnormal images are *smoother* than its normals ranks them backwards.

Each statistic is scored as an anomaly score with AUROC in %: 50 = no signal, far above 50 = higher in
abnormal images, far below 50 = lower in abnormal images (then ``100 - AUROC`` is the AUROC of its
negation). Images go through the same loading as the benchmarks (SplitCSV, grayscale, antialiased resize
to ``--size``). Where the split has pixel masks, two pixel priors are scored the same way, pooled over every
test pixel as anomalib's pixel AUROC is: closeness to the image centre and the pixel's own intensity; a
lesion sampler that favours the middle of the head shows up there. Example (the table in
``benchmarks/results/shortcuts-brain-tumor/``)::

    python benchmarks/split_shortcuts.py --root ../shared/data/brain_tumor_mri \\
        --split-csv medianomaly dedup_seed0 --output benchmarks/results/shortcuts-brain-tumor/README.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torchmetrics.functional.classification import binary_auroc

from proxyano_plugin.data import SplitCSV
from proxyano_plugin.models.image_inputs import resize_pre_processor, to_model_channels
from proxyano_plugin.models.proxyano.torch_model import gaussian_blur, gaussian_kernel

FOREGROUND_LEVEL = 0.1  # grey level (of 1) above which a pixel counts as head rather than background


def foreground_fraction(images: torch.Tensor) -> torch.Tensor:
    """Share of pixels brighter than the background: how much of the frame the head fills."""
    return (images > FOREGROUND_LEVEL).flatten(1).float().mean(1)


def fine_texture(images: torch.Tensor) -> torch.Tensor:
    """Mean |x - G_1 * x|: what a 1-pixel Gaussian removes, i.e. the detail a smooth reconstruction misses."""
    return (images - gaussian_blur(images, gaussian_kernel(1.0))).abs().flatten(1).mean(1)


STATISTICS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean intensity": lambda images: images.flatten(1).mean(1),
    "intensity std (contrast)": lambda images: images.flatten(1).std(1),
    "fine texture, mean abs(x - G1*x)": fine_texture,
    f"foreground fraction (x > {FOREGROUND_LEVEL})": foreground_fraction,
}


def centre_closeness(images: torch.Tensor) -> torch.Tensor:
    """Minus each pixel's distance to the image centre: a score that only knows where a pixel is."""
    size = images.shape[-1]
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    return -torch.hypot(offsets[:, None], offsets[None, :]).expand_as(images[:, 0])


PIXEL_PRIORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "pixel: closeness to the image centre": centre_closeness,
    "pixel: intensity": lambda images: images[:, 0],
}


def load_test_images(root: str, split_csv: str, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Grayscale test images ``[N, 1, size, size]`` in [0, 1], resized as the models' pre-processor does, their
    labels (1 = abnormal), and their masks ``[N, size, size]`` (nearest resize) if the split has masks."""
    data = SplitCSV(root=root, split_csv=split_csv, val_split_mode="same_as_test", eval_batch_size=64, num_workers=0)
    data.setup()
    resize = resize_pre_processor((size, size)).transform
    images, labels, masks = [], [], []
    for batch in data.test_dataloader():
        images.append(to_model_channels(resize(batch.image), 1, "split_shortcuts"))
        labels.append(batch.gt_label.int())
        if batch.gt_mask is not None:
            masks.append(F.interpolate(batch.gt_mask[:, None].float(), size=(size, size), mode="nearest")[:, 0])
    has_masks = data.test_data.samples.mask_path.fillna("").astype(bool).any()
    return torch.cat(images), torch.cat(labels), torch.cat(masks).int() if has_masks else None


def table(root: str, splits: list[str], size: int) -> str:
    """A Markdown table: one row per statistic, one AUROC column per split."""
    columns = {}
    for split in splits:
        images, labels, masks = load_test_images(root, split, size)
        counts = f"{int((labels == 0).sum())} normal / {int(labels.sum())} abnormal"
        column = {name: binary_auroc(statistic(images), labels).item() for name, statistic in STATISTICS.items()}
        if masks is not None:
            column |= {
                name: binary_auroc(prior(images).flatten(), masks.flatten()).item()
                for name, prior in PIXEL_PRIORS.items()
            }
        columns[f"{split} ({counts})"] = column
    rows = [*STATISTICS, *(name for name in PIXEL_PRIORS if any(name in column for column in columns.values()))]
    lines = ["| statistic | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [
        f"| {name} | "
        + " | ".join(f"{100 * col[name]:.1f}" if name in col else "no masks" for col in columns.values())
        + " |"
        for name in rows
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="the split-CSV dataset's folder")
    parser.add_argument("--split-csv", nargs="+", required=True, help="one or more splits, e.g. medianomaly")
    parser.add_argument("--size", type=int, default=64, help="side the images are resized to (default 64)")
    parser.add_argument("--output", type=Path, help="also write the table, with the command, to this file")
    args = parser.parse_args()
    result = table(args.root, args.split_csv, args.size)
    print(result)
    if args.output:
        command = shlex.join(["python", "benchmarks/split_shortcuts.py", *sys.argv[1:]])
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(
            f"# Image-statistic shortcuts, {args.size} px test images\n\nWritten by\n\n    {command}\n\n"
            "AUROC (%) of each statistic used as an anomaly score: 50 = no signal, below 50 = lower in the\n"
            "abnormal images (100 - AUROC is then its negation's AUROC). No training involved. `pixel:` rows\n"
            "score every test pixel against the masks (splits with masks only).\n\n"
            f"{result}\n"
        )


if __name__ == "__main__":
    main()
