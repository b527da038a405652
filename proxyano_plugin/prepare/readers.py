"""Find and read medical volumes (NIfTI with nibabel, DICOM series with pydicom) as float32 arrays.

Every problem is raised as :class:`PrepareError` with a message naming the file or folder it is about.
nibabel and pydicom are imported only when a reader needs them (``pip install 'proxyano-plugin[medical]'``).
"""

from __future__ import annotations

import glob
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NIFTI_SUFFIXES = (".nii.gz", ".nii")

# The subject id is the file name without its extension and without a trailing modality or label word,
# so that ``BraTS2021_00000_flair.nii.gz`` and ``BraTS2021_00000_seg.nii.gz`` are both subject ``BraTS2021_00000``
# and ``sub-01_T1w.nii.gz`` is ``sub-01``; ``case_001.nii.gz`` (no such word) is ``case_001``.
_MODALITY_WORDS = (
    "flair|t1|t1ce|t1gd|t1c|t1w|t2|t2w|t2f|t2star|pd|pdw|dwi|adc|swi|ct|pet|img|image|"
    "seg|segmentation|mask|label|labels|lesion|lesions|gt|roi"
)
DEFAULT_SUBJECT_REGEX = rf"^(?P<subject>.+?)(?:[_-](?:{_MODALITY_WORDS}))?\.nii(?:\.gz)?$"


class PrepareError(Exception):
    """Bad input for ``proxyano-prepare``; the message names the file or folder concerned."""


@dataclass
class Volume:
    """One subject's image volume (float32), its optional lesion label volume, and how to display a slice."""

    subject: str
    source: Path
    data: np.ndarray
    label: np.ndarray | None = None
    label_source: Path | None = None
    # The path of each slice along the last axis (DICOM: one file per slice), for the manifest.
    slice_sources: Sequence[Path] | None = None
    # Turns ``data`` sliced along an axis into the image as displayed (NIfTI: anterior/superior up).
    display: Callable[[np.ndarray], np.ndarray] = field(default=np.rot90)
    # Voxel size in mm along each axis of ``data`` (NIfTI header), for ``--spacing``; None if unknown.
    spacing: tuple[float, float, float] | None = None


def _need(module: str):
    try:
        return __import__(module)
    except ImportError as error:  # pragma: no cover - depends on the environment
        msg = f"{module} is needed to read these files: pip install 'proxyano-plugin[medical]'"
        raise PrepareError(msg) from error


