"""Read 16-bit (and float) images at full depth, for datasets whose values anomalib's 8-bit reader clips.

anomalib (2.7) reads every image with ``PIL.Image.open(path).convert("RGB")``: a 16-bit PNG or TIFF is
clipped to 0-255 (a 0-4000 ramp saturates over 94 % of its pixels) and a float TIFF in [0, 1] turns black.
:func:`read_full_depth` reads the file with OpenCV as stored and maps it to [0, 1] per image (``minmax``,
``percentile``) or with a fixed window in raw units (``window``). :class:`FullDepthDataset` makes an
anomalib dataset read its images that way; ``CheckedFolder`` and ``SplitCSV`` install it with their
``intensity`` option.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.tv_tensors import Image, Mask

from proxyano_plugin.image_io import decode_image

INTENSITY_MODES = ("minmax", "percentile", "window")
DEFAULT_PERCENTILES = (0.5, 99.5)


def check_intensity(
    intensity: str | None, window: Sequence[float] | None = None, option: str = "intensity"
) -> tuple[float, float] | None:
    """Validate an ``intensity`` mode and its window; return the window as a ``(low, high)`` tuple (or None).

    Raises ``ValueError`` naming the valid modes, or what is wrong with the window.
    """
    if intensity is None:
        if window is not None:
            msg = f"{option}_window is set but {option} is not: set {option}='window' to use it"
            raise ValueError(msg)
        return None
    if intensity not in INTENSITY_MODES:
        msg = f"{option}={intensity!r} is not a valid mode: use one of {', '.join(INTENSITY_MODES)} (or None for 8-bit)"
        raise ValueError(msg)
    if intensity != "window":
        if window is not None:
            msg = f"{option}_window is only used with {option}='window' (got {option}={intensity!r})"
            raise ValueError(msg)
        return None
    if window is None or len(window) != 2:
        msg = f"{option}='window' needs {option}_window=[low, high] in the images' raw units, got {window!r}"
        raise ValueError(msg)
    low, high = (float(value) for value in window)
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        msg = f"{option}_window={list(window)!r} must be two finite values with low < high"
        raise ValueError(msg)
    return low, high


def check_split_modes(intensity: str | None, *modes: object) -> None:
    """Refuse synthetic test or validation splits with ``intensity``: anomalib makes them from 8-bit reads."""
    if intensity is not None and any(getattr(mode, "value", mode) == "synthetic" for mode in modes):
        msg = (
            f"intensity={intensity!r} cannot be combined with a synthetic test or validation split: anomalib "
            "generates those images from 8-bit reads; use from_test, from_train, same_as_test or from_dir"
        )
        raise ValueError(msg)


def read_full_depth(
    path: str | Path,
    mode: str,
    window: Sequence[float] | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> Image:
    """Read an image as stored (8/16-bit PNG, TIFF; uint8, uint16, int16, float32) and map it to [0, 1].

    Args:
        path: the image file.
        mode: ``"minmax"`` (the image's minimum and maximum map to 0 and 1), ``"percentile"`` (its
            ``percentiles`` map to 0 and 1, values beyond are clipped) or ``"window"`` (``window``'s low
            and high, in the file's raw units, map to 0 and 1, values beyond are clipped).
        window: ``(low, high)``, for ``mode="window"`` only.
        percentiles: ``(low, high)`` percentiles in [0, 100], for ``mode="percentile"``.

    Returns:
        A float32 ``torchvision.tv_tensors.Image`` of shape ``[3, H, W]`` in [0, 1], as anomalib's
        ``read_image(path, as_tensor=True)`` returns: grayscale replicated to 3 channels, colour as RGB
        (alpha dropped). A constant image (``minmax``/``percentile``) reads as zeros.

    Raises:
        ValueError: naming the file, if it cannot be decoded or holds NaN or infinite values; or for
            an invalid ``mode``, ``window`` or ``percentiles``.
    """
    window = check_intensity(mode, window)
    array = _read(Path(path))
    if window is not None:
        low, high = window
    elif mode == "minmax":
        low, high = float(array.min()), float(array.max())
    else:
        if not (len(percentiles) == 2 and 0 <= percentiles[0] < percentiles[1] <= 100):
            msg = f"percentiles {tuple(percentiles)!r} must be (low, high) with 0 <= low < high <= 100"
            raise ValueError(msg)
        low, high = (float(value) for value in np.percentile(array, percentiles))
    if high > low:
        array -= np.float32(low)
        array *= np.float32(1.0 / (high - low))
        np.clip(array, 0.0, 1.0, out=array)
    else:  # a constant image (per-image modes only: a window has low < high)
        array[:] = 0.0
    image = torch.from_numpy(array)
    image = image.expand(3, -1, -1) if image.ndim == 2 else image.permute(2, 0, 1)
    return Image(image.contiguous())


def _read(path: Path) -> np.ndarray:
    """Decode ``path`` as stored; return float32 ``[H, W]`` (grayscale) or ``[H, W, 3]`` (RGB)."""
    array = decode_image(path).astype(np.float32)
    if not np.isfinite(array).all():
        bad = int(array.size - np.isfinite(array).sum())
        msg = f"image {path} holds {bad} NaN or infinite value(s): replace them before training"
        raise ValueError(msg)
    return array


class FullDepthDataset:
    """Mixin for an anomalib dataset: each image is read by :func:`read_full_depth` instead of at 8 bits.

    ``__getitem__`` is anomalib's (masks, labels, paths), run without augmentations; the image is then
    replaced by the full-depth read and the augmentations (the user's, plus the model's resize that
    anomalib appends to them) are applied to it, jointly with the mask. Combine it with the dataset
    class first in the bases, e.g. ``class FullDepthFolderDataset(FullDepthDataset, FolderDataset)``,
    and make one from an existing dataset with :meth:`adopt`.
    """

    intensity: str
    intensity_window: tuple[float, float] | None
    augmentations: Any

    @classmethod
    def adopt(cls, dataset: Any, intensity: str, window: Sequence[float] | None = None) -> Any:
        """Return ``dataset`` (an instance of this class's anomalib base) as one that reads at full depth.

        The new dataset shares ``dataset``'s attributes (sample table, augmentations, name, ...).
        """
        base = cls.__bases__[-1]
        if type(dataset) not in (base, cls):
            msg = f"{cls.__name__} reads {base.__name__}s, not {type(dataset).__name__}"
            raise TypeError(msg)
        adopted = cls.__new__(cls)
        adopted.__dict__.update(vars(dataset))
        adopted.intensity = intensity
        adopted.intensity_window = check_intensity(intensity, window)
        return adopted

    def __getitem__(self, index: int) -> Any:
        augmentations, self.augmentations = self.augmentations, None
        try:
            item = super().__getitem__(index)  # type: ignore[misc]
        finally:
            self.augmentations = augmentations
        image = read_full_depth(item.image_path, self.intensity, self.intensity_window)
        if not augmentations:
            return item.update(image=image)
        mask = item.gt_mask if item.gt_mask is not None else Mask(torch.zeros(image.shape[-2:], dtype=torch.uint8))
        image, mask = augmentations(image, mask)
        return item.update(image=image, gt_mask=mask if item.gt_mask is not None else None)
