"""A label-free validation set: held-out normal training images, half of them with synthetic lesions.

Reconstruction models on brain MRI peak early and then lose what they learned about anomalies, and a
one-class training set has no anomaly to choose the epoch, checkpoint or variant with. Painting the
BrainMRIDemo lesion generator's tumours into normal training images that the model never trains on gives
a validation set with image labels and exact masks, built from the training split alone: the test split
stays untouched until a choice is made.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from proxyano_plugin.data.lesions import DEFAULT_LESION_AREA, add_tumour

logger = logging.getLogger(__name__)


class LesionValidation(NamedTuple):
    """Validation images (2D floats in [0, 1]), their boolean masks and labels (1 = painted lesion)."""

    images: list[np.ndarray]
    masks: list[np.ndarray]
    labels: np.ndarray


def hold_out(groups: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the items whose group (e.g. patient) is held out; whole groups, seeded.

    Holding out whole patients keeps slices of a validation patient out of training, as the test split does.
    """
    if not 0 < fraction < 1:
        msg = f"validation fraction must be strictly between 0 and 1, got {fraction}"
        raise ValueError(msg)
    names = sorted(set(groups))
    if len(names) < 2:
        msg = f"need at least 2 groups to hold one out, got {len(names)}"
        raise ValueError(msg)
    count = min(max(1, round(fraction * len(names))), len(names) - 1)
    chosen = set(np.random.default_rng(seed).permutation(names)[:count].tolist())
    return np.array([group in chosen for group in groups])


def paint_validation(
    images: Sequence[np.ndarray],
    seed: int,
    lesion_fraction: float = 0.5,
    area_range: tuple[float, float] = DEFAULT_LESION_AREA,
    appearance: str = "t1ce",
) -> LesionValidation:
    """Paint one lesion into a seeded ``lesion_fraction`` of ``images`` (2D grayscale floats in [0, 1]).

    Slices with too little head to host a lesion (end slices) stay normal. Each image draws from its own
    random stream, so an image's lesion does not depend on the others. ``appearance`` is the lesion
    generator's (``"flair"`` for FLAIR data: hyperintense lesions; ``"t1ce"`` otherwise).
    """
    from proxyano_plugin.prepare.lesions import MIN_HEAD_FRACTION, head_maps  # scikit-image: imported on use

    painted = [np.asarray(image, dtype=np.float32).copy() for image in images]
    if any(image.ndim != 2 for image in painted):
        msg = "images must be 2D grayscale arrays"
        raise ValueError(msg)
    masks = [np.zeros(image.shape, dtype=bool) for image in painted]
    labels = np.zeros(len(painted), dtype=np.int64)
    wanted = round(lesion_fraction * len(painted))
    for index in np.random.default_rng(seed).permutation(len(painted)):
        if labels.sum() >= wanted:
            break
        wm, brain = head_maps(painted[index])
        if brain.sum() < MIN_HEAD_FRACTION * brain.size:
            continue
        rng = np.random.default_rng([seed, int(index)])
        image, lesion = add_tumour(painted[index], wm, brain, rng, area_range, appearance=appearance)
        painted[index], masks[index], labels[index] = np.clip(image, 0, 1), lesion.mask, 1
    return LesionValidation(painted, masks, labels)


def lesion_validation_dir(cache_root: Path, files: Sequence[str], **settings: object) -> Path:
    """``cache_root/<hash>``: a hash of the source files and every setting that changes the painted set."""
    digest = hashlib.sha1(json.dumps([sorted(files), settings], sort_keys=True, default=str).encode())
    return cache_root / digest.hexdigest()[:16]


def materialise_lesion_validation(
    root: Path,
    files: Sequence[str],
    target: Path,
    seed: int,
    appearance: str = "t1ce",
    area_range: tuple[float, float] = DEFAULT_LESION_AREA,
) -> pd.DataFrame:
    """Paint ``files`` (relative to ``root``) into ``target`` once; return its sample table (paths in ``target``).

    See :func:`write_lesion_validation`; the files are read only when ``target`` is not complete yet.
    """
    from proxyano_plugin.prepare.lesions import read_gray

    return write_lesion_validation(
        lambda: ([read_gray(root / file) for file in files], list(files)), target, seed, appearance, area_range
    )


def write_lesion_validation(
    load: Callable[[], tuple[Sequence[np.ndarray], Sequence[str]]],
    target: Path,
    seed: int,
    appearance: str = "t1ce",
    area_range: tuple[float, float] = DEFAULT_LESION_AREA,
) -> pd.DataFrame:
    """Paint the images ``load()`` returns (with their source names) into ``target`` once; return its table.

    See :func:`write_validation_set`: the images are read or generated only the first time.
    """

    def paint() -> tuple[LesionValidation, Sequence[str]]:
        images, sources = load()
        logger.info("Painting a label-free validation set from %d training images into %s", len(sources), target)
        return paint_validation(images, seed, 0.5, area_range, appearance), sources

    return write_validation_set(paint, target)


def write_validation_set(make: Callable[[], tuple[LesionValidation, Sequence[str]]], target: Path) -> pd.DataFrame:
    """Write the set ``make()`` returns (with its source names) into ``target`` once; return its table.

    The tree (``images/``, ``masks/``, ``samples.csv``) is written into a hidden sibling and moved into
    place only when complete, so an interrupted run leaves nothing half-written; a complete tree is reused
    without calling ``make``.
    """
    from proxyano_plugin.image_io import encode_png, write_png
    from proxyano_plugin.prepare.pipeline import staged_output

    table = target / "samples.csv"
    if table.is_file():
        return _read_samples(table)
    validation, sources = make()
    rows = []
    with staged_output(target, overwrite=True) as staging:
        (staging / "images").mkdir()
        (staging / "masks").mkdir()
        for index, (image, mask, label) in enumerate(zip(*validation, strict=True)):
            name = f"{index:05d}.png"
            write_png(staging / "images" / name, encode_png(image))
            mask_path = ""
            if label:
                mask_path = f"masks/{name}"
                write_png(staging / mask_path, mask.astype(np.uint8) * 255)
            rows.append(
                {
                    "image_path": f"images/{name}",
                    "label_index": int(label),
                    "split": "test",
                    "mask_path": mask_path,
                    "source": sources[index],
                }
            )
        pd.DataFrame(rows).to_csv(staging / "samples.csv", index=False)
    return _read_samples(table)


def _read_samples(table: Path) -> pd.DataFrame:
    # object, not pandas' str dtype: anomalib writes Path objects into the path columns.
    return pd.read_csv(table, keep_default_na=False).astype({"image_path": object, "mask_path": object})
