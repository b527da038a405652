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

import cv2
import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from proxyano_plugin.data.lesions import DEFAULT_LESION_AREA, add_tumour

logger = logging.getLogger(__name__)


class LesionValidation(NamedTuple):
    """Validation images (2D floats in [0, 1]), their boolean masks and labels (1 = painted lesion).

    ``origins`` gives the index of each item's source image where items and sources differ (paired sets).
    """

    images: list[np.ndarray]
    masks: list[np.ndarray]
    labels: np.ndarray
    origins: list[int] | None = None


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


NEAR_DUPLICATE_THUMBNAIL = 32
# Grey levels (of 255) under which two thumbnails are one image: on brain_tumor_mri every pair of slices closer
# than this is a copy or a mirrored copy, and the closest two different training slices differ by 3.6.
NEAR_COPY = 3.0


def thumbnail(image: np.ndarray) -> np.ndarray:
    """The 32 x 32 area-resized image that :func:`mirror_distances` compares; a thumbnail is its own thumbnail,
    so callers that hold many images can keep these instead."""
    size = NEAR_DUPLICATE_THUMBNAIL
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def _thumbnails(images: Sequence[np.ndarray], mirrored: bool = False) -> np.ndarray:
    """``[n, 32 * 32]`` thumbnails in grey levels of 255, mirrored left-right if asked."""
    thumbs = np.stack([thumbnail(image) for image in images]).astype(np.float64) * 255
    return (thumbs[:, :, ::-1] if mirrored else thumbs).reshape(len(images), -1)


