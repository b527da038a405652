"""Check an anomalib Folder dataset before training, with one actionable line per problem.

anomalib's own ``Folder`` (2.7) reports a missing folder as ``Path does not exist``, a missing or extra
mask as a NumPy indexing error and a misnamed mask as a generic ``MisMatchError``, none naming the image
concerned (it pairs masks with images by sorted position, then checks the names); and it only meets an
unreadable image when a data loader reaches it, mid-epoch (``OSError: image file is truncated``).
:func:`check_folder_dataset` finds all of these up front and names the file; a benchmark harness can
call it directly, and :class:`~proxyano_plugin.data.CheckedFolder` runs it before setting up.
:func:`inspect_images` does the per-image part (decoding, NaN/inf, mixed sizes and channels, the summary
of counts, sizes, channels and intensity range) for any list of files, e.g. those of a split CSV.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

PathArg = str | Path | Sequence[str | Path] | None
PROBLEM_KINDS = (
    "missing_folder",  # a folder argument points nowhere
    "empty_folder",  # no image with an accepted extension (or none readable)
    "unreadable",  # an image or mask does not decode in full; skipped unless strict
    "non_finite",  # a float image holds NaN or infinite values; skipped unless strict
    "16_bit",  # anomalib's reader would clip the values
    "alpha",  # anomalib's RGB conversion drops the transparency channel
    "mixed_sizes",  # the images do not all have one size (anomalib resizes them all to the model's input)
    "mixed_channels",  # grayscale and colour images are mixed (anomalib converts every image to RGB)
    "no_masks",  # pixel metrics are requested but abnormal images have no masks
    "unused_masks",  # mask_dir without abnormal_dir
    "mask_missing",  # an abnormal image without a mask named after it
    "mask_unpaired",  # a mask named after no abnormal image
    "mask_size",  # a mask whose size differs from its image's
    "mask_order",  # anomalib's positional pairing would differ from the pairing by name
    "missing_file",  # a file listed in a split CSV does not exist
    "outside_root",  # a file listed in a split CSV links outside its root (anomalib refuses to read it)
    "bad_csv",  # a split CSV is missing, lacks a column, or has an invalid or duplicate row
)
SKIPPED_KINDS = ("unreadable", "non_finite")
"""Problems whose file a datamodule leaves out (unless ``strict``, which makes them fatal)."""
_SHOWN = 20  # problems listed in one error or log burst before "... and N more"
_DECODE_ERRORS = (OSError, SyntaxError, ValueError)  # what PIL raises for damaged files
_16_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_GRAY_MODES = {"1", "L", "LA", "F", *_16_BIT_MODES}
# Warnings given once per group of images, naming the first file concerned.
_ONCE_PER_GROUP = {
    "16_bit": (
        "{count} {role}s are 16-bit (first: {first}); anomalib's reader clips them to 0-255: set the datamodule's "
        "intensity option (e.g. --data.intensity percentile) to read them at full depth, or rescale them to 8-bit "
        "first"
    ),
    "alpha": (
        "{count} {role}s have an alpha channel (first: {first}); anomalib's reader drops it, so transparent pixels "
        "count with the colour they store: flatten them onto a background first if that is not what they show"
    ),
}  # anomalib's RGB conversion replicates these


@dataclass(frozen=True)
class DataProblem:
    """One problem with a dataset, with a one-line message that names the offending file or folder."""

    kind: str
    """Machine-readable category, one of :data:`PROBLEM_KINDS`."""
    path: Path
    message: str
    fatal: bool
    """``True`` when training cannot go on; ``False`` for problems worked around (e.g. a skipped file)."""

    def __str__(self) -> str:
        return self.message


class DatasetError(ValueError):
    """A dataset cannot be used as given; the message has one line per problem."""

    def __init__(self, problems: Sequence[DataProblem]) -> None:
        self.problems = list(problems)
        super().__init__(_summarise(self.problems))


def report_problems(problems: Iterable[DataProblem], log: logging.Logger = logger) -> None:
    """Log non-fatal problems as warnings, then raise :class:`DatasetError` if any problem is fatal."""
    problems = list(problems)
    warnings = [problem for problem in problems if not problem.fatal]
    for line in _summarise(warnings).splitlines():
        log.warning(line)
    fatal = [problem for problem in problems if problem.fatal]
    if fatal:
        raise DatasetError(fatal)


def _summarise(problems: Sequence[DataProblem]) -> str:
    lines = [str(problem) for problem in problems[:_SHOWN]]
    if len(problems) > _SHOWN:
        lines.append(f"... and {len(problems) - _SHOWN} more")
    return "\n".join(lines)


@dataclass(frozen=True)
class ImageInfo:
    """What decoding one image told: its size, PIL mode and range of stored values."""

    size: tuple[int, int]
    mode: str
    low: float
    high: float
    non_finite: int = 0
    """NaN or infinite values (float images only); ``low``/``high`` are those of the finite values."""


@dataclass
class GroupSummary:
    """Readable images in one group (e.g. ``normal_dir``) and the range of their stored values."""

    images: int = 0
    low: float = math.inf
    high: float = -math.inf

    def add(self, info: ImageInfo) -> None:
        self.images += 1
        self.low, self.high = min(self.low, info.low), max(self.high, info.high)


@dataclass
class DatasetSummary:
    """What a check saw, for the user to compare with what they expect: counts, sizes, channels, intensities."""

    groups: dict[str, GroupSummary] = field(default_factory=dict)
    sizes: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)
    masks: int = 0
    skipped: int = 0

    def text(self) -> str:
        """A few lines: images per group, sizes, channels (PIL modes) and the stored value range per group."""
        counts = ", ".join(f"{name} {group.images}" for name, group in self.groups.items())
        head = f"dataset: {counts} readable images"
        head += f", {self.masks} masks" if self.masks else ""
        head += f" ({self.skipped} skipped, see the warnings)" if self.skipped else ""
        ranges = [f"{name} {group.low:g} to {group.high:g}" for name, group in self.groups.items() if group.images]
        return "\n".join(
            [
                head,
                "  sizes:     " + _counted(self.sizes, lambda size: f"{size[0]}x{size[1]}"),
                "  channels:  " + _counted(self.modes, lambda mode: f"{mode} ({_kind_of(mode)})"),
                "  intensity: " + (", ".join(ranges) or "-") + " (stored values, before any intensity option)",
            ]
        )


def _counted(counter: Counter, name: Callable[[Any], str]) -> str:
    items = counter.most_common()
    text = ", ".join(f"{name(key)} x{count}" for key, count in items[:5])
    return (text + (f", and {len(items) - 5} more" if len(items) > 5 else "")) or "-"


def _kind_of(mode: str) -> str:
    return "grayscale" if mode in _GRAY_MODES else "colour"


def check_folder_dataset(*args: Any, **kwargs: Any) -> list[DataProblem]:
    """The problems :func:`inspect_folder_dataset` finds (same arguments), without its summary."""
    problems, _ = inspect_folder_dataset(*args, **kwargs)
    return problems


def inspect_folder_dataset(
    normal_dir: PathArg,
    root: str | Path | None = None,
    abnormal_dir: PathArg = None,
    normal_test_dir: PathArg = None,
    mask_dir: PathArg = None,
    extensions: Sequence[str] | None = None,
    strict: bool = False,
    full_depth: bool = False,
    pixel_metrics: bool = False,
) -> tuple[list[DataProblem], DatasetSummary]:
    """Check the folders, images and masks anomalib's ``Folder`` would use; return the problems and a summary.

    Arguments mean what they mean for ``anomalib.data.Folder`` (relative folders are resolved against
    ``root``). Checks: each folder exists and holds images; every image decodes in full and float images
    hold no NaN or infinite value (such files are fatal with ``strict``, otherwise reported so the caller
    can skip them); 16-bit images (anomalib clips them to 0-255; not reported with ``full_depth=True``,
    i.e. when the datamodule's ``intensity`` option reads them at full depth); images of mixed sizes, or
    grayscale mixed with colour (warnings); masks pair one-to-one with abnormal images by name, in the order
    anomalib pairs them, decode, and match their image's size; with ``pixel_metrics=True``, abnormal images
    have masks at all.
    """
    suffixes = image_suffixes(extensions)
    problems: list[DataProblem] = []
    if normal_dir is None:
        problems.append(
            DataProblem("missing_folder", Path(), "normal_dir is required: the folder of normal images", True)
        )
    listed: dict[str, list[Path]] = {}
    by_folder: dict[Path, list[Path]] = {}
    for role, arg in (
        ("normal_dir", normal_dir),
        ("abnormal_dir", abnormal_dir),
        ("normal_test_dir", normal_test_dir),
        ("mask_dir", mask_dir),
    ):
        listed[role] = []
        for folder in _folders(arg, root):
            files, problem = list_images(folder, role, suffixes)
            if problem:
                problems.append(problem)
                continue
            listed[role] += files
            by_folder[folder] = files
    groups = {role: files for role, files in listed.items() if role != "mask_dir" and files}
    found, summary, infos = inspect_images(groups, strict, full_depth)
    problems += found
    skipped = {problem.path for problem in found if problem.kind in SKIPPED_KINDS}
    for folder in _folders(normal_dir, root):
        if by_folder.get(folder) and all(path in skipped for path in by_folder[folder]):
            message = f"normal_dir {folder} holds no readable image: replace the damaged files"
            problems.append(DataProblem("empty_folder", folder, message, True))
    summary.masks = len(listed["mask_dir"])
    if mask_dir is not None and abnormal_dir is None:
        for folder in _folders(mask_dir, root):
            message = f"mask_dir {folder} is set but abnormal_dir is not: anomalib ignores the masks"
            problems.append(DataProblem("unused_masks", folder, message, False))
    elif listed["mask_dir"] and listed["abnormal_dir"]:
        problems += _check_masks(sorted(listed["abnormal_dir"]), sorted(listed["mask_dir"]), infos)
    elif pixel_metrics and mask_dir is None and listed["abnormal_dir"]:
        folders = ", ".join(map(str, _folders(abnormal_dir, root)))
        message = (
            f"pixel metrics are requested but the {len(listed['abnormal_dir'])} abnormal images in {folders} have "
            "no masks (mask_dir is not set): set mask_dir, or pixel_metrics=False for image-level metrics only"
        )
        problems.append(DataProblem("no_masks", _folders(abnormal_dir, root)[0], message, True))
    return problems, summary


def image_suffixes(extensions: Sequence[str] | None = None) -> tuple[str, ...]:
    """The lower-case file suffixes read as images: ``extensions``, or anomalib's default (torchvision's list)."""
    if extensions is None:
        from torchvision.datasets.folder import IMG_EXTENSIONS  # anomalib's default; a slow import, hence here

        extensions = IMG_EXTENSIONS
    return tuple(suffix.lower() for suffix in extensions)


def _folders(arg: PathArg, root: str | Path | None) -> list[Path]:
    if arg is None:
        return []
    items = [arg] if isinstance(arg, str | Path) else list(arg)
    base = Path(root) if root is not None else Path.cwd()
    return [(base / item).resolve() for item in map(Path, items)]


def list_images(folder: Path, role: str, suffixes: tuple[str, ...]) -> tuple[list[Path], DataProblem | None]:
    """List images under ``folder`` recursively, as anomalib does; report a missing or empty folder."""
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        message = f"{role} {folder} {what}: check the path (relative paths are joined to root)"
        return [], DataProblem("missing_folder", folder, message, True)
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in suffixes and path.is_file())
    if not files:
        message = f"{role} {folder} holds no images with extensions {', '.join(suffixes)}: add images or fix the path"
        return [], DataProblem("empty_folder", folder, message, True)
    return files, None


def decode(path: Path) -> ImageInfo:
    """Decode the whole file (reading the header alone misses truncation); raise PIL's error if it is damaged."""
    with Image.open(path) as image:
        image.load()
        if image.mode == "F":  # float TIFF: the only PIL mode that can hold NaN or infinity
            values = np.asarray(image)
            finite = values[np.isfinite(values)]
            low, high = (float(finite.min()), float(finite.max())) if finite.size else (math.nan, math.nan)
            return ImageInfo(image.size, image.mode, low, high, int(values.size - finite.size))
        extrema = image.getextrema()
        if image.getbands() and len(image.getbands()) > 1:  # one (min, max) per band; alpha is not intensity
            extrema = [band for name, band in zip(image.getbands(), extrema, strict=True) if name != "A"]
            low, high = min(band[0] for band in extrema), max(band[1] for band in extrema)
        else:
            low, high = extrema
        return ImageInfo(image.size, image.mode, float(low), float(high))


