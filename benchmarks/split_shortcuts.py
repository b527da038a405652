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
lesion sampler that favours the middle of the head shows up there. Where the split CSV has ``patient`` and
``slice`` columns (slices of volumes), the slice's position in its patient is scored too: its relative
position (0 = the patient's lowest slice number, 1 = the highest, over the patient's rows in every split of
the CSV, or of ``--positions-from``) and its closeness to the middle, ``-abs(position - 0.5)``; lesions that
sit mid-volume make "is this a mid-brain slice" a shortcut. ``foreground fraction`` is the head (brain) area.
With ``--output``, a ``shortcuts.csv`` (``split,statistic,level,auroc``, AUROC as a fraction as in the
harness's ``summary.csv``) is written beside the table. Examples (the tables in
``benchmarks/results/shortcuts-brain-tumor/`` and ``shortcuts-lgg/``)::

    python benchmarks/split_shortcuts.py --root ../shared/data/brain_tumor_mri \\
        --split-csv medianomaly dedup_seed0 --output benchmarks/results/shortcuts-brain-tumor/README.md
    python benchmarks/split_shortcuts.py --root ../shared/data/lgg_flair \\
        --split-csv patients_seed0 patients_seed0_midbrain --positions-from patients_seed0 \\
        --output benchmarks/results/shortcuts-lgg/README.md
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812
from torchmetrics.functional.classification import binary_auroc

from proxyano_plugin.data import SplitCSV
from proxyano_plugin.data.split_csv import read_split_csv, resolve_split_csv
from proxyano_plugin.data.synthetic_validation import NEAR_COPY, mirror_distances
from proxyano_plugin.models.base import resize_pre_processor, to_model_channels
from proxyano_plugin.models.image_errors import gaussian_blur, gaussian_kernel

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


POSITION_SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "slice position: closeness to the patient's middle, -abs(pos - 0.5)": lambda position: -(position - 0.5).abs(),
    "slice position: relative position in the patient (0 = lowest slice)": lambda position: position,
}

NEAREST_TRAINING = "nearest training image, mirrors included (RMS grey levels, 32 px)"

LEVELS = {**dict.fromkeys(STATISTICS, "image"), **dict.fromkeys(POSITION_SCORES, "image"), NEAREST_TRAINING: "image"}
LEVELS |= dict.fromkeys(PIXEL_PRIORS, "pixel")
MISSING = {**dict.fromkeys(POSITION_SCORES, "no patient/slice"), **dict.fromkeys(PIXEL_PRIORS, "no masks")}


def slice_positions(csv_path: str | Path) -> dict[Path, float] | None:
    """Each row's relative position among its patient's rows (every split): 0 = lowest ``slice``, 1 = highest.

    Keys are the rows' ``file`` paths as written in the CSV (relative to the dataset root). A patient with one
    row sits at 0.5. ``None`` if the file has no ``patient`` and ``slice`` columns (or is not a CSV).
    """
    if Path(csv_path).suffix.lower() != ".csv":
        return None
    rows = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    if not {"file", "patient", "slice"} <= set(rows.columns):
        return None
    number = pd.to_numeric(rows["slice"].str.strip())
    by_patient = number.groupby(rows["patient"].str.strip())
    count = by_patient.transform("count")
    position = ((by_patient.rank(method="average") - 1) / (count - 1).where(count > 1)).fillna(0.5)
    return dict(zip(map(Path, rows["file"].str.strip()), position.astype(float), strict=True))


def load_test_images(
    root: str, split_csv: str, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[Path]]:
    """Grayscale test images ``[N, 1, size, size]`` in [0, 1], resized as the models' pre-processor does, their
    labels (1 = abnormal), their masks ``[N, size, size]`` (nearest resize) if the split has masks, and their
    resolved file paths."""
    data = SplitCSV(root=root, split_csv=split_csv, val_split_mode="same_as_test", eval_batch_size=64, num_workers=0)
    data.setup()
    resize = resize_pre_processor((size, size)).transform
    images, labels, masks, paths = [], [], [], []
    for batch in data.test_dataloader():
        images.append(to_model_channels(resize(batch.image), 1, "split_shortcuts"))
        labels.append(batch.gt_label.int())
        paths += [Path(path).resolve() for path in batch.image_path]
        if batch.gt_mask is not None:
            masks.append(F.interpolate(batch.gt_mask[:, None].float(), size=(size, size), mode="nearest")[:, 0])
    has_masks = data.test_data.samples.mask_path.fillna("").astype(bool).any()
    return torch.cat(images), torch.cat(labels), torch.cat(masks).int() if has_masks else None, paths


def image_positions(root: str, split_csv: str, paths: list[Path], positions_from: str | None) -> torch.Tensor | None:
    """The relative slice positions of the test images at ``paths``, from the rows of ``positions_from`` (a
    split CSV of the same images whose rows cover each patient's whole volume) or else of the split itself;
    ``None`` if that CSV has no ``patient`` and ``slice`` columns."""
    source = resolve_split_csv(root, positions_from or split_csv)
    positions = slice_positions(source)
    if positions is None:
        return None
    base = Path(root).expanduser().resolve()
    positions = {(base / file).resolve(): position for file, position in positions.items()}
    missing = [path for path in paths if path not in positions]
    if missing:
        message = f"{len(missing)} test images of {split_csv} are not rows of {source} (first: {missing[0]})"
        raise ValueError(message)
    return torch.tensor([positions[path] for path in paths])


