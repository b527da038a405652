"""Generate the semi-synthetic BrainMRIDemo dataset and materialise it as an anomalib Folder tree.

Train images are normal slices of training pseudo-subjects; test images come from other pseudo-subjects
(seeded from a separate stream, so never the same people), some slices carrying a synthetic tumour with
its exact mask. The tree is written once per parameter set into a cache directory, through a temporary
directory renamed into place, so an interrupted or concurrent run never leaves a half-written dataset::

    <root>/<key>/train/good/tr000_s01.png
                 test/good/te000_s03.png
                 test/lesion/te000_s05.png
                 ground_truth/lesion/te000_s05.png   (0/255, same name as its image)
                 samples.csv  manifest.json  NOTICE.txt

numpy/scipy/OpenCV only: usable without anomalib (e.g. to export the images elsewhere).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from proxyano_plugin.data.anatomy import Subject, load_template
from proxyano_plugin.data.lesions import add_tumour
from proxyano_plugin.image_io import write_png

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
"""Bump whenever the generated images change, so that caches built by an older generator are not reused."""

FOLDER_LAYOUT = {
    "normal_dir": "train/good",
    "normal_test_dir": "test/good",
    "abnormal_dir": "test/lesion",
    "mask_dir": "ground_truth/lesion",
}
"""Sub-folders of a materialised tree, as anomalib ``Folder`` arguments."""

ICBM_NOTICE = """\
Images derived from the ICBM 2009a nonlinear symmetric T1 template (Fonov et al., NeuroImage 2009 and
2011), with synthetic deformations, acquisition effects and lesions added by proxyano-plugin.

Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute,
McGill University. Permission to use, copy, modify, and distribute this software and its documentation
for any purpose and without fee is hereby granted, provided that the above copyright notice appear in
all copies. The authors and McGill University make no representations about the suitability of this
software for any purpose. It is provided "as is" without express or implied warranty. The authors are
not responsible for any data loss, equipment damage, property loss, or injury to subjects or patients
resulting from the use or misuse of this software package.
"""

_TRAIN, _TEST = 0, 1  # seed streams: a test subject can never share a seed with a training subject


@dataclass(frozen=True)
class DemoSpec:
    """Everything that determines the generated images (and hence the cache key)."""

    train_subjects: int = 12
    test_subjects: int = 8
    slices_per_subject: int = 20
    lesion_fraction: float = 0.5
    """Share of test images that carry a lesion."""
    lesion_area: tuple[float, float] = (0.01, 0.08)
    """Range of the lesion area as a share of the slice's brain area."""
    seed: int = 0

    def __post_init__(self) -> None:
        """Normalise list input (YAML, CLI) and reject values that cannot make a usable dataset."""
        object.__setattr__(self, "lesion_area", tuple(float(value) for value in self.lesion_area))
        problems = []
        if self.train_subjects < 1 or self.test_subjects < 1:
            problems.append("train_subjects and test_subjects must be at least 1")
        if not 0 < self.lesion_fraction < 1:
            problems.append(f"lesion_fraction must be strictly between 0 and 1, got {self.lesion_fraction}")
        if len(self.lesion_area) != 2 or not 0 < self.lesion_area[0] <= self.lesion_area[1] < 1:
            problems.append(f"lesion_area must be [low, high] with 0 < low <= high < 1, got {self.lesion_area}")
        available = load_template().t1.shape[0]
        if not 0 < self.slices_per_subject <= available:
            problems.append(f"slices_per_subject must be between 1 and {available}, got {self.slices_per_subject}")
        if problems:
            raise ValueError("BrainMRIDemo: " + "; ".join(problems))

    def key(self) -> str:
        """Cache folder name: generator version plus a hash of the parameters and of the template asset."""
        payload = json.dumps({"spec": asdict(self), "template": load_template().digest}, sort_keys=True)
        return f"v{GENERATOR_VERSION}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class DemoImage:
    """One generated slice."""

    split: str
    """``train`` or ``test``."""
    name: str
    """File name, ``<subject>_s<template slice>.png``."""
    subject: str
    slice_index: int
    z_mm: float
    image: np.ndarray
    """uint8 ``[H, W]``."""
    mask: np.ndarray | None
    """Boolean lesion mask; ``None`` for normal images."""
    lesion: str = ""
    """Lesion kind (see :data:`~proxyano_plugin.data.lesions.LESION_KINDS`), empty for normal images."""
    lesion_fraction: float = 0.0

    @property
    def folder(self) -> str:
        """Sub-folder of the tree this image belongs in."""
        if self.split == "train":
            return FOLDER_LAYOUT["normal_dir"]
        return FOLDER_LAYOUT["abnormal_dir" if self.mask is not None else "normal_test_dir"]


def generate_demo(spec: DemoSpec) -> Iterator[DemoImage]:
    """Yield every image of the dataset, deterministically for a given ``spec``."""
    for split, count in (("train", spec.train_subjects), ("test", spec.test_subjects)):
        for number in range(count):
            yield from subject_images(spec, split, number)


