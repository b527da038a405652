"""Reading and writing image files, in one place: OpenCV decoding at the stored bit depth, checked PNG writes.

anomalib reads images with PIL at 8 bits; the places that need the stored values (16-bit MRI exports, float
TIFFs) or write trees of their own (the demo, ``proxyano-prepare``, label-free validation sets) use these.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = ["decode_image", "encode_png", "write_png"]


def decode_image(path: str | Path) -> np.ndarray:
    """The pixels of ``path`` as stored (uint8, uint16 or float32): ``[H, W]`` grayscale or ``[H, W, 3]`` RGB.

    Alpha is dropped and OpenCV's BGR order turned into RGB. Raises ``ValueError`` naming the file if it
    cannot be read or decoded.
    """
    try:
        # imdecode rather than imread: it reads any path (imread fails on non-ASCII paths on Windows).
        array = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except (OSError, cv2.error) as error:
        msg = f"image {path} cannot be read ({error})"
        raise ValueError(msg) from error
    if array is None or array.size == 0:
        msg = f"image {path} cannot be decoded by OpenCV: replace it or convert it to PNG or TIFF"
        raise ValueError(msg)
    if array.ndim == 3 and array.shape[2] == 1:
        return array[..., 0]
    if array.ndim == 3:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB if array.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return array


def encode_png(image: np.ndarray, fmt: str = "png8") -> np.ndarray:
    """A float image in [0, 1] as the integer pixels of an 8-bit (``png8``) or 16-bit (``png16``) PNG."""
    scale, dtype = (65535.0, np.uint16) if fmt == "png16" else (255.0, np.uint8)
    return np.rint(np.clip(image, 0.0, 1.0) * scale).astype(dtype)


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write integer pixels as a PNG, failing loudly (OpenCV only returns False)."""
    if not cv2.imwrite(str(path), image):
        msg = f"could not write {path}"
        raise OSError(msg)
