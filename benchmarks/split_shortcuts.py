"""How far does a trivial statistic of each test image get on an image-level split, with no training at all?

If one number per image (mean intensity, contrast, fine-texture energy, brain area) separates the test
normals from the abnormal images, the split has a shortcut: a detector can score well by tracking it, and a
detector whose score tracks it the other way round lands below chance. Reconstruction errors grow with
fine texture, so a split whose abnormal images are *smoother* than its normals ranks them backwards.

Each statistic is scored as an anomaly score with AUROC in %: 50 = no signal, far above 50 = higher in
abnormal images, far below 50 = lower in abnormal images (then ``100 - AUROC`` is the AUROC of its
negation). Images go through the same loading as the benchmarks (SplitCSV, grayscale, antialiased resize
to ``--size``). Example (the table in ``benchmarks/results/shortcuts-brain-tumor/``)::

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


def load_test_images(root: str, split_csv: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grayscale test images ``[N, 1, size, size]`` in [0, 1], resized as the models' pre-processor does, and
    their labels (1 = abnormal)."""
    data = SplitCSV(root=root, split_csv=split_csv, val_split_mode="same_as_test", eval_batch_size=64, num_workers=0)
    data.setup()
    resize = resize_pre_processor((size, size)).transform
    images, labels = [], []
    for batch in data.test_dataloader():
        images.append(to_model_channels(resize(batch.image), 1, "split_shortcuts"))
        labels.append(batch.gt_label.int())
    return torch.cat(images), torch.cat(labels)


def table(root: str, splits: list[str], size: int) -> str:
    """A Markdown table: one row per statistic, one AUROC column per split."""
    columns = {}
    for split in splits:
        images, labels = load_test_images(root, split, size)
        counts = f"{int((labels == 0).sum())} normal / {int(labels.sum())} abnormal"
        columns[f"{split} ({counts})"] = {
            name: 100 * binary_auroc(statistic(images), labels).item() for name, statistic in STATISTICS.items()
        }
    lines = ["| statistic | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [f"| {name} | " + " | ".join(f"{col[name]:.1f}" for col in columns.values()) + " |" for name in STATISTICS]
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
            "abnormal images (100 - AUROC is then its negation's AUROC). No training involved.\n\n"
            f"{result}\n"
        )


if __name__ == "__main__":
    main()
