"""The base shared by the reconstruction models (ProxyAno, Autoencoder, f-AnoGAN): inputs, checks, validation.

anomalib always delivers 3-channel batches in [0, 1] (grayscale files are replicated), and its default
pre-processor adds ImageNet normalisation, which reconstruction models must not see: their targets are the
input intensities. :class:`OneClassReconstruction` keeps these facts, the checks that stop training on NaN/inf
and the validation step in one place, so the models differ only where their methods do.
"""

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torchvision.transforms.v2 import Compose, Resize

from proxyano_plugin.models.checkpoints import CheckedCheckpoint
from proxyano_plugin.models.selection import BestEpoch


def to_model_channels(images: torch.Tensor, in_channels: int, model_name: str) -> torch.Tensor:
    """Reduce anomalib's 3-channel batch to ``in_channels`` (1: channel mean, 3: unchanged)."""
    channels = images.shape[1]
    if channels == in_channels:
        return images
    if in_channels == 1 and channels == 3:
        return images.mean(dim=1, keepdim=True)
    msg = f"{model_name}(in_channels={in_channels}) got images with {channels} channels; expected 3 or {in_channels}"
    raise ValueError(msg)


def resize_pre_processor(image_size: tuple[int, int]) -> PreProcessor:
    """A pre-processor that only resizes (antialiased), so intensities stay in [0, 1]."""
    return PreProcessor(transform=Compose([Resize(list(image_size), antialias=True)]))


