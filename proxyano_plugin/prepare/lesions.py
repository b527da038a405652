"""Synthetic lesions painted into real normal images: a test set whose two classes share one source.

Real benchmarks can be separated by where an image came from rather than by what is in it: on
``brain_tumor_mri`` the tumour slices are smoother and darker than the normal ones (mostly another
scanner), so a single texture statistic ranks them (``benchmarks/split_shortcuts.py``). Painting lesions
into held-out *normal* images of the same set removes that shortcut: the abnormal test images are normal
images plus a lesion, so the classes differ only by the lesion, and every abnormal image gets an exact mask
(pixel metrics become possible on a set that has none).

The lesions are :func:`proxyano_plugin.data.lesions.add_tumour`'s (modelled on contrast-enhanced T1
tumours, unrelated to any training-time pseudo-anomaly). Real slices come without tissue maps, so two are
estimated per image: the head as the largest region above half Otsu's threshold, closed, holes filled and
eroded so that lesions stay off the skull; and a "white matter" weight as the smoothed intensity ranked
within it, which places lesions and sets their brightness relative to the brightest tissue. On T2 or FLAIR
slices the painted contrast is not anatomically right; it is still a local, lesion-shaped change of
intensity and texture.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from tqdm import tqdm

from proxyano_plugin.data.lesions import add_tumour
from proxyano_plugin.data.split_csv import read_split_csv
from proxyano_plugin.data.synthetic_validation import NEAR_COPY, mirror_distances, thumbnail
from proxyano_plugin.data.validation import DatasetError
from proxyano_plugin.image_io import decode_image, encode_png, write_png
from proxyano_plugin.prepare.pipeline import FOLDERS, staged_output, write_manifest
from proxyano_plugin.prepare.readers import PrepareError

_IMAGE_FOLDERS = (FOLDERS["normal_dir"], FOLDERS["normal_test_dir"], FOLDERS["abnormal_dir"])
# Lesion sizes go in the manifest as pixels of a 256 x 256 frame (lgg_flair's column), whatever the image size, so
# that `proxyano-bench report` bins them into size terciles (its LESION_SIZE_COLUMN) as it does for lgg_flair.
SIZE_COLUMN = "mask_pixels_256"
SIZE_FRAME_PIXELS = 256 * 256
# 1 where a test image's source is a copy, or a mirrored copy, of a training image (NEAR_COPY): the report's
# strata then read the test set without them.
COPY_COLUMN = "training_copy"
LESION_MANIFEST_COLUMNS = (
    "file",
    "label",
    "split",
    "mask",
    "source",
    "lesion",
    "lesion_area_fraction",
    SIZE_COLUMN,
    COPY_COLUMN,
)
_EROSION = 0.04
"""Share of the image side by which the head mask is eroded before lesions are placed in it."""
_THRESHOLD_SCALE = 0.5
"""Head = smoothed intensity above this share of Otsu's threshold (measured: no dedup normal below 5 % head)."""
MIN_HEAD_FRACTION = 0.05
"""A slice whose head region is smaller than this share of the image cannot host a lesion."""


@dataclass
class LesionOptions:
    """How many lesions, how large, and the seed of every random choice."""

    lesion_fraction: float = 0.5
    """Share of the source's normal test images that get a lesion (the rest stay normal test images)."""
    lesion_area: tuple[float, float] = (0.01, 0.08)
    """Range of the lesion area as a share of the slice's (eroded) head area."""
    seed: int = 0

    def check(self) -> None:
        """Normalise list input (CLI, YAML) and reject values that cannot make a usable test set."""
        self.lesion_area = tuple(float(value) for value in self.lesion_area)
        problems = []
        if not 0 < self.lesion_fraction < 1:
            problems.append(f"--lesion-fraction must be strictly between 0 and 1, got {self.lesion_fraction}")
        if len(self.lesion_area) != 2 or not 0 < self.lesion_area[0] <= self.lesion_area[1] < 1:
            problems.append(f"--lesion-area must be LOW HIGH with 0 < LOW <= HIGH < 1, got {self.lesion_area}")
        if problems:
            raise PrepareError("; ".join(problems))