def _unreadable(path: Path, role: str, error: Exception) -> str:
    return f"{role} {path} cannot be read ({error}): replace or delete it"


def _skippable(kind: str, path: Path, message: str, strict: bool) -> DataProblem:
    return DataProblem(kind, path, message + ("" if strict else " (skipped)"), strict)


def inspect_images(
    groups: Mapping[str, Sequence[Path]], strict: bool = False, full_depth: bool = False
) -> tuple[list[DataProblem], DatasetSummary, dict[Path, ImageInfo]]:
    """Decode every image of every group (e.g. ``{"normal_dir": [...], "abnormal_dir": [...]}``).

    Returns the problems (unreadable or non-finite files, skippable unless ``strict``; 16-bit files once per
    group unless ``full_depth``; files with an alpha channel once per group; mixed sizes and mixed
    grayscale/colour across all groups, as warnings), the summary, and what was learnt of each readable file.
    """
    problems: list[DataProblem] = []
    summary = DatasetSummary()
    infos: dict[Path, ImageInfo] = {}
    for group, files in groups.items():
        role = f"{group.removesuffix('_dir')} image"
        counts = summary.groups.setdefault(group, GroupSummary())
        flagged: dict[str, list[Path]] = {kind: [] for kind in _ONCE_PER_GROUP}
        for path in files:
            try:
                info = decode(path)
            except _DECODE_ERRORS as error:
                problems.append(_skippable("unreadable", path, _unreadable(path, role, error), strict))
                continue
            if info.non_finite:
                message = (
                    f"{role} {path} holds {info.non_finite} NaN or infinite value(s): "
                    "replace them (e.g. with 0) or delete the file"
                )
                problems.append(_skippable("non_finite", path, message, strict))
                continue
            infos[path] = info
            counts.add(info)
            summary.sizes[info.size] += 1
            summary.modes[info.mode] += 1
            if info.mode in _16_BIT_MODES and not full_depth:
                flagged["16_bit"].append(path)
            if info.mode in _ALPHA_MODES:
                flagged["alpha"].append(path)
        for kind, paths in flagged.items():
            if paths:
                message = _ONCE_PER_GROUP[kind].format(count=len(paths), role=role, first=paths[0])
                problems.append(DataProblem(kind, paths[0], message, False))
    summary.skipped = sum(problem.kind in SKIPPED_KINDS for problem in problems)
    return problems + _mixed(infos), summary, infos


