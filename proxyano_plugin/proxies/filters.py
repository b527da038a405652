"""Simple proxies: Gaussian blur, edge maps (OpenCV), and the identity (the self-reconstruction control)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import cv2
import numpy as np

from .base import PerImageProxy, Proxy, check_images, positive

if TYPE_CHECKING:
    import torch

__all__ = ["BlurProxy", "EdgesProxy", "IdentityProxy"]

# Sobel (3x3) response of a full-contrast step edge (0 -> 1): edge maps are scaled so that it reads 1.
_STEP_RESPONSE = 4.0


@dataclass(frozen=True)
class BlurProxy(PerImageProxy):
    """Gaussian blur (``cv2.GaussianBlur``, reflect-101 borders), per channel.

    Args:
        sigma: Standard deviation in pixels. The default 2 wipes out texture finer than ~5 px, about the
            superpixel size of the default superpixel proxy at 64 px; scale it with the image size.
    """

    name: ClassVar[str] = "blur"
    sigma: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", positive("sigma", self.sigma))

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Blurred ``[H, W, C]`` image."""
        return cv2.GaussianBlur(image, (0, 0), self.sigma).reshape(image.shape)


@dataclass(frozen=True)
class EdgesProxy(PerImageProxy):
    """Edge map in [0, 1] per channel: Sobel gradient magnitude, Canny edges, or their maximum ("both").

    The Sobel magnitude is divided by that of a full-contrast step edge (then clipped), so 1 means a 0 -> 1
    step: a fixed scale keeps the contrast of edges comparable across images, unlike per-image max-scaling.

    Args:
        method: "sobel", "canny" or "both".
        low: Canny's lower hysteresis threshold, as a fraction of a full-contrast step's gradient.
        high: Canny's upper threshold, same scale (OpenCV's usual 50/150 on 8-bit images is about 0.05/0.15).
    """

    name: ClassVar[str] = "edges"
    method: Literal["sobel", "canny", "both"] = "sobel"
    low: float = 0.05
    high: float = 0.15

    def __post_init__(self) -> None:
        if self.method not in ("sobel", "canny", "both"):
            msg = f"method must be 'sobel', 'canny' or 'both', got {self.method!r}"
            raise ValueError(msg)
        object.__setattr__(self, "low", positive("low", self.low))
        object.__setattr__(self, "high", positive("high", self.high))
        if self.low > self.high:
            msg = f"low ({self.low}) must not exceed high ({self.high})"
            raise ValueError(msg)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Edge map of a ``[H, W, C]`` image, same shape."""
        return np.stack([self._edges(image[..., channel]) for channel in range(image.shape[-1])], axis=-1)

    def _edges(self, channel: np.ndarray) -> np.ndarray:
        if self.method == "sobel":
            return self._sobel(channel)
        if self.method == "canny":
            return self._canny(channel)
        return np.maximum(self._sobel(channel), self._canny(channel))

    @staticmethod
    def _sobel(channel: np.ndarray) -> np.ndarray:
        gx = cv2.Sobel(channel, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(channel, cv2.CV_32F, 0, 1, ksize=3)
        # Not cv2.magnitude: in OpenCV 5.0.0 it returns varying results for the same input.
        return np.clip(np.sqrt(gx * gx + gy * gy) / _STEP_RESPONSE, 0.0, 1.0)

    def _canny(self, channel: np.ndarray) -> np.ndarray:
        # Canny works on 8-bit images, whose full-contrast step has a gradient of 255 * _STEP_RESPONSE.
        scale = 255 * _STEP_RESPONSE
        image_8bit = np.clip(np.rint(channel * 255), 0, 255).astype(np.uint8)
        edges = cv2.Canny(image_8bit, self.low * scale, self.high * scale, L2gradient=True)
        return (edges > 0).astype(np.float32)


@dataclass(frozen=True)
class IdentityProxy(Proxy):
    """The image itself (a copy): turns ProxyAno into plain self-reconstruction, the ablation control."""

    name: ClassVar[str] = "identity"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """A copy of ``images``."""
        check_images(images, self.name)
        return images.detach().clone()