@dataclass
class LesionSummary:
    """What was written, and what was left out and why."""

    output: str
    images: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_IMAGE_FOLDERS, 0))
    lesion_kinds: dict[str, int] = field(default_factory=dict)
    dropped_source_abnormal: int = 0
    test_training_copies: int = 0
    seconds: float = 0.0

    def text(self) -> str:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.lesion_kinds.items()))
        return "\n".join(
            [
                f"wrote {self.output}",
                "  images:  " + ", ".join(f"{folder} {count}" for folder, count in self.images.items()),
                f"  lesions: {kinds or 'none'} (masks in {FOLDERS['mask_dir']})",
                f"  dropped: {self.dropped_source_abnormal} abnormal test images of the source (not used)",
                f"  copies:  {self.test_training_copies} test images painted on or copied from a (mirrored) copy of"
                " a training image (manifest column training_copy)",
                f"  time:    {self.seconds:.1f} s",
            ]
        )


def read_gray(path: Path) -> np.ndarray:
    """Read an 8- or 16-bit image as float32 in [0, 1], one channel; colour images must be gray in RGB."""
    try:
        image = decode_image(path)
    except ValueError as error:
        raise PrepareError(str(error)) from None
    if image.dtype not in (np.uint8, np.uint16):
        msg = f"{path}: {image.dtype} pixels; only 8- and 16-bit images are supported"
        raise PrepareError(msg)
    scale = float(np.iinfo(image.dtype).max)
    if image.ndim == 3:  # RGB, alpha already dropped by decode_image
        if np.ptp(image.astype(np.int32), axis=-1).max() > 0:
            msg = f"{path} is a colour image; lesions are painted on grayscale images only"
            raise PrepareError(msg)
        image = image[..., 0]
    return image.astype(np.float32) / scale


