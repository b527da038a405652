"""MemAE-style memory for the Proxy Extraction Module's bottleneck.

Gong et al., "Memorizing Normality to Detect Anomaly" (ICCV 2019): every bottleneck feature vector is
replaced by a sparse convex combination of learned memory items. Trained on normals only, the items can
only express normal anatomy, so an abnormal input is pulled towards a normal proxy.
"""

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

ITEM_STD = 0.5


def hard_shrink_relu(weights: torch.Tensor, threshold: float, eps: float = 1e-12) -> torch.Tensor:
    """Zero addressing weights at or below ``threshold`` and L1-renormalise (MemAE eq. 7).

    MemAE writes the shrinkage as ``relu(w - t) * w / (|w - t| + eps)`` to keep it differentiable; that is
    ``w`` (gradient 1) where ``w > t`` and 0 (gradient 0) elsewhere, up to ``eps``. A mask gives the same
    values and gradients in two passes over the ``[locations, items]`` weights instead of five: measured on
    one CPU thread at 64 px, inference 1.1x faster, the PEM's training step 1.1x (default widths) to 1.35x
    (``widths=[8, 16, 32, 64]``) faster.
    """
    if threshold <= 0:
        return weights
    shrunk = weights * (weights > threshold)
    return shrunk / shrunk.sum(dim=1, keepdim=True).clamp_min(eps)


def addressing_entropy(weights: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean entropy of the addressing weights; minimising it makes the addressing sparse (MemAE eq. 9)."""
    return -(weights * torch.log(weights + eps)).sum(dim=1).mean()


class MemoryModule(nn.Module):
    """Per-location memory addressing over ``num_items`` learned items of ``feature_dim`` channels.

    Args:
        num_items: Number of memory items N.
        feature_dim: Channels of the bottleneck feature map.
        shrink_threshold: Hard-shrinkage threshold on the softmax weights (MemAE uses 1/N..3/N scale
            values; 0 disables shrinkage).
    """

    def __init__(self, num_items: int, feature_dim: int, shrink_threshold: float) -> None:
        super().__init__()
        if num_items < 1:
            msg = f"memory_size must be >= 1, got {num_items}"
            raise ValueError(msg)
        if not 0 <= shrink_threshold < 1:
            msg = f"memory_shrink_threshold must be in [0, 1), got {shrink_threshold}"
            raise ValueError(msg)
        # MemAE initialises items uniformly in +-1/sqrt(C). With BatchNorm-ReLU features (norm ~8 for C=128)
        # that gives near-uniform addressing (max weight ~1/N), which the hard shrinkage zeroes entirely:
        # measured on the demo, 57 % of locations read nothing and the PEM never learned. Items with
        # std ITEM_STD make the initial addressing peaked enough (max weight ~0.3) for shrinkage to keep
        # a few dozen items per location.
        self.items = nn.Parameter(torch.randn(num_items, feature_dim) * ITEM_STD)
        self.shrink_threshold = shrink_threshold

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the memory read-out (same shape as ``features``) and the ``[B*H*W, N]`` weights."""
        batch, channels, height, width = features.shape
        queries = features.permute(0, 2, 3, 1).reshape(-1, channels)
        weights = F.softmax(queries @ self.items.t(), dim=1)
        weights = hard_shrink_relu(weights, self.shrink_threshold)
        read_out = weights @ self.items
        return read_out.reshape(batch, height, width, channels).permute(0, 3, 1, 2), weights