# ---------------------------------------------------------------------------------------------- NIfTI


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def find_files(spec: str | Path, what: str, accept: Callable[[Path], bool] = is_nifti) -> list[Path]:
    """Files named by ``spec``: a folder (its NIfTI files, not recursive) or a glob (``**`` recurses)."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        files = sorted(child for child in path.iterdir() if child.is_file() and accept(child))
        if not files:
            msg = f"{what}: no NIfTI files (.nii, .nii.gz) in folder {path}"
            raise PrepareError(msg)
        return files
    if path.is_file():
        return [path]
    if not glob.has_magic(text):
        msg = f"{what}: {path} does not exist"
        raise PrepareError(msg)
    files = sorted(Path(name) for name in glob.glob(str(Path(text).expanduser()), recursive=True))
    files = [file for file in files if file.is_file()]
    if not files:
        msg = f"{what}: the pattern {text!r} matches no file"
        raise PrepareError(msg)
    return files


def subject_of(path: Path, pattern: re.Pattern[str]) -> str:
    """The subject id of ``path``: the ``subject`` group (or the first group, or the match) of ``pattern``."""
    match = pattern.search(path.name)
    if match is None:
        msg = f"cannot tell the subject of {path}: its name does not match --subject-regex {pattern.pattern!r}"
        raise PrepareError(msg)
    if "subject" in pattern.groupindex:
        subject = match.group("subject")
    else:
        subject = match.group(1) if pattern.groups else match.group(0)
    if not subject:
        msg = f"cannot tell the subject of {path}: --subject-regex {pattern.pattern!r} matched an empty id"
        raise PrepareError(msg)
    return subject


def by_subject(files: Sequence[Path], pattern: re.Pattern[str], what: str) -> dict[str, Path]:
    """Map subject id -> file, refusing two files for one subject (one modality per run)."""
    subjects: dict[str, Path] = {}
    for file in files:
        subject = subject_of(file, pattern)
        if subject in subjects:
            msg = (
                f"{what}: {subjects[subject]} and {file} are both subject {subject!r}; pass one file per subject "
                "(one modality per run, e.g. --images '*/*_flair.nii.gz')"
            )
            raise PrepareError(msg)
        subjects[subject] = file
    return subjects


_NIFTI_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, MemoryError)


def read_nifti(path: Path, what: str = "image") -> tuple[np.ndarray, tuple[float, float, float]]:
    """The volume in ``path`` in closest-canonical (RAS+) orientation, float32, 3-D; and its voxel size (mm)."""
    nibabel = _need("nibabel")
    try:
        image = nibabel.load(str(path))
        image = nibabel.as_closest_canonical(image)
        data = np.asarray(image.get_fdata(dtype=np.float32))
        spacing = tuple(float(zoom) for zoom in image.header.get_zooms()[:3])
    except (nibabel.filebasedimages.ImageFileError, *_NIFTI_READ_ERRORS) as error:
        msg = f"cannot read {what} {path}: {type(error).__name__}: {error}"
        raise PrepareError(msg) from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        msg = (
            f"{what} {path} has shape {data.shape}; a 3-D volume is needed "
            "(for multi-channel files, split the modalities into one file each)"
        )
        raise PrepareError(msg)
    if not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    return data, spacing


def load_nifti_subject(subject: str, image: Path, label: Path | None) -> Volume:
    data, spacing = read_nifti(image, "image")
    lesion = None
    if label is not None:
        lesion, _ = read_nifti(label, "label volume")
        if lesion.shape != data.shape:
            msg = (
                f"label volume {label} has shape {lesion.shape} but its image {image} has shape {data.shape} "
                f"(subject {subject!r}); they must be on the same voxel grid"
            )
            raise PrepareError(msg)
        lesion = lesion > 0
    return Volume(subject=subject, source=image, data=data, label=lesion, label_source=label, spacing=spacing)


# ---------------------------------------------------------------------------------------------- DICOM


def _is_candidate_dicom(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.upper() != "DICOMDIR"


def find_dicom_series(root: str | Path) -> dict[str, list[Path]]:
    """Subject id (subfolder name) -> its files; ``root`` itself is one subject when it has no subfolders."""
    root = Path(root).expanduser()
    if not root.is_dir():
        msg = f"--series: {root} does not exist or is not a folder"
        raise PrepareError(msg)
    folders = sorted(child for child in root.iterdir() if child.is_dir() and not child.name.startswith("."))
    series: dict[str, list[Path]] = {}
    if folders:
        for folder in folders:
            files = sorted(file for file in folder.rglob("*") if _is_candidate_dicom(file))
            if not files:
                msg = f"--series: subject folder {folder} holds no files"
                raise PrepareError(msg)
            series[folder.name] = files
    else:
        files = sorted(file for file in root.iterdir() if _is_candidate_dicom(file))
        if not files:
            msg = f"--series: folder {root} is empty (expected one subfolder of DICOM files per subject)"
            raise PrepareError(msg)
        series[root.resolve().name] = files
    return series


def _slice_position(dataset) -> float | None:
    """Position of a slice along its normal (from ImagePositionPatient and ImageOrientationPatient)."""
    position = dataset.get("ImagePositionPatient")
    orientation = dataset.get("ImageOrientationPatient")
    if position is None or orientation is None or len(position) != 3 or len(orientation) != 6:
        return None
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    return float(np.dot(np.cross(row, column), np.asarray(position, float)))


def load_dicom_subject(subject: str, files: Sequence[Path]) -> Volume:
    """Read one series: slices sorted by position (else InstanceNumber, else name), rescale applied."""
    pydicom = _need("pydicom")
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    slices = []
    for file in files:
        try:
            dataset = pydicom.dcmread(str(file))
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as error:
            msg = f"cannot read DICOM file {file}: {type(error).__name__}: {error}"
            raise PrepareError(msg) from error
        if "PixelData" not in dataset:
            msg = f"DICOM file {file} has no pixel data"
            raise PrepareError(msg)
        if int(dataset.get("SamplesPerPixel", 1)) != 1:
            msg = f"DICOM file {file} is a colour image (SamplesPerPixel {dataset.SamplesPerPixel}); grayscale needed"
            raise PrepareError(msg)
        try:
            pixels = np.asarray(dataset.pixel_array, dtype=np.float32)
        except Exception as error:  # pixel handlers raise many types (missing decoder, truncated data, ...)
            msg = f"cannot decode the pixel data of DICOM file {file}: {type(error).__name__}: {error}"
            raise PrepareError(msg) from error
        # Stored values -> output units (Hounsfield for CT): Rescale Slope/Intercept or a Modality LUT.
        pixels = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float32)
        slices.append((file, dataset, pixels))

    series_ids = {str(dataset.get("SeriesInstanceUID", "")) for _, dataset, _ in slices}
    if len(series_ids) > 1:
        msg = f"subject {subject!r}: the folder of {slices[0][0]} holds {len(series_ids)} series; put one per folder"
        raise PrepareError(msg)

    if len(slices) == 1 and slices[0][2].ndim == 3:  # one multi-frame file: frames are the slices
        file, _, pixels = slices[0]
        data = np.ascontiguousarray(np.moveaxis(pixels, 0, -1))
        return Volume(subject, file, data, slice_sources=[file] * data.shape[2], display=_identity)

    positions = [_slice_position(dataset) for _, dataset, _ in slices]
    numbers = [dataset.get("InstanceNumber") for _, dataset, _ in slices]
    if all(position is not None for position in positions):
        order = sorted(range(len(slices)), key=lambda i: (positions[i], str(slices[i][0])))
    elif all(number is not None for number in numbers):
        order = sorted(range(len(slices)), key=lambda i: (int(numbers[i]), str(slices[i][0])))
    else:
        order = list(range(len(slices)))
    first_file, _, first = slices[order[0]]
    for i in order:
        file, _, pixels = slices[i]
        if pixels.shape != first.shape or pixels.ndim != 2:
            msg = (
                f"DICOM file {file} has pixel shape {pixels.shape} but {first_file} has {first.shape}; "
                f"subject {subject!r} must be one series of equal-sized slices"
            )
            raise PrepareError(msg)
    data = np.stack([slices[i][2] for i in order], axis=-1)
    return Volume(
        subject=subject,
        source=first_file.parent,
        data=data,
        slice_sources=[slices[i][0] for i in order],
        display=_identity,
    )


def _identity(image: np.ndarray) -> np.ndarray:
    """DICOM pixel data is stored as displayed."""
    return image
