"""Check an anomalib Folder dataset before training, with one actionable line per problem.

anomalib's own ``Folder`` (2.7) reports a missing folder as ``Path does not exist``, a missing or extra
mask as a NumPy indexing error and a misnamed mask as a generic ``MisMatchError``, none naming the image
concerned (it pairs masks with images by sorted position, then checks the names); and it only meets an
unreadable image when a data loader reaches it, mid-epoch (``OSError: image file is truncated``).
:func:`check_folder_dataset` finds all of these up front and names the file; a benchmark harness can
call it directly, and :class:`~proxyano_plugin.data.CheckedFolder` runs it before setting up.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

logger = logging.getLogger(__name__)

PathArg = str | Path | Sequence[str | Path] | None
PROBLEM_KINDS = (
    "missing_folder",  # a folder argument points nowhere
    "empty_folder",  # no image with an accepted extension (or none readable)
    "unreadable",  # an image or mask does not decode in full; skipped unless strict
    "16_bit",  # anomalib's reader would clip the values
    "unused_masks",  # mask_dir without abnormal_dir
    "mask_missing",  # an abnormal image without a mask named after it
    "mask_unpaired",  # a mask named after no abnormal image
    "mask_size",  # a mask whose size differs from its image's
    "mask_order",  # anomalib's positional pairing would differ from the pairing by name
    "missing_file",  # a file listed in a split CSV does not exist
    "bad_csv",  # a split CSV is missing, lacks a column, or has an invalid or duplicate row
)
_SHOWN = 20  # problems listed in one error or log burst before "... and N more"
_DECODE_ERRORS = (OSError, SyntaxError, ValueError)  # what PIL raises for damaged files
_16_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


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


def check_folder_dataset(
    normal_dir: PathArg,
    root: str | Path | None = None,
    abnormal_dir: PathArg = None,
    normal_test_dir: PathArg = None,
    mask_dir: PathArg = None,
    extensions: Sequence[str] | None = None,
    strict: bool = False,
    full_depth: bool = False,
) -> list[DataProblem]:
    """Check the folders, images and masks anomalib's ``Folder`` would use; return every problem found.

    Arguments mean what they mean for ``anomalib.data.Folder`` (relative folders are resolved against
    ``root``). Checks: each folder exists and holds images; every image decodes in full (unreadable ones
    are fatal with ``strict``, otherwise reported so the caller can skip them); 16-bit images (anomalib
    clips them to 0-255; not reported with ``full_depth=True``, i.e. when the datamodule's ``intensity``
    option reads them at full depth); masks pair one-to-one with abnormal images by name, in the order anomalib pairs
    them, decode, and match their image's size.
    """
    if extensions is None:
        from torchvision.datasets.folder import IMG_EXTENSIONS  # anomalib's default; a slow import, hence here

        extensions = IMG_EXTENSIONS

    suffixes = tuple(suffix.lower() for suffix in extensions)
    problems: list[DataProblem] = []
    if normal_dir is None:
        problems.append(
            DataProblem("missing_folder", Path(), "normal_dir is required: the folder of normal images", True)
        )
    listed: dict[str, list[Path]] = {}
    for role, arg in (
        ("normal_dir", normal_dir),
        ("abnormal_dir", abnormal_dir),
        ("normal_test_dir", normal_test_dir),
        ("mask_dir", mask_dir),
    ):
        listed[role] = []
        for folder in _folders(arg, root):
            files, problem = _list_images(folder, role, suffixes)
            if problem:
                problems.append(problem)
                continue
            listed[role] += files
            if role == "mask_dir":
                continue  # checked against their images below
            found = _check_images(files, role.removesuffix("_dir") + " image", strict, full_depth)
            problems += found
            if role == "normal_dir" and sum(problem.kind == "unreadable" for problem in found) == len(files):
                message = f"normal_dir {folder} holds no readable image: replace the damaged files"
                problems.append(DataProblem("empty_folder", folder, message, True))
    if mask_dir is not None and abnormal_dir is None:
        for folder in _folders(mask_dir, root):
            message = f"mask_dir {folder} is set but abnormal_dir is not: anomalib ignores the masks"
            problems.append(DataProblem("unused_masks", folder, message, False))
    elif listed["mask_dir"] and listed["abnormal_dir"]:
        problems += _check_masks(sorted(listed["abnormal_dir"]), sorted(listed["mask_dir"]))
    return problems


def _folders(arg: PathArg, root: str | Path | None) -> list[Path]:
    if arg is None:
        return []
    items = [arg] if isinstance(arg, str | Path) else list(arg)
    base = Path(root) if root is not None else Path.cwd()
    return [(base / item).resolve() for item in map(Path, items)]


def _list_images(folder: Path, role: str, suffixes: tuple[str, ...]) -> tuple[list[Path], DataProblem | None]:
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


def _decode(path: Path) -> str:
    """Decode the whole file (reading the header alone misses truncation) and return its PIL mode."""
    with Image.open(path) as image:
        image.load()
        return image.mode


def _unreadable(path: Path, role: str, error: Exception) -> str:
    return f"{role} {path} cannot be read ({error}): replace or delete it"


def _check_images(files: list[Path], role: str, strict: bool, full_depth: bool = False) -> list[DataProblem]:
    problems = []
    deep = []
    for path in files:
        try:
            mode = _decode(path)
        except _DECODE_ERRORS as error:
            message = _unreadable(path, role, error) + ("" if strict else " (skipped)")
            problems.append(DataProblem("unreadable", path, message, strict))
            continue
        if mode in _16_BIT_MODES and not full_depth:
            deep.append(path)
    if deep:
        message = (
            f"{len(deep)} {role}s are 16-bit (first: {deep[0]}); anomalib's reader clips them to 0-255: "
            "set the datamodule's intensity option (e.g. --data.intensity percentile) to read them at full depth, "
            "or rescale them to 8-bit first"
        )
        problems.append(DataProblem("16_bit", deep[0], message, False))
    return problems


def _check_masks(images: list[Path], masks: list[Path]) -> list[DataProblem]:
    """Pair masks with images by name, then check that anomalib's pairing (by sorted position) agrees."""
    problems = []
    by_stem = {mask.stem: mask for mask in masks}
    pairs: dict[Path, Path] = {}
    for image in images:
        mask = by_stem.get(image.stem) or _named_after(image, masks)
        if mask is None:
            folders = ", ".join(sorted({str(mask.parent) for mask in masks}))
            message = f"abnormal image {image} has no mask named after it in {folders}: add {image.stem}{image.suffix}"
            problems.append(DataProblem("mask_missing", image, message, True))
            continue
        pairs[image] = mask
        try:
            _decode(mask)
        except _DECODE_ERRORS as error:
            problems.append(DataProblem("unreadable", mask, _unreadable(mask, "mask", error), True))
            continue
        with Image.open(image) as picture, Image.open(mask) as annotation:
            if picture.size != annotation.size:
                message = f"mask {mask} is {annotation.size[0]}x{annotation.size[1]} but its image {image} is "
                message += f"{picture.size[0]}x{picture.size[1]}: resize the mask"
                problems.append(DataProblem("mask_size", mask, message, True))
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


def _named_after(image: Path, masks: Iterable[Path]) -> Path | None:
    """The one mask whose name contains the image's stem as a whole word (e.g. ``000_mask`` for ``000``)."""
    word = re.compile(rf"(?<![0-9A-Za-z]){re.escape(image.stem)}(?![0-9A-Za-z])")
    matches = [mask for mask in masks if word.search(mask.stem)]
    return matches[0] if len(matches) == 1 else None
