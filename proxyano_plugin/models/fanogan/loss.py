"""Losses of f-AnoGAN's two training stages.

Stage 1 is WGAN-GP (Gulrajani et al., NeurIPS 2017) as in the original code: the critic minimises
``D(fake) - D(real) + lambda * (||grad D(x_interp)|| - 1)^2`` on random interpolates, the generator
minimises ``-D(fake)``. Stage 2 trains the izi_f encoder with G and D frozen.
"""

from typing import NamedTuple

import torch

from .torch_model import Critic, izif_terms


class CriticLoss(NamedTuple):
    """The critic objective and its two readable parts."""

    loss: torch.Tensor
    wasserstein_gap: torch.Tensor  # mean D(real) - mean D(fake): the critic's estimate of the W1 distance
    gradient_penalty: torch.Tensor


def gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Mean of ``(||grad_x D(x)||_2 - 1)^2`` over points drawn uniformly between real and fake pairs."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    interpolates = (real + alpha * (fake - real)).requires_grad_(True)
    (gradients,) = torch.autograd.grad(critic(interpolates).sum(), interpolates, create_graph=True)
    return (gradients.flatten(1).norm(dim=1) - 1).square().mean()


def critic_loss(critic: Critic, real: torch.Tensor, fake: torch.Tensor, penalty_weight: float) -> CriticLoss:
    """WGAN-GP critic loss; ``fake`` must be detached from the generator."""
    gap = critic(real).mean() - critic(fake).mean()
    penalty = gradient_penalty(critic, real, fake)
    return CriticLoss(-gap + penalty_weight * penalty, gap.detach(), penalty.detach())


def generator_loss(critic: Critic, fake: torch.Tensor) -> torch.Tensor:
    """WGAN generator loss ``-mean D(G(z))``."""
    return -critic(fake).mean()


def izif_loss(
    critic: Critic,
    images: torch.Tensor,
    reconstructions: torch.Tensor,
    kappa: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """izi_f encoder loss ``MSE(x, G(E(x))) + kappa * MSE(f(x), f(G(E(x))))`` and its two terms."""
    with torch.no_grad():
        image_features = critic.features(images)
    image_term, feature_term = izif_terms(images, reconstructions, image_features, critic.features(reconstructions))
    image_term, feature_term = image_term.mean(), feature_term.mean()
    return image_term + kappa * feature_term, image_term.detach(), feature_term.detach()
