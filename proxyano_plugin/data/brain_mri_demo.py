"""BrainMRIDemo: the embedded, offline default dataset, as an anomalib ``Folder`` datamodule.

Semi-synthetic: real anatomy (axial slices of the ICBM152 2009 T1 template, stored in the package),
synthetic pseudo-subjects and synthetic tumour-like lesions with exact masks. See
``proxyano_plugin/data/README.md``. The images are generated on first use (a few seconds) into a cache
directory and reused afterwards; open that directory to look at them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from anomalib.data import Folder
from anomalib.data.datasets.image.tabular import TabularDataset
from anomalib.data.utils import Split, TestSplitMode, ValSplitMode
from torchvision.transforms.v2 import Transform

from proxyano_plugin.data.demo_generator import (
    FOLDER_LAYOUT,
    DemoImage,
    DemoSpec,
    default_cache_root,
    demo_dir,
    further_subjects,
    materialise_demo,
)
from proxyano_plugin.data.split_csv import LESION_VALIDATION, check_lesion_validation
from proxyano_plugin.data.synthetic_validation import (
    LesionValidation,
    lesion_validation_dir,
    write_lesion_validation,
    write_validation_set,
)

logger = logging.getLogger(__name__)


class BrainMRIDemo(Folder):
    """Semi-synthetic brain MRI anomaly detection: normal slices to train on, tumour slices with masks to test.

    The defaults (12 training and 8 test pseudo-subjects, 20 slices each, half of the test slices with a
    lesion of 1-8 % of the brain area) give 240 training and 80 + 80 test images of 128x128 pixels,
    sized for CPU demos. By default validation images are drawn from the test images, lesions included, as
    anomalib does, so that thresholds are calibrated on anomalies; ``val_split_mode="lesions"`` validates on
    further normal *training* subjects with painted lesions instead, which leaves the test set whole and lets
    a model choose its epoch without seeing it.

    Args:
        root: directory under which the generated tree is cached, in a sub-folder named after the
            parameters (see :attr:`dataset_dir`). Defaults to ``$PROXYANO_PLUGIN_CACHE/brain_mri_demo``
            or ``./datasets/brain_mri_demo`` (anomalib's convention).
        train_subjects: number of training pseudo-subjects (normal slices only).
        test_subjects: number of test pseudo-subjects, all distinct from the training ones.
        slices_per_subject: axial slices per subject (at most 48, the template slices stored).
        lesion_fraction: share of test slices that carry a lesion.
        lesion_area: ``[low, high]`` lesion area as a share of the slice's brain area.
        seed: seed of the whole generation, also used for the validation split.
        train_batch_size: training batch size.
        eval_batch_size: validation and test batch size.
        num_workers: data-loading workers; the images are tiny, so worker start-up costs more than it saves.
        train_augmentations: augmentations of training images.
        val_augmentations: augmentations of validation images.
        test_augmentations: augmentations of test images.
        augmentations: augmentations for every subset without its own.
        val_split_mode: how the validation set is made: anomalib's ``ValSplitMode`` values, or ``"lesions"``: a
            label-free validation set of ``val_subjects`` further pseudo-subjects of the training distribution
            (training subjects numbered past ``train_subjects``: never trained on, and the training set keeps
            every image), with lesions painted into half of their slices by the lesion generator of
            ``proxyano-prepare lesions`` (:mod:`~proxyano_plugin.data.synthetic_validation`). Models that
            select an epoch (``ProxyAno(select_epoch=True)``) select on it; the test split is not touched.
        val_split_ratio: share of the test images moved to validation (not used with ``"lesions"``).
        val_subjects: with ``"lesions"``: the number of validation pseudo-subjects.
        val_lesion_appearance: with ``"lesions"``: ``"t1ce"`` (the demo's look: T1 with contrast) or ``"flair"``.
        val_lesions_before_scan: with ``"lesions"``: paint the validation lesions into the subjects' anatomy
            before their simulated scan, as the test lesions are (blurred, biased and noisy like the tissue
            around them), instead of into the scanned slices as on real data. Off by default, so that a
            configuration keeps the validation set it was chosen on.

    Example:
        >>> datamodule = BrainMRIDemo(train_batch_size=16)
        >>> datamodule.prepare_data()  # generates once, then reuses the cached tree
        >>> datamodule.setup()
        >>> batch = next(iter(datamodule.test_dataloader()))  # batch.image: [B, 3, 128, 128]
    """

    def __init__(
        self,
        root: str | Path | None = None,
        train_subjects: int = 12,
        test_subjects: int = 8,
        slices_per_subject: int = 20,
        lesion_fraction: float = 0.5,
        lesion_area: tuple[float, float] = (0.01, 0.08),
        seed: int = 0,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        val_split_mode: ValSplitMode | str = ValSplitMode.FROM_TEST,
        val_split_ratio: float = 0.5,
        val_subjects: int = 4,
        val_lesion_appearance: str = "t1ce",
        val_lesions_before_scan: bool = False,
    ) -> None:
        self.label_free_validation = str(getattr(val_split_mode, "value", val_split_mode)) == LESION_VALIDATION
        if self.label_free_validation:
            check_lesion_validation(None, 0.5, val_lesion_appearance)
            if val_subjects < 1:
                msg = f"BrainMRIDemo: val_subjects must be at least 1 with val_split_mode='lesions', got {val_subjects}"
                raise ValueError(msg)
            val_split_mode = ValSplitMode.NONE  # made in _setup, from further training subjects
        self.val_subjects = val_subjects
        self.val_lesion_appearance = val_lesion_appearance
        self.val_lesions_before_scan = val_lesions_before_scan
        self.spec = DemoSpec(
            train_subjects=train_subjects,
            test_subjects=test_subjects,
            slices_per_subject=slices_per_subject,
            lesion_fraction=lesion_fraction,
            lesion_area=lesion_area,
            seed=seed,
        )
        self.cache_root = root
        super().__init__(
            name="BrainMRIDemo",
            root=demo_dir(self.spec, root),
            **FOLDER_LAYOUT,
            extensions=(".png",),
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode=TestSplitMode.FROM_DIR,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )

    @property
    def dataset_dir(self) -> Path:
        """The materialised Folder tree (exists after :meth:`prepare_data` or :meth:`setup`)."""
        return Path(self.root)

    def prepare_data(self) -> None:
        """Generate the images into :attr:`dataset_dir` unless a previous run already did."""
        materialise_demo(self.spec, self.cache_root)
        logger.info("BrainMRIDemo images: %s", self.dataset_dir)

    def _setup(self, _stage: str | None = None) -> None:
        # Lightning skips prepare_data on non-zero ranks and users often call setup() alone.
        materialise_demo(self.spec, self.cache_root)
        super()._setup(_stage)
        if self.label_free_validation:
            self.val_data = self._lesion_validation()

    def _lesion_validation(self) -> TabularDataset:
        """Training subjects ``train_subjects .. + val_subjects - 1``, half their slices with lesions."""
        appearance = self.val_lesion_appearance

        def scanned(fraction: float) -> tuple[list[np.ndarray], list[DemoImage]]:
            slices = further_subjects(self.spec, self.val_subjects, fraction, appearance)
            return [image.image.astype(np.float32) / 255 for image in slices], slices

        def lesioned_before_scan() -> tuple[LesionValidation, list[str]]:  # ~1 s, once per set
            images, slices = scanned(0.5)
            masks = [np.zeros(image.image.shape, bool) if image.mask is None else image.mask for image in slices]
            labels = np.array([int(image.mask is not None) for image in slices])
            return LesionValidation(images, masks, labels), [image.name for image in slices]

        def normal() -> tuple[list[np.ndarray], list[str]]:  # ~0.5 s, painted after the scan
            images, slices = scanned(0.0)
            return images, [image.name for image in slices]

        cache_root = (Path(self.cache_root).expanduser() if self.cache_root else default_cache_root()).resolve()
        settings = {"seed": self.spec.seed, "appearance": appearance}
        if self.val_lesions_before_scan:
            settings["lesions"] = "before scan"
        numbers = range(self.spec.train_subjects, self.spec.train_subjects + self.val_subjects)
        subjects = [f"{self.spec.key()}/train subject {number}" for number in numbers]  # what the set is made of
        target = lesion_validation_dir(cache_root / "lesion_validation", subjects, **settings)
        if self.val_lesions_before_scan:
            samples = write_validation_set(lesioned_before_scan, target)
        else:
            samples = write_lesion_validation(normal, target, self.spec.seed, appearance)
        logger.info(
            "Label-free validation: %d slices of %d further training subjects (%d with %s lesions) in %s",
            len(samples),
            self.val_subjects,
            int(samples.label_index.sum()),
            "scanned" if self.val_lesions_before_scan else "painted",
            target,
        )
        return TabularDataset(name=self.name, samples=samples, split=Split.TEST, root=target)
