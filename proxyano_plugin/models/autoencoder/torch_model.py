"""The plain convolutional autoencoder of the MedIAnomaly benchmark (Cai et al., Medical Image Analysis 2025).

Four stride-2 4x4 convolutions (BatchNorm + ReLU) shrink the image 16x, a fully connected bottleneck squeezes
it to ``latent_size`` numbers, and a mirrored decoder of 4x4 transposed convolutions rebuilds it. The
bottleneck is what makes it an anomaly detector: it cannot carry what it never saw in normal images.
"""

from collections.abc import Callable
from itertools import pairwise
from typing import NamedTuple

import torch
from anomalib.data import InferenceBatch
from torch import nn

from proxyano_plugin.models.base import to_model_channels
from proxyano_plugin.models.image_errors import (
    gaussian_blur,
    gaussian_kernel,
    optional_kernel,
    relative_to_head,
    ssim_error,
    topk_mean,
)

DOWNSAMPLING = 16  # four stride-2 stages
ERRORS = ("l2", "l1", "ssim")


def check_scoring(
    error: object, ssim_sigma: object, map_sigma: object, score_topk: object, score_relative: object
) -> None:
    """Clear errors for the scoring arguments, before any network is built."""
    if error not in ERRORS:
        msg = f"Autoencoder error must be one of {', '.join(ERRORS)}, got {error!r}"
        raise ValueError(msg)
    if not _is_number(ssim_sigma) or not ssim_sigma > 0:
        msg = f"Autoencoder ssim_sigma (the SSIM window's Gaussian sigma, px) must be > 0, got {ssim_sigma!r}"
        raise ValueError(msg)
    if not _is_number(map_sigma) or not map_sigma >= 0:
        msg = f"Autoencoder map_sigma must be >= 0 (0: no smoothing), got {map_sigma!r}"
        raise ValueError(msg)
    if not _is_number(score_topk) or not 0 < score_topk <= 1:
        msg = f"Autoencoder score_topk must be in (0, 1] (1: the map's mean), got {score_topk!r}"
        raise ValueError(msg)
    if not isinstance(score_relative, bool):
        msg = f"Autoencoder score_relative is true or false, got {score_relative!r}"
        raise ValueError(msg)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Reconstruction(NamedTuple):
    """Input and output of the autoencoder, both in the model's [-1, 1] intensity space."""

    images: torch.Tensor
    reconstructions: torch.Tensor


