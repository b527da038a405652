"""Networks of f-AnoGAN (Schlegl et al., Medical Image Analysis 2019): ResNet WGAN-GP generator and critic,
and the izi_f encoder.

The architecture follows the original code (github.com/tSchlegl/f-AnoGAN, ``wgangp_64x64.py`` and
``z_encoding_izif.py``, itself Gulrajani et al.'s 64x64 ResNet WGAN-GP): pre-activation residual blocks
(norm -> ReLU -> conv -> norm -> ReLU -> conv), nearest-neighbour 2x upsampling before the convolution in
the generator, 2x2 mean pooling after it in the critic and encoder, 1x1 shortcut convolutions, BatchNorm in
the generator and encoder, and LayerNorm (per-sample statistics over C, H, W with a per-channel affine) in
the critic, since batch statistics would break the per-sample gradient penalty.
"""

import math
from collections.abc import Callable
from itertools import pairwise

import torch
from anomalib.data import InferenceBatch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from proxyano_plugin.models.base import to_model_channels

SUPPORTED_IMAGE_SIZES = (64, 128)
BASE_RESOLUTION = 4  # the generator starts from, and the critic ends at, a 4x4 feature map
LATENT_PRIORS = ("uniform", "normal")

Normalization = Callable[[int], nn.Module]


def check_image_size(image_size: int) -> None:
    """Refuse sizes the architecture was not built for, naming the allowed ones."""
    if image_size not in SUPPORTED_IMAGE_SIZES:
        allowed = " or ".join(str(size) for size in SUPPORTED_IMAGE_SIZES)
        msg = f"FAnoGAN supports image_size {allowed} (square), got {image_size}"
        raise ValueError(msg)


def stage_widths(dim: int, image_size: int) -> list[int]:
    """Feature widths from full resolution down to 4x4: 64 px -> [d, 2d, 4d, 8d, 8d]; 128 px adds one 8d."""
    levels = int(math.log2(image_size // BASE_RESOLUTION))
    return [dim * min(2**level, 8) for level in range(levels + 1)]


def upsample(x: torch.Tensor) -> torch.Tensor:
    """2x nearest-neighbour upsampling (the original's four-copy depth-to-space)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def layer_norm(channels: int) -> nn.Module:
    """The original's critic LayerNorm: statistics over (C, H, W) per sample, affine per channel."""
    return nn.GroupNorm(1, channels, eps=1e-5)


class ResidualBlock(nn.Module):
    """Pre-activation residual block that halves (``down``) or doubles (``up``) the resolution."""

    def __init__(self, in_channels: int, out_channels: int, resample: str, norm: Normalization) -> None:
        super().__init__()
        self.resample = resample
        mid_channels = in_channels if resample == "down" else out_channels
        self.norm1 = norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False)
        self.norm2 = norm(mid_channels)
        self.conv2 = nn.Conv2d(mid_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(x))
        if self.resample == "up":
            out = self.conv2(F.relu(self.norm2(self.conv1(upsample(out)))))
            return self.shortcut(upsample(x)) + out
        out = F.avg_pool2d(self.conv2(F.relu(self.norm2(self.conv1(out)))), 2)
        return self.shortcut(F.avg_pool2d(x, 2)) + out


class Generator(nn.Module):
    """z -> linear -> 4x4x8d -> up blocks -> BatchNorm, ReLU, 3x3 conv -> tanh image in [-1, 1]."""

    def __init__(self, out_channels: int, image_size: int, dim: int, latent_dim: int) -> None:
        super().__init__()
        widths = list(reversed(stage_widths(dim, image_size)))
        self.start_channels = widths[0]
        self.project = nn.Linear(latent_dim, widths[0] * BASE_RESOLUTION**2)
        self.blocks = nn.Sequential(*(ResidualBlock(cin, cout, "up", nn.BatchNorm2d) for cin, cout in pairwise(widths)))
        self.head = nn.Sequential(
            nn.BatchNorm2d(widths[-1]),
            nn.ReLU(),
            nn.Conv2d(widths[-1], out_channels, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(-1, self.start_channels, BASE_RESOLUTION, BASE_RESOLUTION)
        return self.head(self.blocks(x))


class DownsamplingNetwork(nn.Module):
    """3x3 conv -> down blocks to 4x4 -> flatten: the trunk shared by the critic and the encoder."""

    def __init__(self, in_channels: int, image_size: int, dim: int, norm: Normalization) -> None:
        super().__init__()
        widths = stage_widths(dim, image_size)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.blocks = nn.Sequential(*(ResidualBlock(cin, cout, "down", norm) for cin, cout in pairwise(widths)))
        self.out_features = widths[-1] * BASE_RESOLUTION**2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(images)).flatten(1)


class Critic(nn.Module):
    """WGAN critic; ``features`` (the input of its last linear layer) is f-AnoGAN's ``f(x)``."""

    def __init__(self, in_channels: int, image_size: int, dim: int) -> None:
        super().__init__()
        self.trunk = DownsamplingNetwork(in_channels, image_size, dim, layer_norm)
        self.head = nn.Linear(self.trunk.out_features, 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images)).squeeze(1)


class Encoder(nn.Module):
    """izi_f encoder: the critic's trunk with BatchNorm, a linear map to z and a tanh."""

    def __init__(self, in_channels: int, image_size: int, dim: int, latent_dim: int) -> None:
        super().__init__()
        self.trunk = DownsamplingNetwork(in_channels, image_size, dim, nn.BatchNorm2d)
        self.head = nn.Linear(self.trunk.out_features, latent_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.trunk(images)))


