"""ProxyAno's training objective: proxy prediction + memory sparsity + image reconstruction."""

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .memory import addressing_entropy


class ProxyAnoLoss(nn.Module):
    """Sum of the terms below; each is also returned for logging.

    - ``pem``: MSE between the predicted and the extracted proxy (the PEM's target); absent without a PEM
      (``reconstruct_from="image"``).
    - ``entropy``: MemAE addressing entropy summed over the PEM's memories, weighted by ``entropy_weight``.
    - ``irm``: MSE between the IRM's output on (pseudo-abnormal) extracted proxies and the normal image.
    - ``irm_predicted``: MSE between the IRM's output on the PEM's *predicted* proxy (detached) and the
      image, weighted by ``predicted_proxy_weight``; it closes the gap between training the IRM on
      extracted proxies and running it on predicted ones at test time.
    """

    def __init__(self, entropy_weight: float, predicted_proxy_weight: float) -> None:
        super().__init__()
        self.entropy_weight = entropy_weight
        self.predicted_proxy_weight = predicted_proxy_weight

    def forward(
        self,
        images: torch.Tensor,
        proxies: torch.Tensor,
        predicted_proxies: torch.Tensor | None,
        memory_weights: list[torch.Tensor],
        reconstructions: torch.Tensor,
        reconstructions_from_predicted: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        terms = {} if predicted_proxies is None else {"pem": F.mse_loss(predicted_proxies, proxies)}
        terms["irm"] = F.mse_loss(reconstructions, images)
        if memory_weights and self.entropy_weight > 0:
            entropy = torch.stack([addressing_entropy(weights) for weights in memory_weights]).sum()
            terms["entropy"] = self.entropy_weight * entropy
        if reconstructions_from_predicted is not None:
            terms["irm_predicted"] = self.predicted_proxy_weight * F.mse_loss(reconstructions_from_predicted, images)
        terms["loss"] = torch.stack(list(terms.values())).sum()
        return terms