def nearest_training_distances(root: str, split_csv: str, paths: list[Path]) -> torch.Tensor:
    """Each test image's distance to its closest training image or that image's mirror
    (:func:`~proxyano_plugin.data.synthetic_validation.mirror_distances`): a one-nearest-neighbour memory of the
    training set with no features. Near zero, the test image is a copy of a training image; a split that keeps
    copies of training normals among its test normals gives every memory-based detector a head start."""
    from proxyano_plugin.prepare.lesions import read_gray

    samples = read_split_csv(root, split_csv)
    base = Path(root).expanduser().resolve()
    training = [read_gray(base / file) for file in samples.image_path[samples.split == "train"]]
    distances = mirror_distances([read_gray(path) for path in paths], training).min(1)
    return torch.from_numpy(distances)


def shortcut_scores(
    root: str, splits: list[str], size: int, positions_from: str | None = None
) -> tuple[list[dict[str, str | float]], dict[str, str]]:
    """AUROC (a fraction) of every statistic on every split, as records ``split, statistic, level, auroc``;
    and each split's test counts (``"N normal / M abnormal"``). Position scores only where there are slice
    positions, pixel priors only where the split has masks."""
    records, counts = [], {}
    for split in splits:
        images, labels, masks, paths = load_test_images(root, split, size)
        nearest = nearest_training_distances(root, split, paths)
        copies = nearest < NEAR_COPY
        counts[split] = (
            f"{int((labels == 0).sum())} normal / {int(labels.sum())} abnormal; copies of training images: "
            f"{int(copies[labels == 0].sum())} / {int(copies[labels == 1].sum())}"
        )
        column = {name: binary_auroc(statistic(images), labels).item() for name, statistic in STATISTICS.items()}
        # in [0, 1]: torchmetrics would squash larger scores through a sigmoid, into ties
        column[NEAREST_TRAINING] = binary_auroc(nearest.float() / 255, labels).item()
        positions = image_positions(root, split, paths, positions_from)
        if positions is not None:
            column |= {name: binary_auroc(score(positions), labels).item() for name, score in POSITION_SCORES.items()}
        if masks is not None:
            column |= {
                name: binary_auroc(prior(images).flatten(), masks.flatten()).item()
                for name, prior in PIXEL_PRIORS.items()
            }
        records += [
            {"split": split, "statistic": name, "level": LEVELS[name], "auroc": auroc} for name, auroc in column.items()
        ]
    return records, counts


def markdown_table(records: list[dict[str, str | float]], counts: dict[str, str]) -> str:
    """A Markdown table: one row per statistic scored on any split, one AUROC (%) column per split."""
    auroc = {(record["split"], record["statistic"]): record["auroc"] for record in records}
    scored = {record["statistic"] for record in records}
    rows = [name for name in LEVELS if name in scored]
    lines = ["| statistic | " + " | ".join(f"{split} ({count})" for split, count in counts.items()) + " |"]
    lines.append("|---|" + "---:|" * len(counts))
    lines += [
        f"| {name} | "
        + " | ".join(f"{100 * auroc[split, name]:.1f}" if (split, name) in auroc else MISSING[name] for split in counts)
        + " |"
        for name in rows
    ]
    return "\n".join(lines)


def table(root: str, splits: list[str], size: int, positions_from: str | None = None) -> str:
    """A Markdown table: one row per statistic, one AUROC column per split."""
    return markdown_table(*shortcut_scores(root, splits, size, positions_from))


def write_csv(path: Path, records: list[dict[str, str | float]]) -> None:
    """The records as ``split,statistic,level,auroc``, AUROC a fraction; ``split`` is the split CSV's stem, as
    the harness's ``summary.csv`` names it in its ``dataset`` column."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["split", "statistic", "level", "auroc"])
        writer.writeheader()
        for record in records:
            writer.writerow(record | {"split": Path(str(record["split"])).stem, "auroc": f"{record['auroc']:.6f}"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="the split-CSV dataset's folder")
    parser.add_argument("--split-csv", nargs="+", required=True, help="one or more splits, e.g. medianomaly")
    parser.add_argument("--size", type=int, default=64, help="side the images are resized to (default 64)")
    parser.add_argument(
        "--positions-from",
        help="split CSV whose rows give each patient's slices for the slice-position scores (default: each split "
        "itself); pass the full split when a split keeps only some of a patient's slices",
    )
    parser.add_argument(
        "--output", type=Path, help="also write the table, with the command, to this file, and shortcuts.csv beside it"
    )
    args = parser.parse_args()
    records, counts = shortcut_scores(args.root, args.split_csv, args.size, args.positions_from)
    result = markdown_table(records, counts)
    print(result)
    if args.output:
        command = shlex.join(["python", "benchmarks/split_shortcuts.py", *sys.argv[1:]])
        args.output.parent.mkdir(parents=True, exist_ok=True)
        positions = ""
        if any(record["statistic"] in POSITION_SCORES for record in records):
            positions = (
                "`slice position` rows use each test slice's relative position among its patient's rows\n"
                f"of {args.positions_from or 'the split CSV'} (all splits; 0 = lowest slice number, 1 = highest).\n"
            )
        args.output.write_text(
            f"# Image-statistic shortcuts, {args.size} px test images\n\nWritten by\n\n    {command}\n\n"
            "AUROC (%) of each statistic used as an anomaly score: 50 = no signal, below 50 = lower in the\n"
            "abnormal images (100 - AUROC is then its negation's AUROC). No training involved. `pixel:` rows\n"
            "score every test pixel against the masks (splits with masks only). `foreground fraction` is the\n"
            f"head (brain) area.\n{positions}The same numbers, as fractions: `shortcuts.csv`.\n\n"
            f"{result}\n"
        )
        write_csv(args.output.parent / "shortcuts.csv", records)


if __name__ == "__main__":
    main()