def subject_images(
    spec: DemoSpec, split: str, number: int, lesion_fraction: float | None = None, appearance: str = "t1ce"
) -> Iterator[DemoImage]:
    """The slices of one pseudo-subject; a subject depends only on the seed, its split and its number.

    So training subjects numbered past ``spec.train_subjects`` are further normal subjects of the training
    distribution that the dataset itself does not contain: a validation set that costs the training set
    nothing (:class:`~proxyano_plugin.data.BrainMRIDemo` with ``val_split_mode="lesions"``).
    ``lesion_fraction`` (default: ``spec.lesion_fraction`` for test subjects, none for training ones) puts
    lesions of ``appearance`` into the anatomy *before* the simulated scan, as the test lesions are, so that
    they are blurred, biased and noisy like the tissue around them.
    """
    template = load_template()
    rng = np.random.default_rng([spec.seed, _TRAIN if split == "train" else _TEST, number])
    subject = Subject.random(rng, template.size)
    indices = subject.slice_indices(template.t1.shape[0], spec.slices_per_subject)
    if lesion_fraction is None:
        lesion_fraction = spec.lesion_fraction if split == "test" else 0.0
    lesioned = set()
    if lesion_fraction > 0:  # cumulative rounding: the total is exactly round(fraction * images)
        per_subject = lesion_fraction * spec.slices_per_subject
        n_lesions = int(np.floor(per_subject * (number + 1) + 0.5) - np.floor(per_subject * number + 0.5))
        lesioned = set(rng.choice(indices.size, size=n_lesions, replace=False).tolist())
    name = f"{split[:2]}{number:03d}"
    for position, index in enumerate(indices):
        image, wm, brain = subject.anatomy(template, index)
        lesion = None
        if position in lesioned:
            image, lesion = add_tumour(image, wm, brain, rng, area_range=spec.lesion_area, appearance=appearance)
        yield DemoImage(
            split=split,
            name=f"{name}_s{index:02d}.png",
            subject=name,
            slice_index=int(index),
            z_mm=float(template.z_mm[index]),
            image=subject.acquire(image, rng),
            mask=None if lesion is None else lesion.mask,
            lesion="" if lesion is None else lesion.kind,
            lesion_fraction=0.0 if lesion is None else lesion.area_fraction,
        )


def further_subjects(
    spec: DemoSpec, count: int, lesion_fraction: float = 0.0, appearance: str = "t1ce"
) -> list[DemoImage]:
    """The slices of ``count`` training-distribution subjects numbered past ``spec.train_subjects``.

    Never in the dataset itself: the label-free validation set of :class:`~proxyano_plugin.data.BrainMRIDemo`.
    ``lesion_fraction`` and ``appearance`` as in :func:`subject_images` (lesions put in before the scan).
    """
    numbers = range(spec.train_subjects, spec.train_subjects + count)
    return [image for number in numbers for image in subject_images(spec, "train", number, lesion_fraction, appearance)]


def default_cache_root() -> Path:
    """``$PROXYANO_PLUGIN_CACHE/brain_mri_demo``, else ``./datasets/brain_mri_demo``.

    anomalib's own datamodules default to ``./datasets/<name>``, in sight of the user. A folder under a
    hidden directory (``~/.cache``) would also make anomalib warn about "hidden files" for every split.
    """
    if base := os.environ.get("PROXYANO_PLUGIN_CACHE"):
        return Path(base).expanduser() / "brain_mri_demo"
    return Path("datasets") / "brain_mri_demo"


def demo_dir(spec: DemoSpec, root: str | Path | None = None) -> Path:
    """Where the tree for ``spec`` lives: ``<root or default_cache_root()>/<spec.key()>``."""
    return (Path(root).expanduser() if root is not None else default_cache_root()).resolve() / spec.key()


def materialise_demo(spec: DemoSpec, root: str | Path | None = None) -> Path:
    """Write the Folder tree for ``spec`` unless it is already there; return its directory."""
    from proxyano_plugin.prepare.pipeline import staging_dir  # prepare imports this package

    target = demo_dir(spec, root)
    if (target / "manifest.json").is_file():
        return target
    if target.exists():
        msg = f"{target} exists but is not a complete BrainMRIDemo tree (no manifest.json): delete it and retry"
        raise FileExistsError(msg)
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Generating the BrainMRIDemo dataset in %s", target)
    staging = staging_dir(target)
    try:
        _write_tree(staging, spec)
        os.rename(staging, target)
    except OSError:
        if not (target / "manifest.json").is_file():  # not a lost race with another process: a real failure
            raise
        logger.info("Another process generated %s first; using it", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_tree(directory: Path, spec: DemoSpec) -> None:
    """Write images, masks, ``samples.csv``, ``NOTICE.txt`` and, last, ``manifest.json``."""
    for folder in FOLDER_LAYOUT.values():
        (directory / folder).mkdir(parents=True)
    rows, counts = [], dict.fromkeys(FOLDER_LAYOUT.values(), 0)
    for item in generate_demo(spec):
        path = f"{item.folder}/{item.name}"
        write_png(directory / path, item.image)
        mask_path = ""
        if item.mask is not None:
            mask_path = f"{FOLDER_LAYOUT['mask_dir']}/{item.name}"
            write_png(directory / mask_path, item.mask.astype(np.uint8) * 255)
            counts[FOLDER_LAYOUT["mask_dir"]] += 1
        counts[item.folder] += 1
        rows.append(
            {
                "file": path,
                "label": int(item.mask is not None),
                "split": item.split,
                "mask": mask_path,
                "subject": item.subject,
                "slice": item.slice_index,
                "z_mm": f"{item.z_mm:g}",
                "lesion": item.lesion,
                "lesion_fraction": f"{item.lesion_fraction:.4f}",
            }
        )
    with (directory / "samples.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (directory / "NOTICE.txt").write_text(ICBM_NOTICE)
    manifest = {
        "dataset": "BrainMRIDemo (semi-synthetic: real template anatomy, synthetic subjects and lesions)",
        "generator_version": GENERATOR_VERSION,
        "template_sha256": load_template().digest,
        "spec": asdict(spec),
        "counts": counts,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
