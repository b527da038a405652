"""Turn volumes into 2-D slices in an anomalib ``Folder`` tree, split by subject.

Layout written (all folders always exist, possibly empty)::

    OUT/train/good/<subject>_<slice>.png          normal slices of train subjects
    OUT/test/good/<subject>_<slice>.png           normal slices of test subjects
    OUT/test/abnormal/<subject>_<slice>.png       abnormal slices of test subjects
    OUT/ground_truth/abnormal/<subject>_<slice>.png   their masks (same name: anomalib's Folder pairs by name)
    OUT/manifest.csv                              file,subject,source,slice_index,label,lesion_area,split,mask
    OUT/prepare.json                              the options and the counts

The tree is written into a hidden sibling folder and moved into place only when complete.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from proxyano_plugin.image_io import encode_png, write_png
from proxyano_plugin.prepare.readers import (
    DEFAULT_SUBJECT_REGEX,
    PrepareError,
    Volume,
    by_subject,
    find_dicom_series,
    find_files,
    load_dicom_subject,
    load_nifti_subject,
)

FOLDERS = {
    "normal_dir": "train/good",
    "normal_test_dir": "test/good",
    "abnormal_dir": "test/abnormal",
    "mask_dir": "ground_truth/abnormal",
}
MANIFEST_COLUMNS = ("file", "subject", "source", "slice_index", "label", "lesion_area", "split", "mask")
NORMALISATIONS = ("percentile", "window", "minmax")
FORMATS = ("png8", "png16")


@dataclass
class SliceOptions:
    """How volumes become slices. Areas are in pixels of the source slice, before resizing."""

    axis: int = 2
    slice_range: str | None = None
    foreground_fraction: float = 0.05
    foreground_threshold: float = 0.02
    min_lesion_area: int = 20
    normalise: str = "percentile"
    low: float = 0.5
    high: float = 99.5
    window_min: float | None = None
    window_max: float | None = None
    size: int = 128
    test_fraction: float = 0.3
    seed: int = 0
    format: str = "png8"
    spacing: float | None = None
    """In-plane pixel size in mm to resample each slice to, before ``size`` (NIfTI only); None keeps the grid."""

    def check(self) -> None:
        problems = []
        if self.axis not in (0, 1, 2):
            problems.append(f"--axis must be 0, 1 or 2, got {self.axis}")
        if self.slice_range is not None:
            parse_slice_range(self.slice_range)
        if not 0 <= self.foreground_fraction <= 1:
            problems.append(f"--foreground-fraction must be in [0, 1], got {self.foreground_fraction}")
        if self.min_lesion_area < 1:
            problems.append(f"--min-lesion-area must be at least 1 pixel, got {self.min_lesion_area}")
        if self.normalise not in NORMALISATIONS:
            problems.append(f"--normalise must be one of {', '.join(NORMALISATIONS)}, got {self.normalise!r}")
        if self.normalise == "percentile" and not 0 <= self.low < self.high <= 100:
            problems.append(f"need 0 <= --low < --high <= 100, got --low {self.low} --high {self.high}")
        if self.normalise == "window" and (
            self.window_min is None or self.window_max is None or not self.window_min < self.window_max
        ):
            problems.append(
                f"--normalise window needs --window-min < --window-max, got {self.window_min} and {self.window_max}"
            )
        if self.size < 0:
            problems.append(f"--size must be positive (or 0 to keep the slice size), got {self.size}")
        if not 0 <= self.test_fraction <= 1:
            problems.append(f"--test-fraction must be in [0, 1], got {self.test_fraction}")
        if self.spacing is not None and not (np.isfinite(self.spacing) and self.spacing > 0):
            problems.append(f"--spacing must be a positive size in mm, got {self.spacing}")
        if self.format not in FORMATS:
            problems.append(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if problems:
            raise PrepareError("; ".join(problems))


@dataclass
class Summary:
    """What was written, and what was dropped and why."""

    output: str
    subjects: dict[str, int] = field(default_factory=lambda: {"train": 0, "test": 0})
    slices: dict[str, int] = field(default_factory=lambda: {"train/good": 0, "test/good": 0, "test/abnormal": 0})
    dropped: dict[str, int] = field(
        default_factory=lambda: {"low_foreground": 0, "ambiguous_lesion": 0, "abnormal_in_train_subject": 0}
    )
    seconds: float = 0.0

    def text(self) -> str:
        lines = [
            f"wrote {self.output}",
            f"  subjects: {self.subjects['train']} train, {self.subjects['test']} test (no subject on both sides)",
            "  slices:   "
            + ", ".join(f"{folder} {count}" for folder, count in self.slices.items())
            + f" (masks in {FOLDERS['mask_dir']})",
            f"  dropped:  {self.dropped['low_foreground']} with foreground below --foreground-fraction, "
            f"{self.dropped['ambiguous_lesion']} with 0 < lesion < --min-lesion-area (ambiguous), "
            f"{self.dropped['abnormal_in_train_subject']} abnormal slices of train subjects",
            f"  time:     {self.seconds:.1f} s",
        ]
        if self.slices["test/abnormal"] == 0:
            lines.append("  note: no abnormal test slice (no --labels, no lesion, or no test subject)")
        return "\n".join(lines)


def parse_slice_range(text: str) -> slice:
    """``'a:b'`` (Python slice bounds, either may be empty or negative) -> ``slice(a, b)``."""
    match = re.fullmatch(r"\s*(-?\d*)\s*:\s*(-?\d*)\s*", text)
    if match is None:
        msg = f"--slice-range must look like 'a:b' (e.g. '20:140', '10:-10', ':'), got {text!r}"
        raise PrepareError(msg)
    start, stop = (int(value) if value else None for value in match.groups())
    return slice(start, stop)


def split_subjects(subjects: Iterable[str], test_fraction: float, seed: int) -> dict[str, str]:
    """Subject -> ``'train'`` or ``'test'``: a seeded shuffle, at least one on each side when 0 < fraction < 1."""
    names = sorted(subjects)
    if test_fraction <= 0:
        return dict.fromkeys(names, "train")
    if test_fraction >= 1:
        return dict.fromkeys(names, "test")
    if len(names) < 2:
        msg = f"--test-fraction {test_fraction} needs at least 2 subjects to split by subject, found {len(names)}"
        raise PrepareError(msg)
    n_test = min(max(round(test_fraction * len(names)), 1), len(names) - 1)
    order = np.random.default_rng(seed).permutation(len(names))
    test = {names[i] for i in order[:n_test]}
    return {name: "test" if name in test else "train" for name in names}


def normalise_volume(data: np.ndarray, options: SliceOptions, source: Path) -> np.ndarray:
    """Intensities mapped to [0, 1] per volume (float32).

    ``percentile``: the ``low``/``high`` percentiles of the foreground voxels (those above the volume's
    minimum, i.e. not background) map to 0/1, values outside are clipped. ``window``: ``window_min``/``window_max``
    map to 0/1 (e.g. Hounsfield units for CT). ``minmax``: the volume's minimum/maximum map to 0/1.
    """
    if options.normalise == "window":
        low, high = float(options.window_min), float(options.window_max)
    else:
        minimum = float(data.min())
        foreground = data[data > minimum]
        if foreground.size == 0:
            msg = f"{source} is constant ({minimum:g} everywhere): nothing to normalise"
            raise PrepareError(msg)
        if options.normalise == "percentile":
            low, high = (float(v) for v in np.percentile(foreground, [options.low, options.high]))
        else:
            low, high = minimum, float(foreground.max())
        if high <= low:
            msg = (
                f"{source}: the {options.low:g}th and {options.high:g}th foreground percentiles are equal ({low:g}); "
                "widen --low/--high or use --normalise minmax"
            )
            raise PrepareError(msg)
    out = data - np.float32(low)
    out *= np.float32(1.0 / (high - low))
    np.clip(out, 0.0, 1.0, out=out)
    return out


@dataclass
class SliceItem:
    """One slice ready to write."""

    name: str
    folder: str
    image: np.ndarray  # float32 in [0, 1], output size
    mask: np.ndarray | None  # bool, output size (abnormal slices only)
    slice_index: int
    lesion_area: int
    source: Path


def _square(image: np.ndarray) -> np.ndarray:
    """Zero-pad to a centred square (keeps the aspect ratio when resizing)."""
    rows, cols = image.shape
    side = max(rows, cols)
    if rows == cols:
        return image
    top, left = (side - rows) // 2, (side - cols) // 2
    out = np.zeros((side, side), image.dtype)
    out[top : top + rows, left : left + cols] = image
    return out


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    image = _square(image)
    if size == 0 or image.shape[0] == size:
        return np.ascontiguousarray(image)
    interpolation = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Area-weighted resize thresholded at one half; never empties a non-empty mask."""
    return _binarise(_resize(mask.astype(np.float32), size))


