"""SplitCSV: an anomalib datamodule for image folders whose train/test split is given by a CSV file.

Benchmarks such as MedIAnomaly's ship one image folder and several split files instead of anomalib's
folder-per-split layout; re-copying the images for every split would be wasteful and error-prone.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.datasets.image.tabular import TabularDataset
from anomalib.data.utils import Split, TestSplitMode, ValSplitMode
from torchvision.transforms.v2 import Transform

from proxyano_plugin.data.intensity import FullDepthDataset, check_intensity, check_split_modes
from proxyano_plugin.data.validation import DataProblem, DatasetError

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


def read_split_csv(root: str | Path, split_csv: str | Path) -> pd.DataFrame:
    """Read and check a split CSV; return anomalib's sample table (paths relative to ``root``).

    Columns: ``file`` (relative to ``root``), ``label`` (0 normal, 1 abnormal), ``split`` (``train`` or
    ``test``), optionally ``mask`` (relative path of the pixel mask of abnormal images); others are
    ignored. Every problem is reported with the CSV line it is on, up to 20 in one
    :class:`~proxyano_plugin.data.validation.DatasetError`.
    """
    root = Path(root).expanduser().resolve()
    path = resolve_split_csv(root, split_csv)
    problems: list[DataProblem] = []

    def bad(line: int, text: str, kind: str = "bad_csv") -> None:
        problems.append(DataProblem(kind, path, f"{path} line {line}: {text}", True))

    rows = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            message = f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(reader.fieldnames or [])}"
            raise DatasetError([DataProblem("bad_csv", path, message, True)])
        has_masks = "mask" in reader.fieldnames
        first_line: dict[str, int] = {}
        for row in reader:
            line = reader.line_num
            file, label, split = (row[column].strip() for column in REQUIRED_COLUMNS)
            mask = (row.get("mask") or "").strip()
            if label not in _LABELS:
                bad(line, f"label {label!r} must be 0 (normal) or 1 (abnormal)")
            elif split not in _SPLITS:
                bad(line, f"split {split!r} must be one of {', '.join(_SPLITS)}")
            elif split == "train" and label == "1":
                bad(line, f"{file} is abnormal (label 1) but in the train split: train on normal images only")
            elif file in first_line:
                bad(line, f"{file} is listed twice (first on line {first_line[file]})")
            elif not (root / file).is_file():
                bad(line, f"file {file} not found under {root}", "missing_file")
            elif mask and not (root / mask).is_file():
                bad(line, f"mask {mask} not found under {root}", "missing_file")
            elif has_masks and label == "1" and not mask:
                bad(line, f"abnormal image {file} has no mask while other rows have: give every abnormal row one")
            first_line.setdefault(file, line)
            rows.append({"image_path": file, "label_index": _LABELS.get(label), "split": split, "mask_path": mask})
    for split, what in (("train", "normal training"), ("test", "test")):
        if not problems and not any(row["split"] == split for row in rows):
            problems.append(DataProblem("bad_csv", path, f"{path}: no {what} images (split == {split})", True))
    if problems:
        raise DatasetError(problems)
    samples = pd.DataFrame(rows, columns=["image_path", "label_index", "split", "mask_path"])
    # object, not pandas 3's default str dtype: anomalib writes Path objects into mask_path.
    return samples.astype({"label_index": "Int64", "mask_path": object})


class FullDepthTabularDataset(FullDepthDataset, TabularDataset):
    """anomalib's ``TabularDataset``, reading its images at full bit depth (see :class:`FullDepthDataset`)."""


class SplitCSV(AnomalibDataModule):
    """Images under ``root``, labelled and split by a CSV file (image-level labels, optional masks).

    For example ``brain_tumor_mri/splits/medianomaly.csv``::

        file,label,split,class
        normal/Te-noTr_0000.png,0,train,notumor
        abnormal/Tr-gl_0001.png,1,test,glioma

    Validation images are drawn from the test images (``val_split_mode``), so they include anomalies.

    Args:
        root: dataset folder; ``file`` entries are relative to it.
        split_csv: the split file: a path, or a name looked up in ``root/splits`` (``.csv`` optional),
            e.g. ``medianomaly``.
        name: dataset name for logs and result folders; defaults to the name of ``root``. The CSV's stem
            becomes the ``category``, so results of different splits land in different folders.
        train_batch_size: training batch size.
        eval_batch_size: validation and test batch size.
        num_workers: data-loading workers.
        train_augmentations: augmentations of training images.
        val_augmentations: augmentations of validation images.
        test_augmentations: augmentations of test images.
        augmentations: augmentations for every subset without its own.
        val_split_mode: how the validation set is made (anomalib's ``ValSplitMode``).
        val_split_ratio: share of the test images moved to validation.
        seed: seed of the validation split.
        intensity: ``None`` (default) reads images as anomalib does, as 8-bit RGB, which clips 16-bit
            values; ``"minmax"``, ``"percentile"`` (0.5th-99.5th, clipped) or ``"window"`` read them at
            full depth and map them to [0, 1] per image, or with ``intensity_window``
            (:func:`~proxyano_plugin.data.intensity.read_full_depth`).
        intensity_window: ``[low, high]`` in the images' raw units, for ``intensity="window"``.
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
    ) -> None:
        window = check_intensity(intensity, intensity_window)
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

    @property
    def name(self) -> str:
        """Dataset name (defaults to the name of ``root``)."""
        return self._name

    def _setup(self, _stage: str | None = None) -> None:
        samples = read_split_csv(self.root, self.split_csv)
        self.train_data, self.test_data = (
            TabularDataset(name=self.name, samples=samples, split=split, root=self.root)
            for split in (Split.TRAIN, Split.TEST)
        )
        if self.intensity is not None:  # before the splits, which copy these datasets
            self.train_data, self.test_data = (
                FullDepthTabularDataset.adopt(dataset, self.intensity, self.intensity_window)
                for dataset in (self.train_data, self.test_data)
            )