def head_maps(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Estimate ``(wm, brain)`` for :func:`add_tumour` on a real slice: a tissue-brightness weight and a head mask."""
    smooth = ndimage.gaussian_filter(image, 1.5)
    if np.ptp(smooth) == 0:
        return np.zeros_like(image), np.zeros_like(image, dtype=bool)
    # Half Otsu's threshold, then closing: on T2 slices dark tissue falls below Otsu's and the head splits.
    foreground = ndimage.binary_closing(smooth > _THRESHOLD_SCALE * threshold_otsu(smooth), iterations=3)
    labels, count = ndimage.label(foreground)
    if count == 0:
        return np.zeros_like(image), foreground
    largest = labels == 1 + int(np.argmax(ndimage.sum_labels(foreground, labels, range(1, count + 1))))
    head = ndimage.binary_fill_holes(largest)
    brain = ndimage.distance_transform_edt(head) > _EROSION * max(image.shape)
    inside = smooth[brain]
    if inside.size == 0:
        return np.zeros_like(image), brain
    low, high = np.percentile(inside, (10, 90))
    wm = np.clip((smooth - low) / max(high - low, 1e-6), 0.0, 1.0) * brain
    return wm.astype(np.float32), brain


def _flat_name(relative: str) -> str:
    """A unique PNG file name for an image path relative to the source root (sub-folders joined by ``__``)."""
    return str(Path(relative).with_suffix(".png")).replace("/", "__").replace("\\", "__")


def paint_lesions(
    root: str | Path,
    split_csv: str | Path,
    output: str | Path,
    options: LesionOptions | None = None,
    overwrite: bool = False,
) -> LesionSummary:
    """Write a Folder tree from a split's normal images, with synthetic lesions in part of its test normals.

    ``train/good`` holds the split's training images, unchanged; of its normal test images, a seeded
    ``lesion_fraction`` get a lesion (``test/abnormal`` and their masks in ``ground_truth/abnormal``) and
    the rest stay in ``test/good``. The split's own abnormal images are left out. ``manifest.csv`` is a split
    CSV of the tree (for ``SplitCSV``), with each image's source file and lesion.
    """
    options = options or LesionOptions()
    options.check()
    start = time.perf_counter()
    root = Path(root).expanduser().resolve()
    try:
        samples = read_split_csv(root, split_csv)
    except DatasetError as error:
        raise PrepareError(str(error)) from error
    train = samples.image_path[samples.split == "train"].tolist()
    test_normal = samples.image_path[(samples.split == "test") & (samples.label_index == 0)].tolist()
    if len(test_normal) < 2:
        msg = f"{split_csv}: {len(test_normal)} normal test image(s); at least 2 are needed (one stays normal)"
        raise PrepareError(msg)
    rng = np.random.default_rng(options.seed)
    n_lesions = min(max(round(options.lesion_fraction * len(test_normal)), 1), len(test_normal) - 1)
    lesioned = set(rng.permutation(len(test_normal))[:n_lesions].tolist())
    output = Path(output).expanduser().absolute()
    summary = LesionSummary(output=str(output), dropped_source_abnormal=int((samples.label_index == 1).sum()))
    rows = []
    jobs = [(file, "train", False) for file in train]
    jobs += [(file, "test", position in lesioned) for position, file in enumerate(test_normal)]
    training_images, test_sources = [], []
    with staged_output(output, overwrite) as staging:
        for folder in FOLDERS.values():
            (staging / folder).mkdir(parents=True)
        for index, (file, split, abnormal) in enumerate(tqdm(jobs, desc="Painting lesions", unit="img")):
            image = read_gray(root / file)
            (training_images if split == "train" else test_sources).append(thumbnail(image))
            name = _flat_name(file)
            row = {"file": "", "label": int(abnormal), "split": split, "mask": "", "source": file}
            row |= {"lesion": "", "lesion_area_fraction": "", SIZE_COLUMN: "", COPY_COLUMN: ""}
            if abnormal:
                wm, brain = head_maps(image)
                if brain.sum() < MIN_HEAD_FRACTION * brain.size:
                    msg = f"{root / file}: no head region large enough for a lesion (is it an empty or CT slice?)"
                    raise PrepareError(msg)
                # One stream per image: the lesion of an image does not depend on the images before it.
                image_rng = np.random.default_rng([options.seed, index])
                image, lesion = add_tumour(image, wm, brain, image_rng, area_range=options.lesion_area)
                row["mask"] = f"{FOLDERS['mask_dir']}/{name}"
                write_png(staging / row["mask"], lesion.mask.astype(np.uint8) * 255)
                row["lesion"], row["lesion_area_fraction"] = lesion.kind, f"{lesion.area_fraction:.4f}"
                row[SIZE_COLUMN] = round(float(lesion.mask.mean()) * SIZE_FRAME_PIXELS)
                summary.lesion_kinds[lesion.kind] = summary.lesion_kinds.get(lesion.kind, 0) + 1
            role = "normal_dir" if split == "train" else "abnormal_dir" if abnormal else "normal_test_dir"
            folder = FOLDERS[role]
            row["file"] = f"{folder}/{name}"
            write_png(staging / row["file"], encode_png(image))
            summary.images[folder] += 1
            rows.append(row)
        copies = mirror_distances(test_sources, training_images).min(1) < NEAR_COPY
        for row, copy in zip((row for row in rows if row["split"] == "test"), copies, strict=True):
            row[COPY_COLUMN] = int(copy)
        summary.test_training_copies = int(copies.sum())
        write_manifest(staging / "manifest.csv", LESION_MANIFEST_COLUMNS, rows)
        summary.seconds = time.perf_counter() - start
        record = {
            "command": "lesions",
            "root": str(root),
            "split_csv": str(split_csv),
            "options": asdict(options),
            "summary": asdict(summary),
        }
        (staging / "prepare.json").write_text(json.dumps(record, indent=2) + "\n")
    return summary