def mirror_distances(images: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> np.ndarray:
    """``[len(images), len(references)]`` distances, in grey levels of 255, between 32 x 32 thumbnails.

    Root mean square over the thumbnail, the smaller of the reference as it is and mirrored left-right;
    ``images`` and ``references`` are 2D floats in [0, 1] of any size.
    """
    queries = _thumbnails(images)
    query_norms = (queries**2).sum(1)[:, None]
    squared = np.full((len(images), len(references)), np.inf)
    for mirrored in (False, True):  # from the Gram matrix: [n, m], not [n, m, pixels]
        others = _thumbnails(references, mirrored)
        squared = np.minimum(squared, query_norms + (others**2).sum(1)[None, :] - 2 * queries @ others.T)
    return np.sqrt(np.maximum(squared, 0) / queries.shape[1])


def near_duplicate_groups(
    images: Sequence[np.ndarray], max_rmse: float, groups: Sequence[str] | None = None
) -> list[str]:
    """One group name per image: images that are near-copies of each other, or of each other's mirror, share one.

    Near-copies are closer than ``max_rmse`` (:func:`mirror_distances`). Groups are closed under the relation (a
    chain of near-copies is one group) and merged with ``groups`` (e.g. patients) when given. brain_tumor_mri
    holds left-right mirrored copies of many slices: held out alone, a slice whose mirror image stays in
    training is in effect a training image, most of all for a model trained on mirrored images.
    """
    if max_rmse <= 0:
        msg = f"the near-duplicate distance must be positive (grey levels of 255), got {max_rmse}"
        raise ValueError(msg)
    close = mirror_distances(images, images) < max_rmse
    if groups is not None:
        labels = np.unique(np.asarray(groups), return_inverse=True)[1]
        close |= labels[:, None] == labels[None, :]
    _, components = connected_components(csr_matrix(close), directed=False)
    return [f"group{component}" for component in components]


def paint_validation(
    images: Sequence[np.ndarray],
    seed: int,
    lesion_fraction: float = 0.5,
    area_range: tuple[float, float] = DEFAULT_LESION_AREA,
    appearance: str = "t1ce",
    paired: bool = False,
) -> LesionValidation:
    """Paint one lesion into a seeded ``lesion_fraction`` of ``images`` (2D grayscale floats in [0, 1]).

    Slices with too little head to host a lesion (end slices) stay normal. Each image draws from its own
    random stream, so an image's lesion does not depend on the others. ``appearance`` is the lesion
    generator's (``"flair"`` for FLAIR data: hyperintense lesions; ``"t1ce"`` otherwise).

    ``paired`` (``lesion_fraction`` unused) keeps every image that can host a lesion twice, clean and painted,
    and drops the rest: both classes then hold the same slices, so nothing but the lesion separates them. An
    unpaired set of ~100 images also differs between its classes by which slices fell in each (measured on
    brain-lesions-large: head area alone scores 58-60 AUROC on its validation set), and epoch and score
    selection then rewards those slice statistics.
    """
    painted = [np.asarray(image, dtype=np.float32).copy() for image in images]
    if any(image.ndim != 2 for image in painted):
        msg = "images must be 2D grayscale arrays"
        raise ValueError(msg)
    if paired:
        return _paint_pairs(painted, seed, area_range, appearance)
    masks = [np.zeros(image.shape, dtype=bool) for image in painted]
    labels = np.zeros(len(painted), dtype=np.int64)
    wanted = round(lesion_fraction * len(painted))
    for index in np.random.default_rng(seed).permutation(len(painted)):
        if labels.sum() >= wanted:
            break
        lesioned = _paint_one(painted[index], [seed, int(index)], area_range, appearance)
        if lesioned is not None:
            painted[index], masks[index] = lesioned
            labels[index] = 1
    return LesionValidation(painted, masks, labels)


def _paint_one(
    image: np.ndarray, stream: list[int], area_range: tuple[float, float], appearance: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """``image`` with one lesion (from its own random ``stream``) and the lesion's mask; ``None`` if too little head."""
    from proxyano_plugin.prepare.lesions import MIN_HEAD_FRACTION, head_maps  # scikit-image: imported on use

    wm, brain = head_maps(image)
    if brain.sum() < MIN_HEAD_FRACTION * brain.size:
        return None
    lesioned, lesion = add_tumour(image, wm, brain, np.random.default_rng(stream), area_range, appearance=appearance)
    return np.clip(lesioned, 0, 1), lesion.mask


def _paint_pairs(
    images: list[np.ndarray], seed: int, area_range: tuple[float, float], appearance: str
) -> LesionValidation:
    """Each image that can host a lesion, clean (label 0) then painted (label 1); see :func:`paint_validation`."""
    pair_images, masks, origins = [], [], []
    for index, image in enumerate(images):
        lesioned = _paint_one(image, [seed, index], area_range, appearance)
        if lesioned is not None:
            pair_images += [image, lesioned[0]]
            masks += [np.zeros(image.shape, dtype=bool), lesioned[1]]
            origins += [index, index]
    if not origins:
        msg = "no image has enough head to host a lesion: a paired validation set would be empty"
        raise ValueError(msg)
    return LesionValidation(pair_images, masks, np.tile(np.array([0, 1], dtype=np.int64), len(origins) // 2), origins)


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
    paired: bool = False,
) -> pd.DataFrame:
    """Paint ``files`` (relative to ``root``) into ``target`` once; return its sample table (paths in ``target``).

    See :func:`write_lesion_validation`; the files are read only when ``target`` is not complete yet.
    """
    from proxyano_plugin.prepare.lesions import read_gray

    return write_lesion_validation(
        lambda: ([read_gray(root / file) for file in files], list(files)), target, seed, appearance, area_range, paired
    )


def write_lesion_validation(
    load: Callable[[], tuple[Sequence[np.ndarray], Sequence[str]]],
    target: Path,
    seed: int,
    appearance: str = "t1ce",
    area_range: tuple[float, float] = DEFAULT_LESION_AREA,
    paired: bool = False,
) -> pd.DataFrame:
    """Paint the images ``load()`` returns (with their source names) into ``target`` once; return its table.

    See :func:`write_validation_set`: the images are read or generated only the first time.
    """

    def paint() -> tuple[LesionValidation, Sequence[str]]:
        images, sources = load()
        logger.info("Painting a label-free validation set from %d training images into %s", len(sources), target)
        validation = paint_validation(images, seed, 0.5, area_range, appearance, paired)
        if validation.origins is not None:
            sources = [sources[index] for index in validation.origins]
        return validation, sources

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
        for index, (image, mask, label) in enumerate(
            zip(validation.images, validation.masks, validation.labels, strict=True)
        ):
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