def _stage(in_channels: int, out_channels: int, transpose: bool, last: bool = False) -> nn.Sequential:
    """One 2x resampling stage: 4x4 (transposed) conv, stride 2, then BatchNorm + ReLU unless last."""
    conv_class = nn.ConvTranspose2d if transpose else nn.Conv2d
    conv = conv_class(in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=False)
    if last:
        return nn.Sequential(conv)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def bottleneck_mlp(
    in_features: int, hidden: int, out_features: int, norm: Callable[[int], nn.Module] = nn.BatchNorm1d
) -> nn.Sequential:
    """Linear -> norm -> ReLU -> Linear, one half of a fully connected bottleneck (ProxyAno's global code too)."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        norm(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out_features),
    )


class AutoencoderModel(nn.Module):
    """Conv encoder -> fully connected bottleneck -> mirrored decoder.

    Args:
        in_channels: Channels the network sees (anomalib's RGB batch is averaged to 1 for grayscale).
        image_size: Square input size; a multiple of 16.
        base_width: Channels of the first stage; the stages use 1x, 2x, 4x, 4x this width.
        latent_size: Size of the bottleneck code.
        hidden_size: Width of the fully connected layer on each side of the code.
        error: Anomaly map: ``"l2"`` (squared residual, MedIAnomaly), ``"l1"`` (absolute residual on the [0, 1]
            scale) or ``"ssim"`` (1 - SSIM of image and reconstruction in [0, 1], within a Gaussian window of
            ``ssim_sigma`` px): ProxyAno's errors, so the two models can be compared under one scoring.
        ssim_sigma: Gaussian sigma (px) of the SSIM window; only read with ``error="ssim"``.
        map_sigma: Gaussian smoothing (px) of the anomaly map; 0 (MedIAnomaly) leaves it raw.
        score_topk: Image score = mean of the top ``score_topk`` fraction of the map; 1.0 (MedIAnomaly) is the
            map's mean. With ``error="ssim"``, ``map_sigma=1`` and ``score_topk=0.01`` it scores as ProxyAno.
        score_relative: Divide the image score by the map's mean over the head (ProxyAno's ``score_relative``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 64,
        base_width: int = 16,
        latent_size: int = 16,
        hidden_size: int = 1024,
        error: str = "l2",
        ssim_sigma: float = 3.0,
        map_sigma: float = 0.0,
        score_topk: float = 1.0,
        score_relative: bool = False,
    ) -> None:
        super().__init__()
        check_scoring(error, ssim_sigma, map_sigma, score_topk, score_relative)
        if image_size < DOWNSAMPLING or image_size % DOWNSAMPLING:
            msg = f"Autoencoder image_size must be a positive multiple of {DOWNSAMPLING}, got {image_size}"
            raise ValueError(msg)
        self.in_channels = in_channels
        self.error = error
        self.score_topk = score_topk
        self.score_relative = score_relative
        self.register_buffer("ssim_window", gaussian_kernel(ssim_sigma) if error == "ssim" else None, False)
        self.register_buffer("smoothing_kernel", optional_kernel(map_sigma, torch.device("cpu")), False)
        widths = [base_width, 2 * base_width, 4 * base_width, 4 * base_width]
        self.code_shape = (widths[-1], image_size // DOWNSAMPLING, image_size // DOWNSAMPLING)
        flat = widths[-1] * self.code_shape[1] * self.code_shape[2]
        self.encoder = nn.Sequential(
            *(_stage(cin, cout, transpose=False) for cin, cout in pairwise([in_channels, *widths]))
        )
        self.bottleneck_in = bottleneck_mlp(flat, hidden_size, latent_size)
        self.bottleneck_out = bottleneck_mlp(latent_size, hidden_size, flat)
        decoder_widths = [*reversed(widths), in_channels]
        self.decoder = nn.Sequential(
            *(
                _stage(cin, cout, transpose=True, last=index == len(widths) - 1)
                for index, (cin, cout) in enumerate(pairwise(decoder_widths))
            )
        )

    def reconstruct(self, images: torch.Tensor) -> Reconstruction:
        """Map a [0, 1] batch (any of anomalib's channel layouts) to [-1, 1] and reconstruct it."""
        model_images = to_model_channels(images, self.in_channels, "Autoencoder") * 2 - 1
        code = self.bottleneck_in(self.encoder(model_images).flatten(1))
        features = self.bottleneck_out(code).view(-1, *self.code_shape)
        return Reconstruction(model_images, self.decoder(features))

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Anomaly map = squared residual (channel mean), image score = its mean, as in MedIAnomaly; or the
        scoring the arguments ask for (ProxyAno's: l1 or 1 - SSIM, smoothed, top-k mean, relative)."""
        model_images, reconstructions = self.reconstruct(images)
        # ProxyAno's errors and head threshold are defined on the [0, 1] scale (SSIM's constants too)
        unit_images, unit_reconstructions = (model_images + 1) / 2, (reconstructions + 1) / 2
        if self.error == "l2":
            anomaly_map = (model_images - reconstructions).square().mean(dim=1, keepdim=True)
        elif self.error == "l1":
            anomaly_map = (unit_images - unit_reconstructions).abs().mean(dim=1, keepdim=True)
        else:
            anomaly_map = ssim_error(unit_images, unit_reconstructions, self.ssim_window)
        if self.smoothing_kernel is not None:
            anomaly_map = gaussian_blur(anomaly_map, self.smoothing_kernel)
        score = topk_mean(anomaly_map, self.score_topk)
        if self.score_relative:
            score = relative_to_head(score, anomaly_map, unit_images)
        return InferenceBatch(pred_score=score, anomaly_map=anomaly_map)
