"""A median-filter proxy: a minimal third-party proxy extractor for proxyano-plugin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from proxyano_plugin.proxies import PerImageProxy

__all__ = ["MedianProxy"]


@dataclass(frozen=True)
class MedianProxy(PerImageProxy):
    """Median-filtered image: removes texture and speckle finer than the window but keeps sharp edges.

    Args:
        size: Odd window side in pixels (at least 3).
    """

    name: ClassVar[str] = "median"
    size: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 3 or self.size % 2 == 0:
            msg = f"size must be an odd integer >= 3, got {self.size!r}"
            raise ValueError(msg)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Median of one ``[H, W, C]`` float32 image in [0, 1]."""
        # OpenCV filters float32 images with windows of 3 or 5 only; 8 bits allow any size.
        image_8bit = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
        filtered = cv2.medianBlur(image_8bit, self.size)
        return filtered.reshape(image.shape).astype(np.float32) / 255
