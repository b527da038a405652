"""Jitter of training images, for what differs between subjects and scans but is not an anomaly.

Where the head sits in the frame: a network trained on heads that rarely reach the image border learns that
the border is dark, and reconstructs a head that does reach it (a larger head, another field of view) with a
dark rim that scores like a lesion (measured on the BrainMRIDemo: 13 % of training slices touch the top edge,
32 % of the validation subjects' slices, whose normals then scored twice as high). ``TranslationJitter``
shifts each training image and its proxy together, zero-filled, as a shifted field of view would.

Intensity scale: a reconstruction model trained on a few subjects learns their intensity scale too; a new
subject's scan with another gain, contrast curve or coil shading is then reconstructed worse everywhere, and
its normal slices score like lesions. Jittering each training image (and its proxy, by the same transform)
teaches the networks to reproduce the image they are given, whatever its scale. The transforms are smooth and
pointwise (gamma, gain, a low-order bias field), so the jittered proxy is the proxy of the jittered image up to
the variation inside a superpixel.

Left and right: a set that mixes scans facing either way (sagittal slices, radiological and neurological
display conventions) holds a normal slice's mirror image among its normals. ``FlipJitter`` mirrors a training
image and its proxy together, a second normal from each one for a network that sees few subjects. The proxy
of the mirrored image is the mirrored proxy up to the superpixel grid's own left-right asymmetry.

All act after the proxy cache: it keeps serving the proxies of the unjittered images.
"""

import torch
from torch.nn import functional as F  # noqa: N812


class Jitter:
    """One random transform per training image, chosen with probability ``probability``, applied alike to
    every tensor given (an image batch and its proxies). Subclasses say what the transform is."""

    parameter = "jitter"
    """The ProxyAno argument that sets ``probability``, for error messages."""

    def __init__(self, probability: float) -> None:
        if not 0 <= probability <= 1:
            msg = f"{self.parameter} must be a probability in [0, 1], got {probability}"
            raise ValueError(msg)
        self.probability = probability

    def __call__(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Transform every tensor (``[B, C, H, W]`` in [0, 1], same batch and size; none is modified)."""
        if self.probability == 0:
            return tensors
        chosen = torch.rand(tensors[0].shape[0], device=tensors[0].device) < self.probability
        return self.apply(tensors, chosen.float())

    def apply(self, tensors: tuple[torch.Tensor, ...], chosen: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The transform, drawn per image; ``chosen`` (``[B]``, 0 or 1) marks the images to change."""
        raise NotImplementedError


class IntensityJitter(Jitter):
    """Per image, with probability ``probability``: ``x -> clip(gain * bias_field * x ** gamma, 0, 1)``.

    Ranges follow what MRI scans of one protocol differ by (and what the BrainMRIDemo generator draws):
    ``gamma = exp(U(-log_gamma, log_gamma))``, ``gain = 1 + U(-gain, gain)``, and a multiplicative bias field,
    the exponential of a random quadratic in the image coordinates whose peak magnitude is ``U(0, bias)``.
    Zero stays zero, so the background stays dark. Batched: no Python loop over images.

    Args:
        probability: Chance that an image is jittered (0 turns the jitter off).
        log_gamma: Half-range of the log of the gamma exponent.
        gain: Half-range of the relative gain.
        bias: Largest peak magnitude of the log bias field.
    """

    parameter = "intensity_jitter"

    def __init__(self, probability: float = 0.5, log_gamma: float = 0.3, gain: float = 0.15, bias: float = 0.2) -> None:
        super().__init__(probability)
        self.log_gamma = log_gamma
        self.gain = gain
        self.bias = bias

    def apply(self, tensors: tuple[torch.Tensor, ...], chosen: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch, _, height, width = tensors[0].shape
        device = tensors[0].device

        def uniform(half_range: float) -> torch.Tensor:
            return torch.empty(batch, 1, 1, 1, device=device).uniform_(-half_range, half_range)

        chosen = chosen.view(batch, 1, 1, 1)
        gamma = (uniform(self.log_gamma) * chosen).exp()
        ys = torch.linspace(-1, 1, height, device=device).view(1, 1, -1, 1)
        xs = torch.linspace(-1, 1, width, device=device).view(1, 1, 1, -1)
        terms = torch.stack(torch.broadcast_tensors(ys, xs, ys * ys, xs * xs, ys * xs), dim=-1)
        field = (terms * torch.randn(batch, 1, 1, 1, terms.shape[-1], device=device)).sum(-1)
        peak = field.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
        strength = torch.rand(batch, 1, 1, 1, device=device) * self.bias * chosen
        scale = (1 + uniform(self.gain) * chosen) * (field / peak * strength).exp()
        return tuple((tensor.clamp_min(0) ** gamma * scale).clamp(0, 1) for tensor in tensors)


class TranslationJitter(Jitter):
    """Per image, with probability ``probability``: shift by up to ``max_shift`` of its size in each axis.

    Whole pixels, zero-filled: content leaves the frame on one side and background enters on the other, as
    when a head reaches the border. Batched (one ``grid_sample`` for all tensors); the shift of an image and
    of its proxy is the same.

    Args:
        probability: Chance that an image is shifted (0 turns the jitter off).
        max_shift: Largest shift as a fraction of the image height and width.
    """

    parameter = "translation_jitter"

    def __init__(self, probability: float = 0.5, max_shift: float = 0.1) -> None:
        super().__init__(probability)
        self.max_shift = max_shift

    def apply(self, tensors: tuple[torch.Tensor, ...], chosen: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch, _, height, width = tensors[0].shape
        device = tensors[0].device
        sizes = torch.tensor([width, height], device=device, dtype=torch.float32)
        limits = (self.max_shift * sizes).floor()
        pixels = (torch.rand(batch, 2, device=device) * 2 - 1) * limits
        pixels = pixels.round() * chosen[:, None]
        theta = torch.zeros(batch, 2, 3, device=device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        theta[:, :, 2] = -2 * pixels / sizes  # output pixel p samples input pixel p - shift
        grid = F.affine_grid(theta, [batch, 1, height, width], align_corners=False)
        stacked = torch.cat(tensors, dim=1)
        shifted = F.grid_sample(stacked, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        return tuple(shifted.split([tensor.shape[1] for tensor in tensors], dim=1))


class FlipJitter(Jitter):
    """Per image, with probability ``probability``: mirror it left-right (the last axis), its proxy alike.

    Only for sets whose normals face either way: on a set scanned in one orientation a mirrored slice is
    itself an anomaly to learn. Batched (``torch.where`` over the flipped batch).

    Args:
        probability: Chance that an image is mirrored (0 turns the jitter off).
    """

    parameter = "flip_jitter"

    def apply(self, tensors: tuple[torch.Tensor, ...], chosen: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mirror = chosen.view(-1, 1, 1, 1).bool()
        return tuple(torch.where(mirror, tensor.flip(-1), tensor) for tensor in tensors)