def izif_terms(
    images: torch.Tensor,
    reconstructions: torch.Tensor,
    image_features: torch.Tensor,
    reconstruction_features: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image ``MSE(x, G(E(x)))`` and ``MSE(f(x), f(G(E(x))))``: both the encoder loss and the score."""
    image_term = (images - reconstructions).square().flatten(1).mean(dim=1)
    feature_term = (image_features - reconstruction_features).square().mean(dim=1)
    return image_term, feature_term


class FAnoGANModel(nn.Module):
    """Generator, critic and encoder, plus the f-AnoGAN inference path.

    Args:
        in_channels: Channels the networks see (anomalib's RGB batch is averaged to 1 for grayscale).
        image_size: 64 or 128 (one more residual stage at 128).
        dim: Base width ``DIM`` of the original code (64); stages use d, 2d, 4d, 8d (capped at 8d).
        latent_dim: Size of z (original: 128).
        latent_prior: ``"uniform"`` on [-1, 1] (matches the encoder's tanh range) or ``"normal"``.
        kappa: Weight of the feature term in the score and the encoder loss (original: 1.0).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 64,
        dim: int = 64,
        latent_dim: int = 128,
        latent_prior: str = "uniform",
        kappa: float = 1.0,
    ) -> None:
        super().__init__()
        check_image_size(image_size)
        if latent_prior not in LATENT_PRIORS:
            msg = f"FAnoGAN latent_prior must be one of {', '.join(LATENT_PRIORS)}, got {latent_prior!r}"
            raise ValueError(msg)
        self.in_channels = in_channels
        self.image_size = image_size
        self.latent_dim = latent_dim
        self.latent_prior = latent_prior
        self.kappa = kappa
        self.generator = Generator(in_channels, image_size, dim, latent_dim)
        self.critic = Critic(in_channels, image_size, dim)
        self.encoder = Encoder(in_channels, image_size, dim, latent_dim)

    def to_model_space(self, images: torch.Tensor) -> torch.Tensor:
        """anomalib's [0, 1] batch -> the networks' channels and [-1, 1] range, checking the size."""
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            msg = (
                f"FAnoGAN was built for {self.image_size}x{self.image_size} images, got "
                f"{images.shape[-2]}x{images.shape[-1]}; let its pre-processor resize them"
            )
            raise ValueError(msg)
        return to_model_channels(images, self.in_channels, "FAnoGAN") * 2 - 1

    def sample_latent(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Draw z from the prior the generator is trained on."""
        if self.latent_prior == "uniform":
            return torch.rand(batch_size, self.latent_dim, device=device) * 2 - 1
        return torch.randn(batch_size, self.latent_dim, device=device)

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Score = ``MSE(x, G(E(x))) + kappa * MSE(f(x), f(G(E(x))))``; map = ``|x - G(E(x))|`` (channel mean)."""
        model_images = self.to_model_space(images)
        reconstructions = self.generator(self.encoder(model_images))
        image_term, feature_term = izif_terms(
            model_images,
            reconstructions,
            self.critic.features(model_images),
            self.critic.features(reconstructions),
        )
        anomaly_map = (model_images - reconstructions).abs().mean(dim=1, keepdim=True)
        return InferenceBatch(pred_score=image_term + self.kappa * feature_term, anomaly_map=anomaly_map)
