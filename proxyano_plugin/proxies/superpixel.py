"""The superpixel mean image (SI), ProxyAno's default proxy: each pixel set to its superpixel's mean colour.

SLIC superpixels follow strong edges (the outline of the brain, ventricles, lesions) while their mean
erases the texture inside them: the proxy keeps coarse anatomy and drops detail, which is what makes the
PEM -> IRM bridge work. Two backends give the same output by the measures in ``benchmarks/proxy_speed.py``:
``"torch"`` (batched, vectorised, default; see :mod:`.slic`) and ``"skimage"`` (scikit-image's ``slic``,
the reference, one image per thread).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Literal

import numpy as np
import torch

from .base import Proxy, check_images, map_images, positive
from .slic import enforce_connectivity, slic_grid, slic_labels

__all__ = ["SuperpixelProxy", "superpixel_mean"]

# scikit-image drops connected parts below this fraction of the expected superpixel size; so do we.
_MIN_SIZE_FACTOR = 0.5
# CIELAB spans about 0-100: divided by this, one compactness suits grayscale, RGB and Lab alike.
_LAB_SCALE = 100.0


def superpixel_mean(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each pixel of ``images`` ``[B, C, H, W]`` replaced by the mean over its label in ``labels`` ``[B, H, W]``.

    Labels are non-negative integers per image (gaps allowed). One ``index_add`` over the whole batch.
    """
    batch, channels = images.shape[:2]
    labels = labels.to(images.device, torch.long)
    bins = int(labels.max()) + 1
    index = (labels + bins * torch.arange(batch, device=images.device).view(batch, 1, 1)).reshape(-1)
    # Sums in at least float32 (float16 would lose precision); float64 stays float64.
    values = images.detach().to(torch.promote_types(images.dtype, torch.float32))
    values = values.permute(0, 2, 3, 1).reshape(-1, channels)
    sums = values.new_zeros(batch * bins, channels).index_add_(0, index, values)
    counts = torch.bincount(index, minlength=batch * bins).clamp_min(1).unsqueeze(1)
    means = (sums / counts).to(images.dtype)
    return means[index].view(batch, *labels.shape[1:], channels).permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class SuperpixelProxy(Proxy):
    """SLIC superpixel mean image.

    Colour distances are measured on a [0, 1] scale whatever the input: each image is min-max rescaled
    (as scikit-image does), CIELAB is divided by 100, and RGB distances are root-mean-square over the
    channels (so a grayscale image replicated to 3 channels gives the grayscale result in "rgb" mode).
    One ``compactness`` therefore suits grayscale and colour images.

    Args:
        n_segments: Approximate number of superpixels (a grid of about this many centres); a count, so
            the proxy is equally coarse at any resolution. 150 gives ~5 px superpixels at 64 px and
            ~10 px at 128 px on brain MRI: ventricles, the brain and skull outlines and lesion-sized
            blobs survive, cortical texture and noise are averaged away.
        compactness: Weight of spatial against colour distance (scikit-image's meaning, on the [0, 1]
            colour scale). 0.2 keeps thin high-contrast structures such as the skull rim at 64 px, which
            0.1 lets fragment and merge away; much higher gives a blocky grid that ignores edges.
        colour: For RGB inputs: "lab" (CIELAB, as scikit-image; perceptual) or "rgb".
        backend: "torch" (batched; fast) or "skimage" (the reference, scikit-image's ``slic``).
        iterations: k-means iterations (scikit-image's ``max_num_iter``).
    """

    name: ClassVar[str] = "superpixel"
    n_segments: int = 150
    compactness: float = 0.2
    colour: Literal["lab", "rgb"] = "lab"
    backend: Literal["torch", "skimage"] = "torch"
    iterations: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_segments", positive("n_segments", self.n_segments, integer=True))
        object.__setattr__(self, "compactness", positive("compactness", self.compactness))
        object.__setattr__(self, "iterations", positive("iterations", self.iterations, integer=True))
        choices = {"colour": ("lab", "rgb"), "backend": ("torch", "skimage")}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                msg = f"{field} must be one of {', '.join(map(repr, allowed))}, got {getattr(self, field)!r}"
                raise ValueError(msg)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Superpixel mean image of every image, same shape, dtype and device."""
        return superpixel_mean(images, self.labels(images))

    def labels(self, images: torch.Tensor) -> torch.Tensor:
        """Superpixel labels ``[B, H, W]`` (int64, numbered from 0 per image, connected) on the input's device."""
        check_images(images, self.name)
        if self.backend == "skimage":
            return self._skimage_labels(images)
        features = self._features(images.detach().to(torch.float32))
        labels = slic_labels(features, self.n_segments, self.compactness, self.iterations)
        height, width = images.shape[-2:]
        grid = slic_grid(height, width, self.n_segments)
        return enforce_connectivity(labels, int(_MIN_SIZE_FACTOR * height * width / (grid.rows * grid.cols)))

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """What SLIC clusters: the per-image rescaled colours on the common [0, 1] distance scale."""
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        span = images.amax(dim=(1, 2, 3), keepdim=True) - low
        images = (images - low) / torch.where(span > 0, span, 1)
        if images.shape[1] == 1:
            return images
        if self.colour == "lab":
            from kornia.color import rgb_to_lab  # 2 s to import: only RGB images in Lab pay it

            return rgb_to_lab(images) / _LAB_SCALE
        return images / math.sqrt(images.shape[1])

    def _skimage_labels(self, images: torch.Tensor) -> torch.Tensor:
        """scikit-image's ``slic`` per image, over threads (it releases the GIL)."""
        arrays = images.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).numpy()
        gray = arrays.shape[-1] == 1
        scale = 1.0 if gray else (_LAB_SCALE if self.colour == "lab" else math.sqrt(arrays.shape[-1]))
        run = partial(
            _skimage_slic,
            n_segments=self.n_segments,
            compactness=self.compactness * scale,
            max_num_iter=self.iterations,
            channel_axis=None if gray else -1,
            convert2lab=not gray and self.colour == "lab",
            start_label=0,
        )
        inputs = [array[..., 0] if gray else array for array in arrays]
        labels = np.stack(map_images(run, inputs))
        return torch.from_numpy(labels.astype(np.int64)).to(images.device)


def _skimage_slic(image: np.ndarray, **kwargs: object) -> np.ndarray:
    from skimage.segmentation import slic  # heavy import, needed by this backend only

    return slic(image, **kwargs)