def _mixed(infos: Mapping[Path, ImageInfo]) -> list[DataProblem]:
    """One warning for images of several sizes, one for grayscale mixed with colour; each names example files."""
    problems = []
    by_size: dict[tuple[int, int], list[Path]] = {}
    for path, info in infos.items():
        by_size.setdefault(info.size, []).append(path)
    if len(by_size) > 1:
        sizes = sorted(by_size.items(), key=lambda item: -len(item[1]))
        listed = "; ".join(f"{w}x{h}: {len(paths)}, e.g. {paths[0]}" for (w, h), paths in sizes[:3])
        listed += f"; and {len(sizes) - 3} more sizes" if len(sizes) > 3 else ""
        message = (
            f"images come in {len(sizes)} sizes ({listed}): anomalib resizes each to the model's input size, "
            "stretching other aspect ratios; crop or pad them to one size if they should match"
        )
        problems.append(DataProblem("mixed_sizes", sizes[-1][1][0], message, False))
    gray = [path for path, info in infos.items() if info.mode in _GRAY_MODES]
    colour = [path for path, info in infos.items() if info.mode not in _GRAY_MODES]
    if gray and colour:
        fewer = min(gray, colour, key=len)
        message = (
            f"{len(gray)} grayscale and {len(colour)} colour images are mixed (first grayscale: {gray[0]}; first "
            f"colour: {colour[0]}): anomalib reads every image as RGB, and a model with in_channels 1 averages "
            "the colour channels; convert them all to one kind"
        )
        problems.append(DataProblem("mixed_channels", fewer[0], message, False))
    return problems


