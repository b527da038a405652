"""Pseudo-abnormal proxies: image patches pasted onto the superpixel image.

ProxyAno trains its Image Reconstruction Module to map such corrupted proxies back to the *normal*
image, so at test time it does not faithfully reproduce whatever abnormal structure slips through the
Proxy Extraction Module. Patch geometry follows CutPaste (Li et al., CVPR 2021): area 2-15 % of the image,
aspect ratio 0.3-3.3, cut from the same image at one place and pasted at another.
"""

import math

import torch


def check_corruption(prefix: str, probability: float, area_range: tuple[float, float]) -> None:
    """The checks both corruptions share, with their ProxyAno parameter names (``paste_...``, ``blob_...``)."""
    if not 0 <= probability <= 1:
        msg = f"{prefix}_probability must be in [0, 1], got {probability}"
        raise ValueError(msg)
    if not 0 < area_range[0] <= area_range[1] < 1:
        msg = f"{prefix}_area_range must satisfy 0 < low <= high < 1, got {tuple(area_range)}"
        raise ValueError(msg)


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
        check_corruption("paste", probability, area_range)
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


class BlobShifter:
    """Shift the intensity of one random lesion-shaped blob per image, with probability ``probability``.

    A lesion in a superpixel image is a few flat regions of unusual intensity, not a textured patch; in an
    image it is a smooth-edged region whose intensity departs from the tissue around it while keeping its
    texture. One generator serves both: the blob (an ellipse with a lobed, randomly rotated outline and a
    one-pixel soft edge) is added as ``values + shift * mask``, so a flat proxy region stays flat and an
    image region keeps its texture. Blob centres are drawn from pixels brighter than ``foreground`` (inside
    the head), shifts uniformly from ``+-shift_range`` (brighter or darker than the tissue). With
    ``flatten_probability`` a blob instead replaces what lies under it by one level, its mean there plus the
    shift: a painted or homogeneous lesion has no texture, and a network that restores only intensity keeps its
    flat interior. Everything is drawn as batched tensors: no Python loop over images.

    Args:
        probability: Chance that an image gets a blob.
        area_range: Blob area as a fraction of the image area.
        shift_range: Magnitude range of the intensity shift, in the [0, 1] intensity scale.
        foreground: Intensity above which a pixel may be a blob centre.
        flatten_probability: Chance that a blob flattens the region under it instead of shifting it.
    """

    def __init__(
        self,
        probability: float = 0.5,
        area_range: tuple[float, float] = (0.005, 0.05),
        shift_range: tuple[float, float] = (0.15, 0.5),
        foreground: float = 0.05,
        flatten_probability: float = 0.0,
    ) -> None:
        check_corruption("blob", probability, area_range)
        if not 0 <= flatten_probability <= 1:
            msg = f"blob_flatten_probability must be in [0, 1], got {flatten_probability}"
            raise ValueError(msg)
        if not 0 < shift_range[0] <= shift_range[1] <= 1:
            msg = f"blob_shift_range must satisfy 0 < low <= high <= 1, got {tuple(shift_range)}"
            raise ValueError(msg)
        self.probability = probability
        self.area_range = area_range
        self.shift_range = shift_range
        self.foreground = foreground
        self.flatten_probability = flatten_probability

    def masks(self, images: torch.Tensor) -> torch.Tensor:
        """Soft blob masks ``[B, 1, H, W]`` in [0, 1] (all zero for images left clean)."""
        batch, _, height, width = images.shape
        device = images.device
        weights = (images.mean(dim=1).flatten(1) > self.foreground).float() + 1e-6  # empty slices: anywhere
        centres = torch.multinomial(weights, 1).squeeze(1)
        centre_y = (centres // width).float().view(batch, 1, 1)
        centre_x = (centres % width).float().view(batch, 1, 1)
        area = torch.empty(batch, device=device).uniform_(*self.area_range) * height * width
        radius = torch.sqrt(area / math.pi).view(batch, 1, 1)
        elongation = torch.empty(batch, 1, 1, device=device).uniform_(-0.4, 0.4).exp()
        angle = torch.rand(batch, 1, 1, device=device) * math.pi
        ys = torch.arange(height, device=device, dtype=torch.float32).view(1, -1, 1) - centre_y
        xs = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, -1) - centre_x
        along = xs * angle.cos() + ys * angle.sin()
        across = -xs * angle.sin() + ys * angle.cos()
        distance = torch.sqrt((along / elongation) ** 2 + (across * elongation) ** 2)
        polar = torch.atan2(across, along).unsqueeze(-1)
        orders = torch.arange(2, 5, device=device, dtype=torch.float32)
        amplitudes = torch.empty(batch, 1, 1, 3, device=device).uniform_(0, 0.15)
        phases = torch.rand(batch, 1, 1, 3, device=device) * 2 * math.pi
        outline = radius * (1 + (amplitudes * torch.cos(orders * polar + phases)).sum(-1))
        masks = torch.sigmoid(3 * (outline - distance))  # soft edge about one pixel wide
        chosen = (torch.rand(batch, device=device) < self.probability).float().view(batch, 1, 1)
        return (masks * chosen).unsqueeze(1)

    def __call__(self, values: torch.Tensor, images: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``values`` with blobs shifted in, clipped to [0, 1], and the ``[B, 1, H, W]`` soft mask.

        ``images`` (default ``values``) decide where blobs may sit; neither input is modified.
        """
        if self.probability == 0:
            return values, values.new_zeros(values.shape[0], 1, *values.shape[2:])
        masks = self.masks(values if images is None else images)
        batch = values.shape[0]
        magnitude = torch.empty(batch, device=values.device).uniform_(*self.shift_range)
        sign = torch.where(torch.rand(batch, device=values.device) < 0.5, -1.0, 1.0)
        shift = (magnitude * sign).view(batch, 1, 1, 1)
        if self.flatten_probability == 0:  # draws no more random numbers: earlier runs stay reproducible
            return (values + shift * masks).clamp(0, 1), masks
        level = (values * masks).sum(dim=(2, 3), keepdim=True) / masks.sum(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        flat = (torch.rand(batch, device=values.device) < self.flatten_probability).float().view(batch, 1, 1, 1)
        target = flat * (level + shift) + (1 - flat) * (values + shift)  # one level, or the region shifted
        return (values + (target - values) * masks).clamp(0, 1), masks
