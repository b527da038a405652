"""Merge per-lesion mask folders into one binary mask per image, the layout anomalib's ``Folder`` reads.

Fundus lesion sets (IDRiD and alike) annotate each lesion type in its own folder (``1. Microaneurysms/
IDRiD_01_MA.tif``, ``2. Haemorrhages/IDRiD_01_HE.tif``, ...), some images lacking some types, whereas
anomalib's ``Folder`` takes one ``mask_dir`` with one mask per abnormal image. :func:`merge_masks` writes
``OUT/<image stem>.png`` (0/255, lesion = nonzero in any of the folders) plus ``OUT/manifest.csv``; like
the slice pipeline, into a hidden sibling folder renamed into place when complete.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from proxyano_plugin.data.validation import image_suffixes, list_images, names_stem
from proxyano_plugin.image_io import write_png
from proxyano_plugin.prepare.pipeline import staged_output, write_manifest
from proxyano_plugin.prepare.readers import PrepareError

MASK_MANIFEST_COLUMNS = ("file", "image", "sources", "lesion_area")


@dataclass
class MaskSummary:
    """What :func:`merge_masks` wrote."""

    output: str
    images: int = 0
    per_folder: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def text(self) -> str:
        lines = [f"wrote {self.output}: one mask per image, {self.images} masks"]
        lines += [f"  {count:5d} lesion masks from {folder}" for folder, count in self.per_folder.items()]
        lines.append(f"  time: {self.seconds:.1f} s")
        return "\n".join(lines)


def _listed(folder: str | Path, role: str) -> list[Path]:
    files, problem = list_images(Path(folder).expanduser().resolve(), role, image_suffixes())
    if problem:
        raise PrepareError(problem.message)
    return files


def _owner(mask: Path, images: Sequence[Path]) -> Path | None:
    """The image a mask belongs to: the one with the longest stem that the mask's name contains as a word."""
    owners = [image for image in images if names_stem(mask.stem, image.stem)]
    return max(owners, key=lambda image: len(image.stem), default=None)


def _size(image: Path) -> tuple[int, int]:
    try:
        with Image.open(image) as picture:
            return picture.size
    except (OSError, SyntaxError, ValueError) as error:
        msg = f"cannot read image {image} ({error}): replace or delete it"
        raise PrepareError(msg) from error


def _read_lesion(path: Path) -> np.ndarray:
    """A mask as a boolean array: nonzero in any colour channel (alpha ignored) is lesion."""
    try:
        with Image.open(path) as image:
            image.load()
            bands = image.getbands()
            values = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as error:
        msg = f"cannot read mask {path} ({error}): replace or delete it"
        raise PrepareError(msg) from error
    if values.ndim == 3:
        keep = [index for index, band in enumerate(bands) if band != "A"]
        return values[..., keep].any(axis=2)
    return values != 0


def merge_masks(
    images: str | Path, masks: Sequence[str | Path], output: str | Path, overwrite: bool = False
) -> MaskSummary:
    """Write one binary mask per image of ``images``: the union of its masks in the ``masks`` folders.

    A mask belongs to an image when its stem is the image's stem, or contains it as a whole word
    (``IDRiD_01_MA`` for ``IDRiD_01``). Errors (:class:`PrepareError`, naming the file) for: an image with no
    mask in any folder, a mask that belongs to no image, two images with one stem, an unreadable mask, or a
    mask whose size differs from its image's. Nothing is written unless every image succeeds.
    """
    start = time.perf_counter()
    if not masks:
        msg = "--masks: name at least one folder of masks"
        raise PrepareError(msg)
    image_files = _listed(images, "--images")
    stems: dict[str, Path] = {}
    for image in image_files:
        if image.stem in stems:
            msg = f"--images: {stems[image.stem]} and {image} have the same name; their masks would collide"
            raise PrepareError(msg)
        stems[image.stem] = image
    folders = {Path(folder).expanduser().resolve(): _listed(folder, "--masks") for folder in masks}
    pairs: dict[Path, list[Path]] = {image: [] for image in image_files}
    for files in folders.values():
        for mask in files:
            owner = _owner(mask, image_files)
            if owner is None:
                msg = f"mask {mask} belongs to no image in --images {images}: name it after its image, or delete it"
                raise PrepareError(msg)
            pairs[owner].append(mask)
    output = Path(output).expanduser().absolute()
    summary = MaskSummary(output=str(output), per_folder={str(folder): len(files) for folder, files in folders.items()})
    rows = []
    with staged_output(output, overwrite) as staging:
        for image, sources in pairs.items():
            if not sources:
                msg = (
                    f"image {image} has no mask in any of --masks {', '.join(map(str, folders))}: "
                    "add one, or move the image out of --images (images without lesions are normal)"
                )
                raise PrepareError(msg)
            width, height = _size(image)
            lesion = np.zeros((height, width), bool)
            for source in sources:
                part = _read_lesion(source)
                if part.shape != lesion.shape:
                    msg = (
                        f"mask {source} is {part.shape[1]}x{part.shape[0]} but its image {image} is "
                        f"{width}x{height}: resize the mask"
                    )
                    raise PrepareError(msg)
                lesion |= part
            name = f"{image.stem}.png"
            write_png(staging / name, lesion.astype(np.uint8) * 255)
            rows.append(
                {
                    "file": name,
                    "image": str(image),
                    "sources": ";".join(map(str, sources)),
                    "lesion_area": int(lesion.sum()),
                }
            )
        write_manifest(staging / "manifest.csv", MASK_MANIFEST_COLUMNS, rows)
        summary.images = len(rows)
    summary.seconds = time.perf_counter() - start
    return summary