def _binarise(resized: np.ndarray) -> np.ndarray:
    """A resized 0/1 mask thresholded at one half, or, if that leaves nothing, every pixel the lesion touches."""
    out = resized >= 0.5
    return out if out.any() else resized > 0


def in_plane_factors(volume: Volume, axis: int, spacing: float) -> tuple[float, float]:
    """Scale factors that bring the two in-plane axes of ``volume``'s slices along ``axis`` to ``spacing`` mm."""
    if volume.spacing is None:
        msg = f"--spacing needs the voxel size, which {volume.source} does not give (only NIfTI headers are read)"
        raise PrepareError(msg)
    sizes = [size for index, size in enumerate(volume.spacing) if index != axis]
    if not all(np.isfinite(size) and size > 0 for size in sizes):
        msg = f"{volume.source} has voxel size {volume.spacing} mm in its header; --spacing needs positive sizes"
        raise PrepareError(msg)
    return sizes[0] / spacing, sizes[1] / spacing


def _resample(image: np.ndarray, factors: tuple[float, float]) -> np.ndarray:
    """Scale a source slice's two axes by ``factors`` (area interpolation when shrinking both, else linear)."""
    rows, cols = (max(1, round(length * factor)) for length, factor in zip(image.shape, factors, strict=True))
    if (rows, cols) == image.shape:
        return image
    shrinking = rows <= image.shape[0] and cols <= image.shape[1]
    return cv2.resize(image, (cols, rows), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _resample_mask(mask: np.ndarray, factors: tuple[float, float]) -> np.ndarray:
    """Resample like the image, thresholded at one half; a non-empty mask stays non-empty."""
    return _binarise(_resample(mask.astype(np.float32), factors))


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def slices_of(volume: Volume, split: str, options: SliceOptions, summary: Summary) -> Iterator[SliceItem]:
    """The kept slices of one volume, labelled; updates ``summary.dropped``."""
    axis = options.axis
    # Slices first and contiguous: one copy, then every slice is a cheap view (np.take along axis 2 is slow).
    data = np.ascontiguousarray(np.moveaxis(normalise_volume(volume.data, options, volume.source), axis, 0))
    labels = None if volume.label is None else np.ascontiguousarray(np.moveaxis(volume.label, axis, 0))
    indices = range(data.shape[0])
    if options.slice_range is not None:
        indices = indices[parse_slice_range(options.slice_range)]
    stem = _SAFE.sub("_", volume.subject)
    factors = None if options.spacing is None else in_plane_factors(volume, axis, options.spacing)
    for index in indices:
        image = volume.display(data[index] if factors is None else _resample(data[index], factors))
        foreground = np.count_nonzero(image > options.foreground_threshold) / image.size
        if foreground < options.foreground_fraction or foreground == 0:
            summary.dropped["low_foreground"] += 1
            continue
        lesion = None
        area = 0
        if labels is not None:
            area = int(np.count_nonzero(labels[index]))  # in source pixels, whatever --spacing
            lesion = volume.display(labels[index] if factors is None else _resample_mask(labels[index], factors))
        if 0 < area < options.min_lesion_area:
            summary.dropped["ambiguous_lesion"] += 1
            continue
        abnormal = area > 0
        if abnormal and split == "train":
            summary.dropped["abnormal_in_train_subject"] += 1
            continue
        if abnormal:
            folder = FOLDERS["abnormal_dir"]
        else:
            folder = FOLDERS["normal_dir" if split == "train" else "normal_test_dir"]
        source = volume.source
        if volume.slice_sources is not None and axis == 2:
            source = volume.slice_sources[index]
        yield SliceItem(
            name=f"{stem}_{index:04d}.png",
            folder=folder,
            image=_resize(image, options.size),
            mask=_resize_mask(lesion, options.size) if abnormal else None,
            slice_index=index,
            lesion_area=area,
            source=source,
        )


def write_manifest(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> None:
    """Write the rows of a tree's manifest as CSV, columns in the given order."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def write_tree(
    output: str | Path,
    volumes: Iterable[Volume],
    splits: dict[str, str],
    options: SliceOptions,
    overwrite: bool = False,
    settings: dict | None = None,
) -> Summary:
    """Write the Folder tree for ``volumes`` (loaded lazily, one at a time) atomically into ``output``."""
    import time

    start = time.perf_counter()
    output = Path(output).expanduser().absolute()
    summary = Summary(output=str(output))
    with staged_output(output, overwrite) as staging:
        for folder in FOLDERS.values():
            (staging / folder).mkdir(parents=True)
        rows, names = [], set()
        for volume in volumes:
            split = splits[volume.subject]
            summary.subjects[split] += 1
            for item in slices_of(volume, split, options, summary):
                path = f"{item.folder}/{item.name}"
                if item.name in names:
                    msg = f"two slices would both be written as {item.name} (subject {volume.subject!r}, {item.source})"
                    raise PrepareError(msg)
                names.add(item.name)
                write_png(staging / path, encode_png(item.image, options.format))
                mask_path = ""
                if item.mask is not None:
                    mask_path = f"{FOLDERS['mask_dir']}/{item.name}"
                    write_png(staging / mask_path, item.mask.astype(np.uint8) * 255)
                summary.slices[item.folder] += 1
                rows.append(
                    {
                        "file": path,
                        "subject": volume.subject,
                        "source": str(item.source),
                        "slice_index": item.slice_index,
                        "label": int(item.mask is not None),
                        "lesion_area": item.lesion_area,
                        "split": split,
                        "mask": mask_path,
                    }
                )
        write_manifest(staging / "manifest.csv", MANIFEST_COLUMNS, rows)
        summary.seconds = time.perf_counter() - start
        record = {"options": asdict(options), **(settings or {}), "summary": asdict(summary)}
        (staging / "prepare.json").write_text(json.dumps(record, indent=2) + "\n")
    return summary


def staging_dir(target: Path) -> Path:
    """A new hidden sibling folder to write ``target`` into, with the mode a plain ``mkdir`` would give.

    ``tempfile.mkdtemp`` creates it 0700, which the rename would carry to ``target``: a dataset others on the
    machine could not read although the umask (typically 022) says they may.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    return staging


@contextmanager
def staged_output(output: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden sibling folder to write ``output`` into; move it into place only if the block succeeds.

    An error or Ctrl-C inside the block leaves no ``output`` (and an existing one untouched); an existing
    ``output`` is refused unless ``overwrite``.
    """
    if output.exists() and not overwrite:
        msg = f"--output {output} already exists: pass --overwrite to replace it"
        raise PrepareError(msg)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(output)
    try:
        yield staging
        _move_into_place(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, output: Path) -> None:
    if output.exists():  # --overwrite: move the old tree aside first (os.replace cannot replace a full folder)
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}-old-", dir=output.parent))
        os.replace(output, old / output.name)
        try:
            os.replace(staging, output)
        except OSError:
            os.replace(old / output.name, output)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, output)


# ------------------------------------------------------------------------------------------ entry points


def prepare_nifti(
    images: str | Path,
    output: str | Path,
    labels: str | Path | None = None,
    options: SliceOptions | None = None,
    subject_regex: str = DEFAULT_SUBJECT_REGEX,
    overwrite: bool = False,
) -> Summary:
    """NIfTI volumes (one per subject) and optional label volumes matched by subject id -> Folder tree."""
    options = options or SliceOptions()
    options.check()
    try:
        pattern = re.compile(subject_regex, re.IGNORECASE)
    except re.error as error:
        msg = f"--subject-regex {subject_regex!r} is not a valid regular expression: {error}"
        raise PrepareError(msg) from error
    image_files = by_subject(find_files(images, "--images"), pattern, "--images")
    label_files: dict[str, Path] = {}
    if labels is not None:
        label_files = by_subject(find_files(labels, "--labels"), pattern, "--labels")
        for subject, image in image_files.items():
            if subject not in label_files:
                msg = (
                    f"no label volume for subject {subject!r} (image {image}) among --labels {labels}; "
                    "check the file names or --subject-regex"
                )
                raise PrepareError(msg)
    splits = split_subjects(image_files, options.test_fraction, options.seed)
    volumes = (
        load_nifti_subject(subject, image, label_files.get(subject) if labels is not None else None)
        for subject, image in sorted(image_files.items())
    )
    settings = {"command": "nifti", "images": str(images), "labels": None if labels is None else str(labels)}
    return write_tree(output, volumes, splits, options, overwrite=overwrite, settings=settings)


def prepare_dicom(
    series: str | Path,
    output: str | Path,
    options: SliceOptions | None = None,
    overwrite: bool = False,
) -> Summary:
    """A folder of DICOM series (one subfolder per subject) -> Folder tree of normal slices."""
    options = options or SliceOptions(test_fraction=0.0)
    options.check()
    found = find_dicom_series(series)
    splits = split_subjects(found, options.test_fraction, options.seed)
    volumes = (load_dicom_subject(subject, files) for subject, files in sorted(found.items()))
    settings = {"command": "dicom", "series": str(series)}
    return write_tree(output, volumes, splits, options, overwrite=overwrite, settings=settings)
