"""Pseudo-abnormal proxies: image patches pasted onto the superpixel image.

ProxyAno trains its Image Reconstruction Module to map such corrupted proxies back to the *normal*
image, so at test time it does not faithfully reproduce whatever abnormal structure slips through the
Proxy Extraction Module. Patch geometry follows CutPaste (Li et al., CVPR 2021): area 2-15 % of the image,
aspect ratio 0.3-3.3, cut from the same image at one place and pasted at another.
"""

import math

import torch


class PatchPaster:
    """Paste one random patch of each image onto its proxy, with probability ``probability``.

    Args:
        probability: Chance that an image's proxy is corrupted.
        area_range: Patch area as a fraction of the image area.
        aspect_range: Patch height/width ratio; sampled log-uniformly so 1/r and r are equally likely.
    """

    def __init__(
        self,
        probability: float = 0.5,
        area_range: tuple[float, float] = (0.02, 0.15),
        aspect_range: tuple[float, float] = (0.3, 3.3),
    ) -> None:
        if not 0 <= probability <= 1:
            msg = f"paste_probability must be in [0, 1], got {probability}"
            raise ValueError(msg)
        if not 0 < area_range[0] <= area_range[1] < 1:
            msg = f"paste_area_range must satisfy 0 < low <= high < 1, got {tuple(area_range)}"
            raise ValueError(msg)
        if not 0 < aspect_range[0] <= aspect_range[1]:
            msg = f"paste_aspect_range must satisfy 0 < low <= high, got {tuple(aspect_range)}"
            raise ValueError(msg)
        self.probability = probability
        self.area_range = area_range
        self.log_aspect_range = (math.log(aspect_range[0]), math.log(aspect_range[1]))

    def _patch_size(self, height: int, width: int) -> tuple[int, int]:
        area = torch.empty(1).uniform_(*self.area_range).item() * height * width
        aspect = math.exp(torch.empty(1).uniform_(*self.log_aspect_range).item())
        patch_h = min(height, max(1, round(math.sqrt(area * aspect))))
        patch_w = min(width, max(1, round(math.sqrt(area / aspect))))
        return patch_h, patch_w

    def __call__(self, proxies: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the corrupted proxies and the ``[B, 1, H, W]`` mask of pasted pixels.

        Neither input is modified; the training target stays the unmodified image.
        """
        corrupted = proxies.clone()
        mask = torch.zeros_like(proxies[:, :1])
        height, width = proxies.shape[-2:]
        chosen = torch.rand(proxies.shape[0]) < self.probability
        for index in torch.nonzero(chosen).flatten().tolist():
            patch_h, patch_w = self._patch_size(height, width)
            src_y, dst_y = torch.randint(0, height - patch_h + 1, (2,)).tolist()
            src_x, dst_x = torch.randint(0, width - patch_w + 1, (2,)).tolist()
            patch = images[index, :, src_y : src_y + patch_h, src_x : src_x + patch_w]
            corrupted[index, :, dst_y : dst_y + patch_h, dst_x : dst_x + patch_w] = patch
            mask[index, :, dst_y : dst_y + patch_h, dst_x : dst_x + patch_w] = 1
        return corrupted, mask
