"""ProxyAno's training objective: proxy prediction + memory sparsity + image reconstruction."""

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from proxyano_plugin.models.image_errors import gaussian_kernel, ssim_error

from .memory import addressing_entropy

# The SSIM window of the loss: the 3 px Gaussian of the `ssim` scoring candidate that the large-lesion overlay
# selects, so training and scoring judge the same local statistics.
SSIM_LOSS_SIGMA = 3.0


class ProxyAnoLoss(nn.Module):
    """Sum of the terms below; each is also returned for logging.

    - ``pem``: MSE between the predicted and the extracted proxy (the PEM's target); absent without a PEM
      (``reconstruct_from="image"``).
    - ``entropy``: MemAE addressing entropy summed over the PEM's memories, weighted by ``entropy_weight``.
    - ``irm``: the reconstruction error between the IRM's output on (pseudo-abnormal) extracted proxies and
      the normal image: MSE, plus ``ssim_weight`` times the mean of 1 - SSIM (3 px window) when that is > 0.
    - ``irm_predicted``: the same error between the IRM's output on the PEM's *predicted* proxy (detached) and
      the image, weighted by ``predicted_proxy_weight``; it closes the gap between training the IRM on
      extracted proxies and running it on predicted ones at test time.

    An MSE-trained reconstruction is blurred where it is unsure, and an SSIM score reads that blur as lost
    structure on normal tissue too; the SSIM term (Bergmann et al., VISAPP 2019, for autoencoders) asks the IRM
    for the local contrast and structure that score then compares.
    """

    def __init__(self, entropy_weight: float, predicted_proxy_weight: float, ssim_weight: float = 0.0) -> None:
        super().__init__()
        if isinstance(ssim_weight, bool) or not isinstance(ssim_weight, int | float) or not ssim_weight >= 0:
            msg = f"ssim_loss_weight must be a number >= 0 (0: MSE only), got {ssim_weight!r}"
            raise ValueError(msg)
        self.entropy_weight = entropy_weight
        self.predicted_proxy_weight = predicted_proxy_weight
        self.ssim_weight = ssim_weight
        self.register_buffer("ssim_window", gaussian_kernel(SSIM_LOSS_SIGMA), persistent=False)

    def reconstruction_error(self, reconstructions: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """MSE, plus ``ssim_weight`` x the mean 1 - SSIM when that weight is > 0."""
        error = F.mse_loss(reconstructions, images)
        if self.ssim_weight > 0:
            error = error + self.ssim_weight * ssim_error(images, reconstructions, self.ssim_window).mean()
        return error

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
        terms["irm"] = self.reconstruction_error(reconstructions, images)
        if memory_weights and self.entropy_weight > 0:
            entropy = torch.stack([addressing_entropy(weights) for weights in memory_weights]).sum()
            terms["entropy"] = self.entropy_weight * entropy
        if reconstructions_from_predicted is not None:
            irm_predicted = self.reconstruction_error(reconstructions_from_predicted, images)
            terms["irm_predicted"] = self.predicted_proxy_weight * irm_predicted
        terms["loss"] = torch.stack(list(terms.values())).sum()
        return terms
