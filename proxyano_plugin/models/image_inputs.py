"""Input handling shared by the reconstruction models (ProxyAno, Autoencoder, f-AnoGAN).

anomalib always delivers 3-channel batches in [0, 1] (grayscale files are replicated), and its default
pre-processor adds ImageNet normalisation, which reconstruction models must not see: their targets are the
input intensities. These helpers keep both facts in one place.
"""

from typing import Any

import torch
from anomalib import LearningType
from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import Compose, Resize

from proxyano_plugin.models.checkpoints import CheckedCheckpoint


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
    """

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
