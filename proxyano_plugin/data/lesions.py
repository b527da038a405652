"""Synthetic tumour-like lesions with exact masks, for evaluating detectors on the demo data.

Deliberately unrelated to any training-time pseudo-anomaly (ProxyAno pastes image patches; this shares no
code or idea with it), so that the evaluation is not circular. A lesion is modelled on how brain tumours
look on contrast-enhanced T1 images:

- an irregular blob (random low-order lobes plus smooth fine-scale roughness) centred preferably in
  white matter, sized to a target share of the slice's brain area;
- one of three kinds: ``ring`` (hyperintense enhancing rim around a dark necrotic core, like a
  glioblastoma), ``solid`` (heterogeneously enhancing mass) or ``diffuse`` (non-enhancing, hypointense,
  like a low-grade glioma);
- surrounding vasogenic oedema (hypointense on T1) for ``ring`` and ``solid``, spreading further along
  white matter than into cortex;
- optional mass effect: surrounding tissue is pushed outward (not part of the mask, as in clinical
  annotations).

The mask is the whole lesion (tumour plus oedema), clipped to the brain: exactly the pixels whose
intensities the painting changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from proxyano_plugin.data.anatomy import remap

LESION_KINDS = ("ring", "solid", "diffuse")
APPEARANCES = ("t1ce", "flair")
# Lesion area as a share of the head: the BrainMRIDemo's sizes, and the painted validation sets' unless told.
DEFAULT_LESION_AREA = (0.01, 0.08)
_KIND_PROBABILITIES = (0.45, 0.35, 0.2)
_MAX_TRIES = 30


@dataclass(frozen=True)
class Lesion:
    """Where a lesion was painted and what it is."""

    mask: np.ndarray
    """Boolean mask of the whole lesion (tumour plus oedema)."""
    kind: str
    area_fraction: float
    """Mask area divided by the brain area of the slice before the lesion."""


def add_tumour(
    image: np.ndarray,
    wm: np.ndarray,
    brain: np.ndarray,
    rng: np.random.Generator,
    area_range: tuple[float, float] = DEFAULT_LESION_AREA,
    mass_effect: tuple[float, float] = (0.0, 0.3),
    appearance: str = "t1ce",
) -> tuple[np.ndarray, Lesion]:
    """Paint one tumour-like lesion into a float image in [0, 1].

    Args:
        image: slice intensities in [0, 1] (not modified).
        wm: white-matter probability of the slice, same shape.
        brain: boolean brain mask of the slice.
        rng: source of every random choice.
        area_range: bounds of the lesion area as a share of the brain area; shapes are redrawn until the
            clipped mask falls inside (the closest one is kept after a few tries).
        mass_effect: range of the outward push, as a share of the tumour radius; ``(0, 0)`` leaves every
            pixel outside the mask untouched.
        appearance: ``"t1ce"`` (contrast-enhanced T1: dark oedema, enhancing tumour) or ``"flair"``
            (FLAIR: tumour and oedema hyperintense, the core less so), same shapes and placement.

    Returns:
        The new image and the :class:`Lesion`.
    """
    if appearance not in APPEARANCES:
        msg = f"appearance must be one of {', '.join(APPEARANCES)}, got {appearance!r}"
        raise ValueError(msg)
    lo, hi = area_range
    if not 0 < lo <= hi < 1:
        msg = f"area_range must satisfy 0 < low <= high < 1, got {area_range}"
        raise ValueError(msg)
    brain_area = int(brain.sum())
    if brain_area == 0:
        msg = "the slice has no brain pixel to place a lesion in"
        raise ValueError(msg)
    kind = str(rng.choice(LESION_KINDS, p=_KIND_PROBABILITIES))
    depth = ndimage.distance_transform_edt(brain)
    smooth_wm = ndimage.gaussian_filter(wm, 1.5)
    best: tuple[float, tuple] | None = None
    for _ in range(_MAX_TRIES):
        candidate = _draw_shape(smooth_wm, brain, depth, rng, kind, rng.uniform(lo, hi) * brain_area)
        fraction = candidate[-1].sum() / brain_area
        miss = max(lo - fraction, fraction - hi, 0.0)
        if best is None or miss < best[0]:
            best = (miss, candidate)
        if miss == 0.0:
            break
    centre, radius, tumour_rho, oedema_rho, whole = best[1]

    strength = rng.uniform(*mass_effect) if kind != "diffuse" else 0.0
    if strength > 0:
        pushed = _push_outward(np.stack([image, wm, brain], axis=-1, dtype=np.float32), centre, radius, strength)
        image, wm, brain = np.moveaxis(pushed, -1, 0)
        brain = brain >= 0.5
        whole &= brain
    paint = _paint if appearance == "t1ce" else _paint_flair
    painted = paint(image, wm, rng, kind, tumour_rho, oedema_rho, whole)
    return painted, Lesion(mask=whole, kind=kind, area_fraction=float(whole.sum() / brain_area))


def _draw_shape(
    smooth_wm: np.ndarray, brain: np.ndarray, depth: np.ndarray, rng: np.random.Generator, kind: str, area: float
) -> tuple[tuple[float, float], float, np.ndarray, np.ndarray, np.ndarray]:
    """Draw centre, tumour and oedema level sets (< 1 inside) and the whole-lesion mask."""
    spread = 1.0 if kind == "diffuse" else rng.uniform(1.25, 1.7)  # oedema radius / tumour radius
    radius = float(np.sqrt(area / np.pi) / spread)
    # Tumours grow mostly in white matter and need room: weight centres by WM and depth inside the brain.
    weights = (0.15 + smooth_wm) * np.clip(depth / max(0.7 * radius, 1.0), 0.0, 1.0) ** 4 * brain
    index = rng.choice(weights.size, p=(weights / weights.sum()).ravel())
    centre = (float(index // brain.shape[1]), float(index % brain.shape[1]))
    tumour_rho = _blob(brain.shape, centre, radius, rng)
    # Oedema follows white-matter tracts and stops at the cortex.
    oedema_rho = _blob(brain.shape, centre, radius * spread, rng) - 0.35 * (smooth_wm - 0.5)
    whole = ((tumour_rho < 1) | (oedema_rho < 1)) & brain
    return centre, radius, tumour_rho, oedema_rho, whole


def _blob(shape: tuple[int, ...], centre: tuple[float, float], radius: float, rng: np.random.Generator) -> np.ndarray:
    """Normalised radial distance of an irregular blob: < 1 inside, about 1 at its boundary."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dy, dx = rows - centre[0], cols - centre[1]
    theta = np.arctan2(dy, dx)
    lobes = np.arange(2, 6)
    amplitudes = rng.uniform(0.0, 0.35, size=lobes.size) / lobes
    phases = rng.uniform(0.0, 2 * np.pi, size=lobes.size)
    waves = np.cos(lobes[:, None, None] * theta + phases[:, None, None])
    boundary = radius * (1.0 + np.tensordot(amplitudes, waves, axes=1))
    roughness = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=max(radius / 3.0, 1.0))
    roughness *= rng.uniform(0.05, 0.15) / (roughness.std() + 1e-8)
    return np.hypot(dy, dx) / boundary + roughness


