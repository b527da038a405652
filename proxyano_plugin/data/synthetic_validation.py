"""A label-free validation set: held-out normal training images, half of them with synthetic lesions.

Reconstruction models on brain MRI peak early and then lose what they learned about anomalies, and a
one-class training set has no anomaly to choose the epoch, checkpoint or variant with. Painting the
BrainMRIDemo lesion generator's tumours into normal training images that the model never trains on gives
a validation set with image labels and exact masks, built from the training split alone: the test split
stays untouched until a choice is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from proxyano_plugin.data.lesions import add_tumour
from proxyano_plugin.prepare.lesions import MIN_HEAD_FRACTION, head_maps


class LesionValidation(NamedTuple):
    """Validation images ``[N, H, W]`` in [0, 1], their boolean masks and labels (1 = painted lesion)."""

    images: np.ndarray
    masks: np.ndarray
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
    images: np.ndarray,
    seed: int,
    lesion_fraction: float = 0.5,
    area_range: tuple[float, float] = (0.01, 0.08),
    appearance: str = "t1ce",
) -> LesionValidation:
    """Paint one lesion into a seeded ``lesion_fraction`` of ``images`` (``[N, H, W]`` floats in [0, 1]).

    Slices with too little head to host a lesion (end slices) stay normal. Each image draws from its own
    random stream, so an image's lesion does not depend on the others. ``appearance`` is the lesion
    generator's (``"flair"`` for FLAIR data: hyperintense lesions; ``"t1ce"`` otherwise).
    """
    if images.ndim != 3:
        msg = f"images must be [N, H, W] grayscale, got shape {images.shape}"
        raise ValueError(msg)
    painted = images.astype(np.float32, copy=True)
    masks = np.zeros(images.shape, dtype=bool)
    labels = np.zeros(len(images), dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(images))
    wanted = round(lesion_fraction * len(images))
    for index in order:
        if labels.sum() >= wanted:
            break
        wm, brain = head_maps(painted[index])
        if brain.sum() < MIN_HEAD_FRACTION * brain.size:
            continue
        painted[index], lesion = add_tumour(
            painted[index], wm, brain, np.random.default_rng([seed, int(index)]), area_range, appearance=appearance
        )
        masks[index], labels[index] = lesion.mask, 1
    return LesionValidation(np.clip(painted, 0, 1), masks, labels)
