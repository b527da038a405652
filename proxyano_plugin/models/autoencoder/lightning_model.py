"""The MedIAnomaly autoencoder baseline as an anomalib model.

Cai et al., "MedIAnomaly: A comparative study of anomaly detection in medical images", Medical Image
Analysis 2025 (code: github.com/caiyu6666/MedIAnomaly). See README.md in this folder for the protocol.
"""

import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch.nn import functional as F  # noqa: N812

from proxyano_plugin.models.base import OneClassReconstruction

from .torch_model import AutoencoderModel

__all__ = ["Autoencoder"]


class Autoencoder(OneClassReconstruction, AnomalibModule):
    """Plain convolutional autoencoder trained with MSE on normal images (MedIAnomaly's "AE").

    All arguments are plain data so checkpoints load with ``weights_only=True``.

    Args:
        in_channels: 1 for grayscale (the MedIAnomaly protocol) or 3 for RGB.
        image_size: Square size the pre-processor resizes to (MedIAnomaly: 64); a multiple of 16.
        base_width: Channels of the first encoder stage (MedIAnomaly: 16).
        latent_size: Bottleneck code size (MedIAnomaly: 16).
        hidden_size: Fully connected width around the code (MedIAnomaly's ``--hidden-num``: 1024).
        learning_rate: Adam learning rate (MedIAnomaly: 1e-3).
        weight_decay: Adam weight decay (MedIAnomaly: 0).
        error: Anomaly map, ``"l2"`` (MedIAnomaly), ``"l1"`` or ``"ssim"``; training is MSE either way.
        ssim_sigma: Gaussian sigma (px) of the SSIM window for ``error="ssim"``.
        map_sigma: Gaussian smoothing (px) of the anomaly map (MedIAnomaly: 0, none).
        score_topk: Image score = mean of the top fraction of the map (MedIAnomaly: 1.0, the mean).
        score_relative: Divide the image score by the map's mean over the head (MedIAnomaly: no).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 64,
        base_width: int = 16,
        latent_size: int = 16,
        hidden_size: int = 1024,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        error: str = "l2",
        ssim_sigma: float = 3.0,
        map_sigma: float = 0.0,
        score_topk: float = 1.0,
        score_relative: bool = False,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(pre_processor, post_processor, evaluator, visualizer, image_size=image_size)
        self.model = AutoencoderModel(
            in_channels=in_channels,
            image_size=image_size,
            base_width=base_width,
            latent_size=latent_size,
            hidden_size=hidden_size,
            error=error,
            ssim_sigma=ssim_sigma,
            map_sigma=map_sigma,
            score_topk=score_topk,
            score_relative=score_relative,
        )
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """One MSE step on a batch of normal images."""
        del args, kwargs
        self.check_finite_images(batch)
        images, reconstructions = self.model.reconstruct(batch.image)
        loss = F.mse_loss(reconstructions, images)
        self.check_finite_loss(loss)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=images.shape[0])
        return loss

    def gallery_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reconstruction on the input's [0, 1] scale, for the benchmark gallery (the network works in [-1, 1])."""
        return {"reconstruction": (self.model.reconstruct(images).reconstructions + 1) / 2}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
