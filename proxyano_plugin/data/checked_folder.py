"""CheckedFolder: anomalib's ``Folder`` datamodule, with its dataset checked before setup."""

from __future__ import annotations

import logging
from typing import Any

from anomalib.data import Folder
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.datasets.image.folder import FolderDataset

from proxyano_plugin.data.intensity import FullDepthDataset, check_intensity, check_split_modes
from proxyano_plugin.data.validation import (
    SKIPPED_KINDS,
    DataProblem,
    DatasetSummary,
    inspect_folder_dataset,
    report_problems,
)

logger = logging.getLogger(__name__)


class FullDepthFolderDataset(FullDepthDataset, FolderDataset):
    """anomalib's ``FolderDataset``, reading its images at full bit depth (see :class:`FullDepthDataset`)."""


class CheckedFolder(Folder):
    """Drop-in replacement for ``anomalib.data.Folder`` that reports dataset problems up front.

    Before the datasets are built, :func:`~proxyano_plugin.data.validation.inspect_folder_dataset` checks
    the folders, decodes every image and pairs the masks. Each problem is reported once, on one line
    naming the file or folder: fatal ones (missing or empty folders, masks that do not pair with their
    images) raise :class:`~proxyano_plugin.data.validation.DatasetError`; unreadable or truncated images,
    and float images holding NaN or infinity, are logged and left out, or raise with ``strict=True``;
    mixed sizes or grayscale mixed with colour are logged. A summary (images per folder, sizes, channels,
    stored intensity range) is logged at INFO level, which ``anomalib`` prints; it stays in ``summary``.

    Args:
        strict: raise on unreadable or non-finite images instead of skipping them.
        intensity: ``None`` (default) reads images as anomalib does, as 8-bit RGB, which clips 16-bit
            values; ``"minmax"``, ``"percentile"`` (0.5th-99.5th, clipped) or ``"window"`` read them at
            full depth and map them to [0, 1] per image, or with ``intensity_window``
            (:func:`~proxyano_plugin.data.intensity.read_full_depth`).
        intensity_window: ``[low, high]`` in the images' raw units, for ``intensity="window"``.
        pixel_metrics: the evaluation needs pixel masks: abnormal images without masks are an error
            (by default, anomalib then reports image-level metrics only, silently).
        **kwargs: the arguments of ``anomalib.data.Folder`` (``name``, ``normal_dir``, ``root``, ...).

    Example:
        >>> datamodule = CheckedFolder(name="scans", root="datasets/scans", normal_dir="good",
        ...                            abnormal_dir="tumour", mask_dir="masks")
        >>> datamodule.setup()  # DatasetError: abnormal image .../tumour/007.png has no mask named ...
    """

    def __init__(
        self,
        strict: bool = False,
        intensity: str | None = None,
        intensity_window: list[float] | None = None,
        pixel_metrics: bool = False,
        **kwargs: Any,
    ) -> None:
        window = check_intensity(intensity, intensity_window)
        super().__init__(**kwargs)
        check_split_modes(intensity, self.test_split_mode, self.val_split_mode)
        self.strict = strict
        self.pixel_metrics = pixel_metrics
        self.intensity = intensity
        self.intensity_window = window
        # What the check found (None until setup): kept so that it runs, and reports, only once.
        self.problems: list[DataProblem] | None = None
        self.summary: DatasetSummary | None = None

    def _setup(self, _stage: str | None = None) -> None:
        if self.problems is None:
            problems, summary = inspect_folder_dataset(
                normal_dir=self.normal_dir,
                root=self.root,
                abnormal_dir=self.abnormal_dir,
                normal_test_dir=self.normal_test_dir,
                mask_dir=self.mask_dir,
                extensions=self.extensions,
                strict=self.strict,
                full_depth=self.intensity is not None,
                pixel_metrics=self.pixel_metrics,
            )
            report_problems(problems, logger)
            logger.info(summary.text())
            self.problems, self.summary = problems, summary
        super()._setup(_stage)
        skipped = {str(problem.path) for problem in self.problems if problem.kind in SKIPPED_KINDS}
        if skipped:
            for dataset in (self.train_data, self.test_data):
                _drop(dataset, skipped)
        if self.intensity is not None:  # before the splits, which copy these datasets
            self.train_data, self.test_data = (
                FullDepthFolderDataset.adopt(dataset, self.intensity, self.intensity_window)
                for dataset in (self.train_data, self.test_data)
            )


def _drop(dataset: AnomalibDataset, paths: set[str]) -> None:
    """Remove the samples whose image is in ``paths``, keeping the table's metadata (the task type)."""
    samples = dataset.samples
    kept = samples[~samples.image_path.isin(paths)].reset_index(drop=True)
    kept.attrs = dict(samples.attrs)
    dataset.samples = kept