class OneClassReconstruction(CheckedCheckpoint):
    """Mixin (listed before ``AnomalibModule``) for models trained on normal images to reproduce their input.

    ``load_from_checkpoint`` checks the file first (:class:`~proxyano_plugin.models.checkpoints.CheckedCheckpoint`).
    Subclasses set ``self.model``, whose ``forward`` returns an ``InferenceBatch`` (anomalib's export path).
    On a label-free validation set (held-out training images with painted lesions, never test images) every
    validation epoch logs ``val_image_auroc``, ``val_pixel_auroc`` and ``val_selection`` (their mean), the
    numbers training curves and epoch selection are read from; :meth:`on_label_free_validation` gets them.
    """

    #: The end of the message that stops training on a NaN/inf loss: what the user can change.
    nonfinite_loss_advice: ClassVar[str] = "lower --model.learning_rate or check the input intensities"

    def __init__(
        self,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
        *,
        image_size: int | None = None,
    ) -> None:
        """Turn ``pre_processor=True`` into a resize to ``image_size`` (anomalib's default knows no size).

        A pre-processor of one's own must resize to ``image_size``: the networks are built for it, and another
        size would only fail later, inside a layer, with a shape error that names neither.
        """
        if pre_processor is True and image_size is not None:
            pre_processor = self.configure_pre_processor((image_size, image_size))
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        produced = self.input_size if image_size is not None else None  # type: ignore[attr-defined]
        if produced is not None and tuple(produced) != (image_size, image_size):
            msg = (
                f"{type(self).__name__}(image_size={image_size}) got a pre-processor producing {produced[0]}x"
                f"{produced[1]} images: the network is built for image_size; set --model.image_size "
                f"{produced[0]}, or keep the default pre-processor"
            )
            raise ValueError(msg)
        # Raw validation scores of the current epoch, and (for models that select their epoch) the best one.
        self.best_epoch = BestEpoch()

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize only: reconstruction targets must stay in [0, 1], so no ImageNet normalisation."""
        return resize_pre_processor(image_size or (64, 64))

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Hard requirements only: anything here silently overrides the user's ``--trainer.*`` values."""
        return {"num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        return LearningType.ONE_CLASS

    def on_fit_start(self) -> None:
        super().on_fit_start()  # type: ignore[misc]
        self.use_device_memory_format()

    def on_validation_start(self) -> None:
        super().on_validation_start()  # type: ignore[misc]
        self.use_device_memory_format()

    def on_test_start(self) -> None:
        super().on_test_start()  # type: ignore[misc]
        self.use_device_memory_format()

    def on_predict_start(self) -> None:
        super().on_predict_start()  # type: ignore[misc]
        self.use_device_memory_format()

    def use_device_memory_format(self) -> None:
        """Channels-last weights on CPUs: the same maths (to float rounding), faster on oneDNN.

        oneDNN's NCHW kernels are slow for narrow, full-resolution convolutions (8-16 channels at 64 px), and
        with channels-last weights every activation stays NHWC. Measured on one thread, batch 32, against
        NCHW: ProxyAno's default 1.3x faster inference at 64 px and 1.9x at 128 px (`proxyano_profile.py`),
        1.3x faster training steps; f-AnoGAN's critic 1.3x and encoder 1.6x (`fanogan_step_cost.py`).
        GPUs keep PyTorch's default layout (not measured there). Parameters change layout in place, so
        optimisers and checkpoints are unaffected.
        """
        if self.device.type == "cpu":  # type: ignore[attr-defined]
            self.model.to(memory_format=torch.channels_last)  # type: ignore[attr-defined]

    def check_finite_images(self, batch: Batch) -> None:
        """Refuse NaN/inf inputs early, naming their files: later they only surface as a NaN loss or score."""
        finite = torch.isfinite(batch.image).flatten(1).all(dim=1)
        if bool(finite.all()):
            return
        paths = batch.image_path or []
        bad = [str(paths[i]) if i < len(paths) else f"batch index {i}" for i in (~finite).nonzero().flatten()]
        msg = f"{type(self).__name__}: input images contain NaN or inf values: {', '.join(bad)}"
        raise ValueError(msg)

    def training_progress(self) -> str:
        """Where training stands, for error messages (models trained in stages say which)."""
        return f"at epoch {self.current_epoch}, step {self.global_step}"  # type: ignore[attr-defined]

    def check_finite_loss(
        self, loss: torch.Tensor, name: str = "training loss", terms: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Stop at the first NaN/inf loss: the weights are lost from then on, so training on wastes hours.

        With ``terms`` (the parts of a composite loss) the message lists them instead of the total's value,
        which says which part broke.
        """
        if torch.isfinite(loss):
            return
        value = "not finite" if terms else loss.item()
        listed = f" ({', '.join(f'{key}={term.item():.4g}' for key, term in terms.items())})" if terms else ""
        where = self.training_progress()
        msg = f"{type(self).__name__}: {name} is {value} {where}{listed}; {self.nonfinite_loss_advice}"
        raise FloatingPointError(msg)

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Score the validation batch with the exported inference path; keep label-free scores for the epoch."""
        del args, kwargs
        self.check_finite_images(batch)
        batch = batch.update(**self.model(batch.image)._asdict())  # type: ignore[attr-defined]
        if self.label_free_validation():
            self.best_epoch.update(batch.pred_score, batch.gt_label, batch.anomaly_map, batch.gt_mask)
        return batch

    def label_free_validation(self) -> bool:
        """Whether the datamodule declares its validation set label-free (built from training images only)."""
        trainer = self._trainer  # type: ignore[attr-defined]
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        return bool(getattr(datamodule, "label_free_validation", False))

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()  # type: ignore[misc]
        self.best_epoch.reset()

    def on_validation_epoch_end(self) -> None:
        """Log the label-free validation AUROCs and hand them to :meth:`on_label_free_validation`."""
        super().on_validation_epoch_end()  # type: ignore[misc]
        sanity = self.trainer.sanity_checking  # type: ignore[attr-defined]
        metrics = self.best_epoch.compute() if self.label_free_validation() and not sanity else {}
        self.best_epoch.reset()
        if metrics:
            self.log_dict({f"val_{name}": value for name, value in metrics.items()}, sync_dist=True)  # type: ignore[attr-defined]
            self.on_label_free_validation(metrics)

    def on_label_free_validation(self, metrics: dict[str, float]) -> None:
        """Called after each label-free validation epoch with its metrics; models that select epochs act here."""
