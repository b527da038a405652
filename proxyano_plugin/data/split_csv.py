"""SplitCSV: an anomalib datamodule for image folders whose train/test split is given by a CSV file.

Benchmarks such as MedIAnomaly's ship one image folder and several split files instead of anomalib's
folder-per-split layout; re-copying the images for every split would be wasteful and error-prone.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.datasets.image.tabular import TabularDataset
from anomalib.data.utils import Split, TestSplitMode, ValSplitMode
from torchvision.transforms.v2 import Transform

from proxyano_plugin.data.demo_generator import default_cache_root
from proxyano_plugin.data.intensity import FullDepthDataset, check_intensity, check_split_modes
from proxyano_plugin.data.item_cache import ItemCache
from proxyano_plugin.data.lesions import APPEARANCES, DEFAULT_LESION_AREA
from proxyano_plugin.data.synthetic_validation import (
    hold_out,
    lesion_validation_dir,
    materialise_lesion_validation,
    near_duplicate_groups,
)
from proxyano_plugin.data.validation import (
    SKIPPED_KINDS,
    DataProblem,
    DatasetError,
    DatasetSummary,
    check_mask,
    inspect_images,
    report_problems,
)

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("file", "label", "split")
_LABELS = {"0": 0, "1": 1}
_SPLITS = {"train": Split.TRAIN.value, "test": Split.TEST.value}


def resolve_split_csv(root: str | Path, split_csv: str | Path) -> Path:
    """Find the split file: ``split_csv`` as given, else under ``root/splits`` (``.csv`` optional), else ``root``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        message = f"dataset root {root} does not exist or is not a folder: pass the folder the CSV paths start from"
        raise DatasetError([DataProblem("missing_folder", root, message, True)])
    name = Path(split_csv).expanduser()
    candidates = [name, root / "splits" / name, root / "splits" / f"{name}.csv", root / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    available = sorted(path.name for path in (root / "splits").glob("*.csv"))
    message = f"split CSV {split_csv!s} not found (tried {', '.join(map(str, dict.fromkeys(candidates)))})"
    message += f"; available in {root / 'splits'}: {', '.join(available)}" if available else ""
    raise DatasetError([DataProblem("bad_csv", name, message, True)])


Entry = tuple[str, str, str, str, str]  # where (e.g. "line 3"), file, label, split, mask


def read_split_csv(root: str | Path, split_csv: str | Path) -> pd.DataFrame:
    """Read and check a split CSV (or a MedIAnomaly ``data.json``); return anomalib's sample table.

    Columns: ``file`` (relative to ``root``), ``label`` (0 normal, 1 abnormal), ``split`` (``train`` or
    ``test``), optionally ``mask`` (relative path of the pixel mask of abnormal images); others are
    ignored. A ``.json`` file is read as MedIAnomaly's split file (:func:`medianomaly_entries`). Every
    problem is reported with the CSV line (or JSON entry) it is on, up to 20 in one
    :class:`~proxyano_plugin.data.validation.DatasetError`. Paths in the table are relative to ``root``.
    """
    root = Path(root).expanduser().resolve()
    path = resolve_split_csv(root, split_csv)
    entries, has_masks = medianomaly_entries(path) if path.suffix.lower() == ".json" else _csv_entries(path)
    problems: list[DataProblem] = []

    def bad(where: str, text: str, kind: str = "bad_csv") -> None:
        problems.append(DataProblem(kind, path, f"{path} {where}: {text}", True))

    rows = []
    first: dict[str, str] = {}
    for where, file, label, split, mask in entries:
        if label not in _LABELS:
            bad(where, f"label {label!r} must be 0 (normal) or 1 (abnormal)")
        elif split not in _SPLITS:
            bad(where, f"split {split!r} must be one of {', '.join(_SPLITS)}")
        elif split == "train" and label == "1":
            bad(where, f"{file} is abnormal (label 1) but in the train split: train on normal images only")
        elif file in first:
            bad(where, f"{file} is listed twice (first on {first[file]})")
        elif not (root / file).is_file():
            bad(where, f"file {file} not found under {root}", "missing_file")
        elif mask and not (root / mask).is_file():
            bad(where, f"mask {mask} not found under {root}", "missing_file")
        elif outside := next(filter(None, (_outside_root(root, name) for name in (file, mask) if name)), None):
            bad(where, outside, "outside_root")
        elif has_masks and label == "1" and not mask:
            bad(where, f"abnormal image {file} has no mask while other rows have: give every abnormal row one")
        first.setdefault(file, where)
        rows.append({"image_path": file, "label_index": _LABELS.get(label), "split": split, "mask_path": mask})
    for split, what in (("train", "normal training"), ("test", "test")):
        if not problems and not any(row["split"] == split for row in rows):
            problems.append(DataProblem("bad_csv", path, f"{path}: no {what} images (split == {split})", True))
    if problems:
        raise DatasetError(problems)
    samples = pd.DataFrame(rows, columns=["image_path", "label_index", "split", "mask_path"])
    # object, not pandas 3's default str dtype: anomalib writes Path objects into mask_path.
    return samples.astype({"label_index": "Int64", "mask_path": object})


def _outside_root(root: Path, name: str) -> str | None:
    """Why ``root / name`` cannot be read, if it is a link to outside ``root`` (anomalib refuses those)."""
    real = (root / name).resolve()
    if real.is_relative_to(root):
        return None
    common = Path(os.path.commonpath([root, real]))
    return (
        f"{name} is a link to {real}, outside root {root}, and anomalib reads only files under its root: "
        f"copy the files into {root}, or set root to {common} (a folder above both) with paths relative to it"
    )


def _csv_entries(path: Path) -> tuple[list[Entry], bool]:
    """The rows of a split CSV, each with its line number; and whether the CSV has a ``mask`` column."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            message = f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(reader.fieldnames or [])}"
            raise DatasetError([DataProblem("bad_csv", path, message, True)])
        entries = [
            (
                f"line {reader.line_num}",
                *(row[column].strip() for column in REQUIRED_COLUMNS),
                (row.get("mask") or "").strip(),
            )
            for row in reader
        ]
        return entries, "mask" in reader.fieldnames


MEDIANOMALY_LISTS = (("train", "0"), ("test", "0"), ("test", "1"))


def medianomaly_entries(path: Path) -> tuple[list[Entry], bool]:
    """The images of a MedIAnomaly ``data.json``: ``train/0`` normal training, ``test/0`` and ``test/1``.

    MedIAnomaly's preprocessed releases (RSNA, VinCXR, BrainTumor, LAG) put every image in ``images/``
    and list names relative to it, by split and label; ``train/unlabeled`` (for semi-supervised methods)
    is ignored. No masks.
    """
    try:
        data = json.loads(path.read_text())
        lists = [(split, label, data[split][label]) for split, label in MEDIANOMALY_LISTS]
    except (OSError, ValueError, KeyError, TypeError) as error:
        message = (
            f"{path} is not a MedIAnomaly split file ({type(error).__name__}: {error}): it must hold "
            'lists "train": {"0": [...]} and "test": {"0": [...], "1": [...]} of file names under images/'
        )
        raise DatasetError([DataProblem("bad_csv", path, message, True)]) from error
    entries = []
    for split, label, names in lists:
        for index, name in enumerate(names if isinstance(names, list) else [names]):
            entries.append((f"entry {split}/{label}[{index}]", f"images/{name}", label, split, ""))
    return entries, False


def inspect_samples(
    root: Path,
    samples: pd.DataFrame,
    where: Path,
    strict: bool = False,
    full_depth: bool = False,
    pixel_metrics: bool = False,
) -> tuple[list[DataProblem], DatasetSummary]:
    """Decode the images and masks of a sample table (from :func:`read_split_csv`), as CheckedFolder does.

    Groups are ``train normal``, ``test normal`` and ``test abnormal``; see
    :func:`~proxyano_plugin.data.validation.inspect_images` for the checks. Masks must decode and match
    their image's size; with ``pixel_metrics``, abnormal test images without a mask are an error.
    """
    groups = {}
    for name, selected in (
        ("train normal", samples.split == "train"),
        ("test normal", (samples.split == "test") & (samples.label_index == 0)),
        ("test abnormal", (samples.split == "test") & (samples.label_index == 1)),
    ):
        groups[name] = [root / file for file in samples.image_path[selected]]
    problems, summary, infos = inspect_images(groups, strict, full_depth)
    masked = samples[samples.mask_path != ""]
    summary.masks = len(masked)
    for file, mask in zip(masked.image_path, masked.mask_path, strict=True):
        problem = check_mask(root / file, root / mask, infos.get(root / file))
        if problem:
            problems.append(problem)
    unmasked = [root / file for file in samples.image_path[(samples.label_index == 1) & (samples.mask_path == "")]]
    if pixel_metrics and unmasked:
        message = (
            f"pixel metrics are requested but the {len(unmasked)} abnormal test images of {where} have no masks "
            f"(first: {unmasked[0]}): add a mask column, or set pixel_metrics=False for image-level metrics only"
        )
        problems.append(DataProblem("no_masks", unmasked[0], message, True))
    return problems, summary


class FullDepthTabularDataset(FullDepthDataset, TabularDataset):
    """anomalib's ``TabularDataset``, reading its images at full bit depth (see :class:`FullDepthDataset`)."""


class CachedTabularDataset(ItemCache, TabularDataset):
    """anomalib's ``TabularDataset``, keeping the items it has read (see :class:`ItemCache`)."""


class SplitCSV(AnomalibDataModule):
    """Images under ``root``, labelled and split by a CSV file (image-level labels, optional masks).

    Before setup the images are decoded and checked once, like ``CheckedFolder``'s: unreadable or
    non-finite images are logged and left out (an error with ``strict``), masks must match their images'
    sizes, and a summary (counts, sizes, channels, intensity range) is logged at INFO level.
    Training and label-free validation items are read once and then served from memory (up to 2 GiB each,
    see :class:`~proxyano_plugin.data.item_cache.ItemCache`): at 64 px reading them again each epoch costs
    as much as training a small network on them.

    For example ``brain_tumor_mri/splits/medianomaly.csv``::

        file,label,split,class
        normal/Te-noTr_0000.png,0,train,notumor
        abnormal/Tr-gl_0001.png,1,test,glioma

    Validation images are drawn from the test images (``val_split_mode``), so they include anomalies.

    Args:
        root: dataset folder; ``file`` entries are relative to it.
        split_csv: the split file: a path, or a name looked up in ``root/splits`` (``.csv`` optional),
            e.g. ``medianomaly``; or a MedIAnomaly ``data.json`` (``split_csv: data.json``, see
            :func:`medianomaly_entries`).
        name: dataset name for logs and result folders; defaults to the name of ``root``. The CSV's stem
            becomes the ``category``, so results of different splits land in different folders.
        train_batch_size: training batch size.
        eval_batch_size: validation and test batch size.
        num_workers: data-loading workers.
        train_augmentations: augmentations of training images.
        val_augmentations: augmentations of validation images.
        test_augmentations: augmentations of test images.
        augmentations: augmentations for every subset without its own.
        val_split_mode: how the validation set is made: anomalib's ``ValSplitMode`` values, or ``"lesions"``:
            a label-free validation set, held-out normal *training* images with synthetic lesions painted into
            half of them (:mod:`~proxyano_plugin.data.synthetic_validation`), so that epochs and checkpoints
            are chosen without touching the test split. Models that support it (ProxyAno) keep the weights
            of their best validation epoch on such a set.
        val_split_ratio: share of the test images moved to validation; with ``"lesions"``, the share of
            training groups (``val_group_column``) or images held out.
        val_group_column: with ``"lesions"``: a split-CSV column (e.g. ``patient``) whose groups are held
            out whole, so that no validation patient is also trained on; ``None`` holds out single images.
        val_group_near_duplicates: with ``"lesions"``: a distance in grey levels (of 255, RMS over 32 x 32
            thumbnails; 3 is a good start) under which two training images, or one and the other's left-right
            mirror image, are held out together (:func:`.synthetic_validation.near_duplicate_groups`), merged
            with ``val_group_column``'s groups. brain_tumor_mri has mirrored copies of many slices: held out
            alone, a slice whose twin stays in training does not measure generalisation. ``None``: no grouping.
        val_lesion_appearance: with ``"lesions"``: ``"t1ce"`` (dark oedema, enhancing tumour) or ``"flair"``
            (hyperintense lesions), the look of the painted lesions.
        val_lesion_area: with ``"lesions"``: ``[low, high]``, the painted lesions' area as a share of the head
            (default ``[0.01, 0.08]``, the BrainMRIDemo's). Set it to the size of the anomalies the model is
            meant to find: a set chosen on small lesions picks the epoch and score that find small lesions.
        val_lesion_pairs: with ``"lesions"``: every held-out image that can host a lesion appears twice, clean
            and painted (held-out slices too small for a lesion are left out), instead of half of them painted.
            Both classes then hold the same slices, so only the lesions separate them: the selection does not
            reward slice statistics (head size, brightness) that differ between the halves by chance.
        val_cache_dir: with ``"lesions"``: where the painted set is kept (default: ``<cache>/lesion_validation``,
            beside the BrainMRIDemo cache); it is painted once per training split and setting.
        seed: seed of the validation split.
        intensity: ``None`` (default) reads images as anomalib does, as 8-bit RGB, which clips 16-bit
            values; ``"minmax"``, ``"percentile"`` (0.5th-99.5th, clipped) or ``"window"`` read them at
            full depth and map them to [0, 1] per image, or with ``intensity_window``
            (:func:`~proxyano_plugin.data.intensity.read_full_depth`).
        intensity_window: ``[low, high]`` in the images' raw units, for ``intensity="window"``.
        strict: raise on unreadable or non-finite images instead of skipping them.
        pixel_metrics: the evaluation needs pixel masks: abnormal test images without masks are an error.
    """

    def __init__(
        self,
        root: str | Path,
        split_csv: str | Path,
        name: str | None = None,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        val_split_mode: ValSplitMode | str = ValSplitMode.FROM_TEST,
        val_split_ratio: float = 0.5,
        seed: int | None = None,
        intensity: str | None = None,
        intensity_window: list[float] | None = None,
        strict: bool = False,
        pixel_metrics: bool = False,
        val_group_column: str | None = None,
        val_group_near_duplicates: float | None = None,
        val_lesion_appearance: str = "t1ce",
        val_lesion_area: Sequence[float] | None = None,
        val_lesion_pairs: bool = False,
        val_cache_dir: str | Path | None = None,
    ) -> None:
        window = check_intensity(intensity, intensity_window)
        self.label_free_validation = str(getattr(val_split_mode, "value", val_split_mode)) == LESION_VALIDATION
        if self.label_free_validation:
            check_lesion_validation(
                intensity, val_split_ratio, val_lesion_appearance, val_lesion_area, val_group_near_duplicates
            )
            val_split_mode = ValSplitMode.NONE  # made in _setup, from the training rows
        else:
            for option, value in (
                ("val_lesion_pairs", val_lesion_pairs),
                ("val_group_near_duplicates", val_group_near_duplicates),
            ):
                if value not in (None, False):
                    msg = f"{option} needs val_split_mode='lesions', got {val_split_mode!r}"
                    raise ValueError(msg)
        check_split_modes(intensity, val_split_mode)
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode=TestSplitMode.FROM_DIR,
            val_split_mode=ValSplitMode(val_split_mode),
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        self.root = Path(root).expanduser().resolve()
        self.split_csv = resolve_split_csv(self.root, split_csv)
        self._name = name or self.root.name
        self.category = self.split_csv.stem
        self.intensity = intensity
        self.intensity_window = window
        self.strict = strict
        self.pixel_metrics = pixel_metrics
        # What the image check found (None until setup): kept so that it runs, and reports, only once.
        self.problems: list[DataProblem] | None = None
        self.summary: DatasetSummary | None = None
        self.val_group_column = val_group_column
        self.val_group_near_duplicates = val_group_near_duplicates
        self.val_lesion_appearance = val_lesion_appearance
        self.val_lesion_area = None if val_lesion_area is None else tuple(float(value) for value in val_lesion_area)
        self.val_lesion_pairs = val_lesion_pairs
        self.val_cache_dir = val_cache_dir

    @property
    def name(self) -> str:
        """Dataset name (defaults to the name of ``root``)."""
        return self._name

    def _setup(self, _stage: str | None = None) -> None:
        samples = read_split_csv(self.root, self.split_csv)
        if self.problems is None:
            problems, summary = inspect_samples(
                self.root, samples, self.split_csv, self.strict, self.intensity is not None, self.pixel_metrics
            )
            report_problems(problems, logger)
            logger.info(summary.text())
            self.problems, self.summary = problems, summary
        skipped = {str(problem.path) for problem in self.problems if problem.kind in SKIPPED_KINDS}
        if skipped:
            kept = ~samples.image_path.map(lambda file: str(self.root / file)).isin(skipped)
            samples = samples[kept].reset_index(drop=True)
        if self.label_free_validation:
            samples = self._split_off_lesion_validation(samples)
        self.train_data, self.test_data = (
            TabularDataset(name=self.name, samples=samples, split=split, root=self.root)
            for split in (Split.TRAIN, Split.TEST)
        )
        if self.intensity is not None:  # before the splits, which copy these datasets
            self.train_data, self.test_data = (
                FullDepthTabularDataset.adopt(dataset, self.intensity, self.intensity_window)
                for dataset in (self.train_data, self.test_data)
            )
        else:  # read every epoch: kept in memory after the first
            self.train_data = CachedTabularDataset.adopt(self.train_data)
            if self.label_free_validation:
                self.val_data = CachedTabularDataset.adopt(self.val_data)

    def _split_off_lesion_validation(self, samples: pd.DataFrame) -> pd.DataFrame:
        """Hold out training rows, paint lesions into half of them as ``val_data``; return the other rows."""
        train = samples.index[samples.split == Split.TRAIN.value]
        files = samples.image_path[train].tolist()
        groups = files
        if self.val_group_column:
            column = pd.read_csv(self.split_csv, dtype=str, keep_default_na=False)
            if self.val_group_column not in column.columns:
                msg = (
                    f"val_group_column {self.val_group_column!r} is not a column of {self.split_csv} "
                    f"(columns: {', '.join(column.columns)})"
                )
                raise ValueError(msg)
            by_file = dict(zip(column.file.str.strip(), column[self.val_group_column], strict=True))
            groups = [by_file[file] for file in files]
        if self.val_group_near_duplicates is not None:
            groups = self._near_duplicate_groups(files, groups if self.val_group_column else None)
        held = hold_out(groups, self.val_split_ratio, self.seed or 0)
        held_files = [file for file, chosen in zip(files, held, strict=True) if chosen]
        settings: dict[str, object] = {"seed": self.seed or 0, "appearance": self.val_lesion_appearance}
        area = DEFAULT_LESION_AREA
        if self.val_lesion_area is not None:  # only then in the hash: sets painted before the option stay valid
            settings["area"] = area = self.val_lesion_area
        if self.val_lesion_pairs:
            settings["paired"] = True
        cache_root = Path(self.val_cache_dir).expanduser() if self.val_cache_dir else default_cache_root().parent
        target = lesion_validation_dir(
            cache_root / "lesion_validation", [str(self.root / f) for f in held_files], **settings
        )
        val_samples = materialise_lesion_validation(
            self.root, held_files, target, self.seed or 0, self.val_lesion_appearance, area, self.val_lesion_pairs
        )
        self.val_data = TabularDataset(name=self.name, samples=val_samples, split=Split.TEST, root=target)
        logger.info(
            "Label-free validation: %d training images of %d held out (%d with painted lesions) in %s",
            len(held_files),
            len(files),
            int(val_samples.label_index.sum()),
            target,
        )
        return samples.drop(index=train[held]).reset_index(drop=True)

    def _near_duplicate_groups(self, files: Sequence[str], groups: Sequence[str] | None) -> list[str]:
        from proxyano_plugin.prepare.lesions import read_gray

        merged = near_duplicate_groups(
            [read_gray(self.root / file) for file in files], float(self.val_group_near_duplicates), groups
        )
        sizes = pd.Series(merged).value_counts()
        logger.info(
            "Near-duplicate grouping (< %g grey levels, mirrors included): %d training images in %d groups, "
            "%d of them in groups of two or more",
            self.val_group_near_duplicates,
            len(files),
            len(sizes),
            int(sizes[sizes > 1].sum()),
        )
        return merged


LESION_VALIDATION = "lesions"


def check_lesion_validation(
    intensity: str | None,
    ratio: float,
    appearance: str,
    area: Sequence[float] | None = None,
    near_duplicates: float | None = None,
) -> None:
    """Refuse settings the lesion validation set cannot honour, before anything is read."""
    if intensity is not None:
        msg = f"val_split_mode='lesions' paints 8-bit images and cannot be combined with intensity={intensity!r}"
        raise ValueError(msg)
    if not 0 < ratio < 1:
        msg = f"val_split_ratio is the share of training groups held out with val_split_mode='lesions'; got {ratio}"
        raise ValueError(msg)
    if appearance not in APPEARANCES:
        msg = f"val_lesion_appearance must be one of {', '.join(APPEARANCES)}, got {appearance!r}"
        raise ValueError(msg)
    if area is not None and (len(area) != 2 or not 0 < area[0] <= area[1] < 1):
        msg = f"val_lesion_area must be [low, high] with 0 < low <= high < 1, got {list(area)}"
        raise ValueError(msg)
    if near_duplicates is not None and not near_duplicates > 0:
        msg = f"val_group_near_duplicates is a distance in grey levels > 0, got {near_duplicates}"
        raise ValueError(msg)