def _push_outward(images: np.ndarray, centre: tuple[float, float], radius: float, strength: float) -> np.ndarray:
    """Mass effect: resample ``[H, W, C]`` images so tissue near ``centre`` moves out by up to ``strength * radius``.

    The backward map ``c + (x - c) * (1 - s * exp(-d^2 / (8 r^2)))`` is monotonic for ``s < 1`` (no folds).
    """
    rows, cols = np.mgrid[0 : images.shape[0], 0 : images.shape[1]].astype(np.float32)
    dy, dx = rows - centre[0], cols - centre[1]
    shrink = 1.0 - strength * np.exp(-(dy**2 + dx**2) / (8.0 * radius**2))
    return remap(images, np.stack([centre[0] + dy * shrink, centre[1] + dx * shrink]).astype(np.float32))


def _regions(
    image: np.ndarray, wm: np.ndarray, rng: np.random.Generator, tumour_rho: np.ndarray, whole: np.ndarray
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """What both looks paint with: unit-variance texture, the white-matter level, tumour and oedema masks."""
    texture = ndimage.gaussian_filter(rng.standard_normal(image.shape), 1.0)
    texture /= texture.std() + 1e-8
    in_white = whole & (wm > 0.6)
    white_level = float(np.median(image[in_white])) if in_white.any() else float(image[whole].mean())
    tumour = whole & (tumour_rho < 1)
    return texture, white_level, tumour, whole & ~tumour


def _paint(
    image: np.ndarray,
    wm: np.ndarray,
    rng: np.random.Generator,
    kind: str,
    tumour_rho: np.ndarray,
    oedema_rho: np.ndarray,
    whole: np.ndarray,
) -> np.ndarray:
    """Set lesion intensities inside ``whole`` (T1 post-contrast look); pixels outside are left as they are."""
    texture, white_level, tumour, oedema = _regions(image, wm, rng, tumour_rho, whole)
    out = image.copy()
    # Vasogenic oedema: hypointense, most where it meets the tumour.
    closeness = np.clip(1.0 - oedema_rho, 0.0, 1.0)
    darkening = rng.uniform(0.25, 0.4) * (0.6 + 0.4 * closeness) + 0.02 * texture
    out[oedema] = image[oedema] * (1.0 - darkening[oedema])
    if kind == "diffuse":
        out[tumour] = image[tumour] * rng.uniform(0.5, 0.68) + 0.04 * texture[tumour]
    elif kind == "solid":
        out[tumour] = white_level * rng.uniform(1.04, 1.16) + 0.06 * texture[tumour]
    else:
        rim_thickness = rng.uniform(0.25, 0.5)
        rim = tumour & (tumour_rho >= 1.0 - rim_thickness)
        core = tumour & ~rim
        out[rim] = white_level * rng.uniform(1.08, 1.2) + 0.04 * texture[rim]
        out[core] = rng.uniform(0.18, 0.35) + 0.03 * texture[core]
    return np.clip(out, 0.0, 1.0)


def _paint_flair(
    image: np.ndarray,
    wm: np.ndarray,
    rng: np.random.Generator,
    kind: str,
    tumour_rho: np.ndarray,
    oedema_rho: np.ndarray,
    whole: np.ndarray,
) -> np.ndarray:
    """Set lesion intensities inside ``whole`` (FLAIR look); pixels outside are left as they are.

    On FLAIR, oedema and non-enhancing tumour are hyperintense against white matter (which is why FLAIR
    is the sequence glioma masks are drawn on); a necrotic core is less bright than its rim.
    """
    texture, white_level, tumour, oedema = _regions(image, wm, rng, tumour_rho, whole)
    out = image.copy()
    closeness = np.clip(1.0 - oedema_rho, 0.0, 1.0)
    brightening = rng.uniform(0.3, 0.6) * (0.6 + 0.4 * closeness) + 0.03 * texture
    out[oedema] = np.maximum(image[oedema], white_level) * (1.0 + brightening[oedema])
    level = white_level * rng.uniform(1.4, 1.8)
    if kind == "ring":
        core = tumour & (tumour_rho < 1.0 - rng.uniform(0.25, 0.5))
        out[tumour] = level + 0.05 * texture[tumour]
        out[core] = white_level * rng.uniform(1.0, 1.3) + 0.04 * texture[core]
    else:
        out[tumour] = level + 0.06 * texture[tumour]
    return np.clip(out, 0.0, 1.0)
