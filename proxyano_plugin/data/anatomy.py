"""Pseudo-subjects: the ICBM152 template slices, individually deformed and "scanned".

One template alone would give a training set of near-identical images, which no anomaly detector learns
anything useful from. Each pseudo-subject is a seed that fixes a smooth anatomical deformation (affine
plus elastic) and an acquisition style (bias field, gamma, gain, blur, Rician noise), so normal images
vary the way scans of different people on different scanners do, while staying real anatomy.

numpy/scipy/OpenCV only: nothing here needs nilearn, torch or anomalib.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import cv2
import numpy as np
from scipy import ndimage

ASSET_NAME = "mni152_axial.npz"


@dataclass(frozen=True)
class Template:
    """Axial template slices (written by ``scripts/build_demo_assets.py``), as read-only float arrays."""

    t1: np.ndarray
    """T1 intensities in [0, 1], shape ``[slices, H, W]``."""
    wm: np.ndarray
    """White-matter probability in [0, 1], same shape: guides where tumours grow and oedema spreads."""
    brain: np.ndarray
    """Boolean brain mask, same shape."""
    z_mm: np.ndarray
    """MNI z coordinate of every slice."""
    pixel_mm: float
    digest: str
    """SHA-256 of the asset file, so caches built from an older asset are never reused."""

    @property
    def size(self) -> int:
        """Side of the square slices in pixels."""
        return self.t1.shape[-1]


@lru_cache(maxsize=1)
def load_template() -> Template:
    """Load the template asset shipped inside the package (cached: every subject shares it)."""
    raw = resources.files(__package__).joinpath("assets").joinpath(ASSET_NAME).read_bytes()
    with np.load(io.BytesIO(raw)) as npz:
        arrays = {
            "t1": npz["t1"].astype(np.float32) / 255.0,
            "wm": npz["wm"].astype(np.float32) / 255.0,
            "brain": npz["brain"].astype(bool),
            "z_mm": npz["z_mm"].astype(np.float32),
        }
        pixel_mm = float(npz["pixel_mm"])
    for array in arrays.values():
        array.flags.writeable = False
    return Template(**arrays, pixel_mm=pixel_mm, digest=hashlib.sha256(raw).hexdigest())


@dataclass(frozen=True)
class Subject:
    """Anatomy and acquisition of one pseudo-subject; every random choice is drawn in :meth:`random`."""

    coords: np.ndarray
    """Backward sampling grid ``[2, H, W]`` (row, column) of the deformation, in template pixels."""
    bias: np.ndarray
    """Smooth multiplicative bias field ``[H, W]``."""
    gamma: float
    gain: float
    blur: float
    """Gaussian point-spread sigma in pixels."""
    noise: float
    """Rician noise sigma, in units of the full intensity range."""
    slice_phase: float
    """Offset in [0, 1) of this subject's slice positions within the template's slice spacing."""

    @classmethod
    def random(cls, rng: np.random.Generator, size: int) -> Subject:
        """Draw a subject: affine (+-8 deg, +-8 % scale, +-3 px), elastic warp (1-2.5 px), appearance."""
        centre = (size - 1) / 2
        rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) - centre
        angle = np.deg2rad(rng.uniform(-8, 8))
        scale = rng.uniform(0.92, 1.08, size=2)
        shear = rng.uniform(-0.04, 0.04)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        inverse = np.linalg.inv(rotation @ np.array([[scale[0], shear], [0.0, scale[1]]]))
        shift = rng.uniform(-3, 3, size=2)
        coords = np.einsum("ij,jhw->ihw", inverse, np.stack([rows, cols])) + centre - shift[:, None, None]
        elastic = ndimage.gaussian_filter(rng.standard_normal((2, size, size)), sigma=(0, 10, 10))
        coords += elastic / elastic.std() * rng.uniform(1.0, 2.5)
        return cls(
            coords=coords.astype(np.float32),
            bias=_bias_field(rng, size),
            gamma=float(np.exp(rng.uniform(-0.25, 0.25))),
            gain=float(rng.uniform(0.8, 1.0)),
            blur=float(rng.uniform(0.0, 0.7)),
            noise=float(rng.uniform(0.008, 0.03)),
            slice_phase=float(rng.uniform()),
        )

    def slice_indices(self, available: int, count: int) -> np.ndarray:
        """Pick ``count`` evenly spread template slices, shifted by this subject's phase."""
        if not 0 < count <= available:
            msg = f"slices per subject must be between 1 and {available} (the template has {available} slices)"
            raise ValueError(msg)
        step = available / count
        return np.minimum((np.arange(count) + self.slice_phase) * step, available - 1).astype(int)

    def anatomy(self, template: Template, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return this subject's deformed ``(t1, wm, brain)`` for template slice ``index``."""
        stack = np.stack([template.t1[index], template.wm[index], template.brain[index]], axis=-1, dtype=np.float32)
        t1, wm, brain = np.moveaxis(remap(stack, self.coords), -1, 0)
        brain = brain >= 0.5
        return np.where(brain, t1, 0.0), np.where(brain, wm, 0.0), brain

    def acquire(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """'Scan' an image in [0, 1]: blur, gamma, bias, gain, then Rician noise; returns uint8."""
        signal = ndimage.gaussian_filter(image, self.blur) if self.blur > 0.1 else image
        signal = np.clip(signal, 0.0, None) ** self.gamma * self.bias * self.gain
        real = signal + rng.normal(0.0, self.noise, signal.shape)
        imaginary = rng.normal(0.0, self.noise, signal.shape)
        return np.clip(np.rint(np.hypot(real, imaginary) * 255.0), 0, 255).astype(np.uint8)


def remap(image: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Bilinear backward warp: ``out[r, c] = image[coords[0, r, c], coords[1, r, c]]``, zero outside.

    OpenCV's remap is about 30x faster than ``scipy.ndimage.map_coordinates`` here; up to 4 channels
    (last axis) are warped in one call.
    """
    return cv2.remap(image, coords[1], coords[0], interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def _bias_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth multiplicative field: exp of a random cubic polynomial, peak deviation 5-25 %."""
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    rows, cols = np.meshgrid(axis, axis, indexing="ij")
    terms = [rows**i * cols**j for i in range(4) for j in range(4 - i) if i + j > 0]
    field = sum(rng.standard_normal() * term for term in terms)
    field *= rng.uniform(0.05, 0.25) / np.abs(field).max()
    return np.exp(field).astype(np.float32)
