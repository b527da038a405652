"""Regenerate ``proxyano_plugin/data/assets/mni152_axial.npz`` from the ICBM152 2009a template in nilearn.

The demo dataset must work offline with only numpy/scipy at run time, so the few dozen axial slices it
needs are cut from the template once, here, and stored in the package (well under 1 MB). nilearn ships
the skull-stripped 1 mm template (197x233x189, uint8) and its grey/white-matter maps inside its wheel;
this script needs nilearn and nibabel (``pip install -e .[assets]``), which the package itself does not.

Usage::

    python scripts/build_demo_assets.py [--out PATH]

Slices are taken every 2 mm from voxel z = 46 to 140 (-26 mm to +68 mm in MNI space), cropped to a
192 mm square around the brain, oriented with anterior at the top and the subject's left on the image
left (neurological convention), and area-resampled to 128x128 (1.5 mm pixels). The WM map is rounded to
16 levels. The output is deterministic: rerunning the script reproduces the committed file byte for byte.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

SLICES = range(46, 141, 2)
SIZE = 128
SIDE = 192  # voxels (mm): the brain spans 181 mm antero-posteriorly, so 1.5 mm pixels at 128 px
WM_STEP = 17  # the WM map only guides lesion placement: 16 levels halve its share of the file
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "proxyano_plugin" / "data" / "assets" / "mni152_axial.npz"
SOURCE = (
    "ICBM 2009a nonlinear symmetric T1 template and WM probability map (Fonov et al. 2009, 2011), "
    "1 mm, skull-stripped, as shipped in nilearn (mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz). "
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological "
    "Institute, McGill University. See NOTICE."
)


def load_volumes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load the T1 template, its WM map and its affine from the files inside the nilearn wheel.

    The files are read directly: nilearn's ``load_mni152_*`` helpers rescale the intensities.
    """
    import nibabel as nib

    data = resources.files("nilearn.datasets.data")
    t1_img = nib.load(data / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    t1 = np.asarray(t1_img.dataobj, dtype=np.float32)
    wm = np.asarray(nib.load(data / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").dataobj, dtype=np.float32)
    return t1, wm, t1_img.affine


def square_crop(brain: np.ndarray) -> tuple[int, int]:
    """Return the corner ``(x0, y0)`` of the ``SIDE``-voxel square centred on the brain of the selected slices."""
    xs = np.flatnonzero(brain.any(axis=(1, 2)))
    ys = np.flatnonzero(brain.any(axis=(0, 2)))
    if max(xs[-1] - xs[0], ys[-1] - ys[0]) >= SIDE:
        msg = f"the brain does not fit a {SIDE} mm square; raise SIDE in {__file__}"
        raise ValueError(msg)
    return int(xs[0] + xs[-1] + 1 - SIDE) // 2, int(ys[0] + ys[-1] + 1 - SIDE) // 2


def axial(volume: np.ndarray, z: int, x0: int, y0: int) -> np.ndarray:
    """Cut one axial slice as a 128x128 image: anterior at the top, zero-padded, area-resampled."""
    padded = np.pad(volume[:, :, z], SIDE)
    cut = padded[x0 + SIDE : x0 + 2 * SIDE, y0 + SIDE : y0 + 2 * SIDE]
    image = np.ascontiguousarray(np.flipud(cut.T), dtype=np.float32)
    return cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def build(out: Path) -> None:
    """Cut, resample and store the slices; print what was written."""
    t1, wm, affine = load_volumes()
    z = np.asarray(SLICES)
    inside = t1 > 0
    x0, y0 = square_crop(inside[:, :, z])
    t1_slices, wm_slices, brain_slices = [], [], []
    for k in z:
        brain = axial(inside, k, x0, y0) >= 0.5
        t1_slices.append(np.where(brain, np.clip(np.rint(axial(t1, k, x0, y0)), 1, 255), 0).astype(np.uint8))
        wm_slices.append(np.where(brain, np.rint(axial(wm, k, x0, y0) / WM_STEP) * WM_STEP, 0).astype(np.uint8))
        brain_slices.append(brain)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        t1=np.stack(t1_slices),
        wm=np.stack(wm_slices),
        brain=np.stack(brain_slices),
        z_mm=(affine[2, 2] * z + affine[2, 3]).astype(np.float32),
        pixel_mm=np.float32(SIDE / SIZE * abs(affine[0, 0])),
        crop_voxels=np.array([x0, y0, SIDE], dtype=np.int32),
        source=np.array(SOURCE),
    )
    size_kib = out.stat().st_size / 1024
    print(f"wrote {out} ({size_kib:.0f} KiB): {len(z)} slices of {SIZE}x{SIZE}, {SIDE / SIZE:.2f} mm/pixel")


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output .npz (default: {DEFAULT_OUT})")
    build(parser.parse_args().out)


if __name__ == "__main__":
    main()