def check_mask(image: Path, mask: Path, image_info: ImageInfo | None) -> DataProblem | None:
    """Decode ``mask`` and compare its size with its image's (skipped if the image was unreadable)."""
    try:
        mask_info = decode(mask)
    except _DECODE_ERRORS as error:
        return DataProblem("unreadable", mask, _unreadable(mask, "mask", error), True)
    if image_info is not None and image_info.size != mask_info.size:
        (mw, mh), (iw, ih) = mask_info.size, image_info.size
        message = f"mask {mask} is {mw}x{mh} but its image {image} is {iw}x{ih}: resize the mask"
        return DataProblem("mask_size", mask, message, True)
    return None


def _check_masks(images: list[Path], masks: list[Path], infos: Mapping[Path, ImageInfo]) -> list[DataProblem]:
    """Pair masks with images by name, then check that anomalib's pairing (by sorted position) agrees."""
    problems = []
    by_stem = {mask.stem: mask for mask in masks}
    pairs: dict[Path, Path] = {}
    for image in images:
        mask = by_stem.get(image.stem) or mask_named_after(image, masks)
        if mask is None:
            folders = ", ".join(sorted({str(mask.parent) for mask in masks}))
            message = f"abnormal image {image} has no mask named after it in {folders}: add {image.stem}{image.suffix}"
            problems.append(DataProblem("mask_missing", image, message, True))
            continue
        pairs[image] = mask
        problem = check_mask(image, mask, infos.get(image))
        if problem:
            problems.append(problem)
    for mask in sorted(set(masks) - set(pairs.values())):
        message = f"mask {mask} matches no abnormal image (anomalib pairs masks by position): delete or rename it"
        problems.append(DataProblem("mask_unpaired", mask, message, True))
    if not problems:  # sorted(Path) is the order anomalib sorts its sample table in
        for image, mask in zip(images, masks, strict=True):
            if pairs[image] != mask:
                message = f"anomalib would pair image {image} with mask {mask}: name each mask exactly like its image"
                problems.append(DataProblem("mask_order", image, message, True))
                break
    return problems


def mask_named_after(image: Path, masks: Iterable[Path]) -> Path | None:
    """The one mask whose name contains the image's stem as a whole word (e.g. ``000_mask`` for ``000``)."""
    matches = [mask for mask in masks if names_stem(mask.stem, image.stem)]
    return matches[0] if len(matches) == 1 else None


def names_stem(name: str, stem: str) -> bool:
    """Whether ``name`` contains ``stem`` as a whole word: ``IDRiD_01_MA`` names ``IDRiD_01``, not ``IDRiD_0``."""
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(stem)}(?![0-9A-Za-z])", name) is not None
