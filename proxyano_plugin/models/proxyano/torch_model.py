"""PyTorch networks of ProxyAno: the Proxy Extraction Module (PEM) and the Image Reconstruction Module (IRM).

Inference is pure torch (no proxy extractor, no numpy): image -> PEM -> predicted proxy -> IRM ->
reconstruction -> error map. Proxies (superpixel images) are only training targets, so the exported graph
never needs scikit-image.
"""

from collections.abc import Sequence
from itertools import pairwise
from math import prod
from typing import NamedTuple

import torch
from anomalib.data import InferenceBatch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from proxyano_plugin.models.autoencoder.torch_model import bottleneck_mlp
from proxyano_plugin.models.base import to_model_channels
from proxyano_plugin.models.image_errors import (
    gaussian_blur,
    gradient_l1,
    optional_kernel,
    relative_to_head,
    ssim_error,
    topk_mean,
)

from .memory import MemoryModule

HEAD_BIAS = -3.0


def fold_blocks(images: torch.Tensor, factor: int) -> torch.Tensor:
    """``pixel_unshuffle(images, factor)`` as a stride-``factor`` convolution with one-hot weights.

    The same numbers, in the same channel order; exported, ONNX Runtime runs a convolution faster than the
    reshape and 6-D transpose that ``pixel_unshuffle`` becomes.
    """
    return F.conv2d(images, fold_weight(images.shape[1], factor, images), stride=factor)


def fold_weight(channels: int, factor: int, like: torch.Tensor) -> torch.Tensor:
    """:func:`fold_blocks`' one-hot kernel, ``[channels * f**2, channels, f, f]``, with ``like``'s dtype and device."""
    folded = channels * factor**2
    return torch.eye(folded, dtype=like.dtype, device=like.device).view(folded, channels, factor, factor)


def unfold_blocks(features: torch.Tensor, head: nn.Conv2d, factor: int) -> torch.Tensor:
    """``pixel_shuffle(head(features), factor)`` for a 1x1 ``head``, as one transposed convolution.

    The same numbers: each input location writes its ``factor x factor`` block, bias included (through a
    channel of ones). Exported, ONNX Runtime ran this 6x faster than the 1x1 convolution followed by
    ``DepthToSpace``, which cost a fifth of a ``space_to_depth`` network with a full-resolution head.
    """
    out_channels = head.out_channels // factor**2
    weight = head.weight.view(out_channels, factor, factor, -1).permute(3, 0, 1, 2)
    bias = head.bias.view(1, out_channels, factor, factor)
    ones = torch.ones_like(features[:, :1])
    return F.conv_transpose2d(torch.cat([features, ones], dim=1), torch.cat([weight, bias]), stride=factor)


def pointwise(features: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(features)`` for a 1x1 ``conv``, as one matrix product over the channels.

    The same numbers (the same parameters, so checkpoints load unchanged). Exported, ONNX Runtime blocks a
    convolution's channels by 8 or 16 and reorders its output: a 1x1 convolution to one channel at full
    resolution cost about half of the 3x3 convolution before it, where the matrix product costs a tenth.
    """
    flat = conv.weight.flatten(1) @ features.flatten(2)
    return flat.unflatten(2, features.shape[2:]) + conv.bias.view(1, -1, 1, 1)


class ConvBlock(nn.Sequential):
    """Two 3x3 conv + BatchNorm + ReLU layers (the P-Net convention)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Encoder(nn.Module):
    """Conv blocks with 2x max-pooling between them; returns every level's features (finest first).

    ``space_to_depth`` > 1 first folds each ``f x f`` pixel block into channels (:func:`fold_blocks`): the
    blocks then run at ``1/f`` of the resolution, ``f**2`` times cheaper, and no input pixel is dropped.
    """

    def __init__(self, in_channels: int, widths: Sequence[int], space_to_depth: int = 1) -> None:
        super().__init__()
        self.space_to_depth = space_to_depth
        channels = [in_channels * space_to_depth**2, *widths]
        self.blocks = nn.ModuleList(ConvBlock(cin, cout) for cin, cout in pairwise(channels))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = fold_blocks(images, self.space_to_depth) if self.space_to_depth > 1 else images
        for index, block in enumerate(self.blocks):
            if index > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            features.append(x)
        return features


SKIP_MERGES = ("concat", "add")
REFINE_NETWORKS = ("both", "pem", "irm")


class Decoder(nn.Module):
    """Bilinear 2x upsampling + conv blocks back to full resolution, with optional U-Net skips.

    ``skip_merge`` says how a skip joins the upsampled features: ``"concat"`` (U-Net) feeds both to the
    block's first convolution (3x the channels of the level); ``"add"`` first maps the coarser features to
    the level's width with a 1x1 convolution, run before upsampling (the two commute, and the coarse grid is
    4x smaller), and adds the skip (FPN-style): the block then convolves the level's width only, half the
    decoder's multiply-adds.

    ``space_to_depth`` > 1 undoes the encoder's: the head predicts ``f**2`` sub-pixels per location, which
    :func:`unfold_blocks` puts back at full resolution; with ``refine_width`` > 0 it predicts ``refine_width``
    features per full-resolution pixel instead, which :class:`FullResolutionHead` turns into the output beside
    the network's full-resolution input (``refine_input_channels`` of it; 0: none).
    """

    def __init__(
        self,
        widths: Sequence[int],
        out_channels: int,
        skips: bool,
        space_to_depth: int = 1,
        skip_merge: str = "concat",
        refine_width: int = 0,
        refine_input_channels: int = 0,
    ) -> None:
        super().__init__()
        self.skips = skips
        self.space_to_depth = space_to_depth
        add_skips = skips and check_skip_merge(skip_merge) == "add"
        levels = list(pairwise(reversed(widths)))
        self.projections = nn.ModuleList(nn.Conv2d(cin, cout, 1) for cin, cout in levels) if add_skips else None
        block_inputs = [cout if add_skips else cin + (cout if skips else 0) for cin, cout in levels]
        self.blocks = nn.ModuleList(ConvBlock(cin, cout) for cin, (_, cout) in zip(block_inputs, levels, strict=True))
        self.refine = None
        if check_refine_width(refine_width, space_to_depth):
            self.head = nn.Conv2d(widths[0], refine_width * space_to_depth**2, 1)
            self.refine = FullResolutionHead(refine_width, refine_input_channels, out_channels)
        else:
            self.head = nn.Conv2d(widths[0], out_channels * space_to_depth**2, 1)
            # Start from a dark image (sigmoid(-3) = 0.05): most pixels of a medical slice are background, and a
            # head starting at 0.5 spends the first hundreds of steps, and the error map, on the background.
            nn.init.constant_(self.head.bias, HEAD_BIAS)

    def forward(
        self,
        bottleneck: torch.Tensor,
        skip_features: Sequence[torch.Tensor] = (),
        full_resolution_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The output at full resolution; ``full_resolution_input`` feeds the refinement head (when it has one)."""
        x = bottleneck
        for level, block in enumerate(self.blocks):
            if self.projections is not None:  # skip_merge="add"
                x = self.projections[level](x)
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            if self.projections is not None:
                x = x + skip_features[-(level + 2)]
            elif self.skips:
                x = torch.cat([x, skip_features[-(level + 2)]], dim=1)
            x = block(x)
        if self.space_to_depth == 1:
            return torch.sigmoid(pointwise(x, self.head))
        if self.refine is not None:
            return self.refine(x, self.head, self.space_to_depth, full_resolution_input)
        return torch.sigmoid(unfold_blocks(x, self.head, self.space_to_depth))


class FullResolutionHead(nn.Module):
    """One 3x3 convolution at full resolution over a half-resolution decoder's unfolded features and the input.

    A ``space_to_depth`` network predicts each ``f x f`` block from one location's features, which blurs the
    detail that small lesions are judged against; this layer, ``9 * (width + inputs) * width`` multiply-adds per
    pixel, sees every pixel's neighbours and the input itself before the output.

    In eval mode the unfolding, the 3x3 convolution and its BatchNorm run as one transposed convolution of the
    half-resolution features and the folded input (:func:`unfold_then_conv3x3_kernel`): the same numbers with
    about half the multiply-adds and no full-resolution intermediate (the ``proxyano_fast.yaml`` overlay's
    exported network: 1.25x the throughput). Training keeps the layers one by one, so BatchNorm sees the batch.
    """

    def __init__(self, width: int, input_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(width + input_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Conv2d(width, out_channels, 1)
        nn.init.constant_(self.head.bias, HEAD_BIAS)

    def forward(
        self, features: torch.Tensor, unfold_head: nn.Conv2d, factor: int, inputs: torch.Tensor | None
    ) -> torch.Tensor:
        """The output from half-resolution ``features``, unfolded by ``unfold_head`` (see :func:`unfold_blocks`)."""
        if not self.training:
            return torch.sigmoid(pointwise(self.fused(features, unfold_head, factor, inputs), self.head))
        unfolded = unfold_blocks(features, unfold_head, factor)
        if inputs is not None:
            unfolded = torch.cat([unfolded, inputs], dim=1)
        return torch.sigmoid(pointwise(self.block(unfolded), self.head))

    def fused(
        self, features: torch.Tensor, unfold_head: nn.Conv2d, factor: int, inputs: torch.Tensor | None
    ) -> torch.Tensor:
        """``self.block`` (eval mode) of the unfolded features and the inputs, as one transposed convolution."""
        conv, norm = self.block[0], self.block[1]
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        weight = conv.weight * scale.view(-1, 1, 1, 1)
        width = unfold_head.out_channels // factor**2
        unfold_weight = unfold_head.weight.view(width, factor, factor, -1).permute(3, 0, 1, 2)
        unfold_bias = unfold_head.bias.view(1, width, factor, factor)
        half_resolution = [features, torch.ones_like(features[:, :1])]
        kernels = [unfold_then_conv3x3_kernel(torch.cat([unfold_weight, unfold_bias]), weight[:, :width])]
        if inputs is not None:
            half_resolution.append(fold_blocks(inputs, factor))
            # The folded input unfolds back through the same one-hot kernel, used as a transposed convolution.
            kernels.append(unfold_then_conv3x3_kernel(fold_weight(inputs.shape[1], factor, weight), weight[:, width:]))
        shift = norm.bias - norm.running_mean * scale
        fused = F.conv_transpose2d(torch.cat(half_resolution, 1), torch.cat(kernels), shift, stride=factor, padding=1)
        return F.relu(fused)


def unfold_then_conv3x3_kernel(unfold_weight: torch.Tensor, conv_weight: torch.Tensor) -> torch.Tensor:
    """The kernel of one transposed convolution that does a stride-``f`` ``f x f`` transposed convolution
    (``unfold_weight``, ``[in, mid, f, f]``) and then a 3x3 convolution with padding 1 (``conv_weight``,
    ``[out, mid, 3, 3]``): ``[in, out, f + 2, f + 2]``, used with stride ``f`` and padding 1.

    Each output pixel of the pair depends on the 3x3 unfolded pixels around it, so on at most 2x2 input locations;
    the composed kernel is the full 2-D convolution of the two kernels (itself a transposed convolution). Exact
    at the borders too: where the 3x3 convolution reads its zero padding, no input location writes.
    """
    return F.conv_transpose2d(unfold_weight, conv_weight.flip(2, 3).transpose(0, 1))


def check_refine_width(width: object, space_to_depth: int) -> int:
    """``width`` if it is a valid ``refine_width`` for this ``space_to_depth``, else a ValueError."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 0:
        msg = f"refine_width must be a non-negative integer (0: no full-resolution head), got {width!r}"
        raise ValueError(msg)
    if width and space_to_depth == 1:
        msg = "refine_width > 0 refines a half-resolution decoder: it needs space_to_depth > 1"
        raise ValueError(msg)
    return width


def check_refine_networks(networks: object) -> str:
    """``networks`` if it is a valid ``refine_networks``, else a ValueError naming the choices."""
    if networks not in REFINE_NETWORKS:
        msg = f"refine_networks must be one of {', '.join(REFINE_NETWORKS)}, got {networks!r}"
        raise ValueError(msg)
    return networks


def check_skip_merge(merge: object) -> str:
    """``merge`` if it is a valid ``skip_merge``, else a ValueError naming the choices."""
    if merge not in SKIP_MERGES:
        msg = f"skip_merge must be one of {', '.join(SKIP_MERGES)}, got {merge!r}"
        raise ValueError(msg)
    return merge


def check_space_to_depth(factor: object) -> int:
    """``factor`` if it is a valid ``space_to_depth`` (a positive int, not a bool), else a ValueError."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        msg = f"space_to_depth must be a positive integer (1: off), got {factor!r}"
        raise ValueError(msg)
    return factor


PEM_SKIPS = ("none", "plain", "memory")

# Width of the fully connected layers on each side of a global code (the plain Autoencoder's).
CODE_HIDDEN = 1024


class GlobalCode(nn.Module):
    """Squeezes the PEM's ``[B, C, h, w]`` bottleneck into ``code_size`` numbers and back (fully connected).

    A spatial bottleneck keeps one vector per location, so a lesion covering many locations can be written
    into it location by location; one code for the whole image can only hold what normal images share (the
    plain Autoencoder's bottleneck, which ranks large painted lesions where the spatial PEM does not). The
    memory, when there is one, reads the code as a single query. LayerNorm, not the Autoencoder's BatchNorm:
    a training set whose size leaves one image in an epoch's last batch cannot train BatchNorm1d on it.
    """

    def __init__(self, shape: tuple[int, int, int], code_size: int, memory: MemoryModule | None) -> None:
        super().__init__()
        self.shape = shape
        self.squeeze = bottleneck_mlp(prod(shape), CODE_HIDDEN, code_size, nn.LayerNorm)
        self.memory = memory
        self.expand = bottleneck_mlp(code_size, CODE_HIDDEN, prod(shape), nn.LayerNorm)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The bottleneck rebuilt from the code, and the memory's addressing weights (empty without one)."""
        code = self.squeeze(features.flatten(1))
        weights = []
        if self.memory is not None:
            read_out, code_weights = self.memory(code[:, :, None, None])
            code, weights = read_out.flatten(1), [code_weights]
        return self.expand(code).view(-1, *self.shape), weights


class ProxyExtractionModule(nn.Module):
    """Encoder -> memory -> decoder: predicts the proxy (superpixel image) of an image.

    ``skips`` decides where detail may pass: ``"none"`` (one bottleneck read through the memory, MemAE's
    layout: the prediction is the memory's best coarse guess), ``"plain"`` (U-Net skips around the memory)
    or ``"memory"`` (every skip level is read through a memory of its own, as DAAD does on skips: fine
    detail reaches the decoder only as a mix of items learned on normal images). ``code_size`` > 0 (with no
    skips) squeezes the bottleneck into one global code first (:class:`GlobalCode`); ``image_size`` then sets
    the bottleneck's grid. ``refine_width`` > 0 ends a half-resolution decoder with a
    :class:`FullResolutionHead`, which also sees the image when the skips are plain ones (elsewhere the image
    would bypass the memory or the code).
    """

    def __init__(
        self,
        channels: int,
        widths: Sequence[int],
        memory_size: int,
        shrink_threshold: float,
        skips: str = "none",
        space_to_depth: int = 1,
        skip_merge: str = "concat",
        code_size: int = 0,
        image_size: int | None = None,
        refine_width: int = 0,
    ) -> None:
        super().__init__()
        if skips not in PEM_SKIPS:
            msg = f"pem_skips must be one of {', '.join(PEM_SKIPS)}, got {skips!r}"
            raise ValueError(msg)
        self.encoder = Encoder(channels, widths, space_to_depth)
        with_memory = memory_size > 0
        self.code = None
        if code_size:
            grid = check_code_size(code_size, skips, image_size, len(widths), space_to_depth)
            memory = MemoryModule(memory_size, code_size, shrink_threshold) if with_memory else None
            self.code = GlobalCode((widths[-1], grid, grid), code_size, memory)
        levels = widths if skips == "memory" else widths[-1:]
        self.memories = nn.ModuleList(
            MemoryModule(memory_size, width, shrink_threshold)
            for width in (levels if with_memory and self.code is None else ())
        )
        self.skips = skips != "none"
        self.refine_from_image = skips == "plain"
        refine_inputs = channels if self.refine_from_image else 0
        self.decoder = Decoder(widths, channels, self.skips, space_to_depth, skip_merge, refine_width, refine_inputs)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return the predicted proxy and the addressing weights of every memory (empty without memory)."""
        features = self.encoder(images)
        weights = []
        first = len(features) - len(self.memories)  # the memories read the last levels, the bottleneck last
        for level, memory in enumerate(self.memories, start=first):
            features[level], level_weights = memory(features[level])
            weights.append(level_weights)
        if self.code is not None:
            features[-1], weights = self.code(features[-1])
        full_resolution_input = images if self.refine_from_image else None
        return self.decoder(features[-1], features if self.skips else (), full_resolution_input), weights


def check_code_size(code_size: object, skips: str, image_size: int | None, levels: int, space_to_depth: int) -> int:
    """The bottleneck's grid side for a valid ``pem_code_size``, else a ValueError that says what to change."""
    if isinstance(code_size, bool) or not isinstance(code_size, int) or code_size < 0:
        msg = f"pem_code_size must be a non-negative integer (0: spatial bottleneck), got {code_size!r}"
        raise ValueError(msg)
    if skips != "none":
        msg = f"pem_code_size > 0 needs pem_skips='none': skips would carry the image past the code (got {skips!r})"
        raise ValueError(msg)
    if image_size is None:
        msg = "pem_code_size > 0 needs the image_size (the fully connected layers are sized for its bottleneck)"
        raise ValueError(msg)
    return image_size // (2 ** (levels - 1) * space_to_depth)


class ImageReconstructionModule(nn.Module):
    """U-Net mapping a proxy back to the image it came from."""

    def __init__(
        self,
        channels: int,
        widths: Sequence[int],
        space_to_depth: int = 1,
        skip_merge: str = "concat",
        refine_width: int = 0,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(channels, widths, space_to_depth)
        self.decoder = Decoder(widths, channels, True, space_to_depth, skip_merge, refine_width, channels)

    def forward(self, proxies: torch.Tensor) -> torch.Tensor:
        features = self.encoder(proxies)
        return self.decoder(features[-1], features, proxies)


class ProxyAnoOutput(NamedTuple):
    """Everything the inference path computes, for figures and galleries."""

    image: torch.Tensor
    proxy: torch.Tensor
    reconstruction: torch.Tensor
    anomaly_map: torch.Tensor
    pred_score: torch.Tensor


RECONSTRUCT_FROM = ("predicted_proxy", "image")
ERROR_SIGNS = ("both", "brighter", "darker")
ERRORS = ("l1", "l2", "gradient", "ssim")


class Scoring(NamedTuple):
    """How a reconstruction is scored: the pixel error, the Gaussian smoothing (px) of its map, whether the
    image score is relative to the map's mean over the head (an image whose error is high everywhere, from noise
    or an unusual scan, then does not score high for that alone), and the Gaussian blur (px) of the difference
    before the error is taken (texture the proxy cannot carry then cancels instead of scoring; 0: none), which
    for the ``"ssim"`` error is the window of its local statistics instead, and the fraction of the map whose
    highest values the image score averages (a lesion covering a tenth of the head fills more than the top 1 %)."""

    error: str
    map_sigma: float
    relative: bool = False
    error_blur_sigma: float = 0.0
    topk: float = 0.01

    def check(self) -> None:
        if self.error not in ERRORS:
            msg = f"error must be one of {', '.join(ERRORS)}, got {self.error!r}"
            raise ValueError(msg)
        if not self.map_sigma >= 0:
            msg = f"map_sigma must be >= 0 (0: no smoothing), got {self.map_sigma!r}"
            raise ValueError(msg)
        if not self.error_blur_sigma >= 0:
            msg = f"error_blur_sigma must be >= 0 (0: no blur), got {self.error_blur_sigma!r}"
            raise ValueError(msg)
        if self.error == "ssim" and not self.error_blur_sigma > 0:
            msg = "error 'ssim' compares local statistics within a Gaussian window: set error_blur_sigma > 0 (px)"
            raise ValueError(msg)
        if isinstance(self.topk, bool) or not isinstance(self.topk, int | float) or not 0 < self.topk <= 1:
            msg = f"score_topk must be in (0, 1], got {self.topk!r}"
            raise ValueError(msg)


class ProxyAnoModel(nn.Module):
    """ProxyAno's two networks plus the scoring head.

    Args:
        in_channels: 1 (grayscale; anomalib's 3-channel batches are averaged) or 3 (RGB).
        widths: Encoder widths per level (decoders mirror them); ``len(widths) - 1`` poolings.
        memory_size: Number of memory items (0 disables the memory: an ablation).
        memory_shrink_threshold: Hard-shrinkage threshold of the memory addressing.
        map_sigma: Gaussian smoothing (pixels) of the error map; 0 disables it.
        error_blur_sigma: Gaussian blur (pixels) of the image and the reconstruction *before* their difference,
            so fine texture the proxy cannot carry cancels instead of scoring; 0 (the paper) disables it.
        score_topk: Image score = mean of the top ``score_topk`` fraction of the map (1.0 = mean error).
        error: Pixel error, averaged over channels: ``"l1"`` (|x - x_hat|), ``"l2"`` ((x - x_hat)^2) or
            ``"gradient"`` (|grad(x - x_hat)|: where the difference changes, i.e. edges that the reconstruction
            adds or misses, so a lesion's border scores and a smooth intensity offset does not) or ``"ssim"``
            (1 - SSIM in a Gaussian window of ``error_blur_sigma``: local mean, contrast and structure, so a
            region whose contrast or structure differs scores whatever its brightness; ``error_sign`` does not
            apply).
        reconstruct_from: ``"predicted_proxy"`` (the paper: image -> PEM -> IRM) or ``"image"`` (no PEM is
            built; the IRM repairs the raw image, a CutPaste-style variant kept for ablations).
        pem_skips: Where detail passes the PEM: ``"none"``, ``"plain"`` or ``"memory"`` (see
            :class:`ProxyExtractionModule`).
        score_relative: Divide the image score by the map's mean over the head (see :class:`Scoring`).
        space_to_depth: Both networks fold ``f x f`` pixel blocks into channels on the way in and back on the
            way out, so they run at ``1/f`` of the input resolution (``f**2`` times fewer FLOPs); 1 = off.
        skip_merge: How both decoders join their skips: ``"concat"`` (U-Net) or ``"add"`` (see :class:`Decoder`).
        pem_code_size: 0 (a spatial PEM bottleneck) or the size of one global code the PEM squeezes the image
            into (see :class:`GlobalCode`; needs ``pem_skips="none"`` and ``image_size``).
        image_size: Square input size; only a global code needs it.
        refine_width: Width of a full-resolution layer that ends both half-resolution decoders
            (:class:`FullResolutionHead`; needs ``space_to_depth`` > 1); 0: none.
        refine_networks: Which decoders end in that layer: ``"both"``, ``"pem"`` or ``"irm"`` (half its cost).
        error_sign: Which departures score: ``"both"``, ``"brighter"`` (the image brighter than its
            reconstruction: hyperintense lesions, as on FLAIR and T2) or ``"darker"`` (hypointense ones).
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int],
        memory_size: int,
        memory_shrink_threshold: float,
        map_sigma: float,
        score_topk: float,
        error: str,
        reconstruct_from: str = "predicted_proxy",
        error_blur_sigma: float = 0.0,
        pem_skips: str = "none",
        error_sign: str = "both",
        score_relative: bool = False,
        space_to_depth: int = 1,
        skip_merge: str = "concat",
        pem_code_size: int = 0,
        image_size: int | None = None,
        refine_width: int = 0,
        refine_networks: str = "both",
    ) -> None:
        super().__init__()
        check_space_to_depth(space_to_depth)
        check_skip_merge(skip_merge)
        check_refine_networks(refine_networks)
        if error_sign not in ERROR_SIGNS:
            msg = f"error_sign must be one of {', '.join(ERROR_SIGNS)}, got {error_sign!r}"
            raise ValueError(msg)
        self.error_sign = error_sign
        if in_channels not in {1, 3}:
            msg = f"in_channels must be 1 (grayscale) or 3 (RGB), got {in_channels}"
            raise ValueError(msg)
        if reconstruct_from not in RECONSTRUCT_FROM:
            msg = f"reconstruct_from must be one of {', '.join(RECONSTRUCT_FROM)}, got {reconstruct_from!r}"
            raise ValueError(msg)
        self.in_channels = in_channels
        self.pem = (
            ProxyExtractionModule(
                in_channels,
                widths,
                memory_size,
                memory_shrink_threshold,
                pem_skips,
                space_to_depth,
                skip_merge,
                pem_code_size,
                image_size,
                refine_width if refine_networks in {"both", "pem"} else 0,
            )
            if reconstruct_from == "predicted_proxy"
            else None
        )
        irm_refine_width = refine_width if refine_networks in {"both", "irm"} else 0
        self.irm = ImageReconstructionModule(in_channels, widths, space_to_depth, skip_merge, irm_refine_width)
        self.register_buffer("smoothing_kernel", None, False)
        self.register_buffer("error_blur_kernel", None, False)
        self.set_scoring(Scoring(error, map_sigma, score_relative, error_blur_sigma, score_topk))

    @property
    def scoring(self) -> Scoring:
        """How reconstructions are scored now."""
        return Scoring(self.error, self.map_sigma, self.relative, self.error_blur_sigma, self.score_topk)

    def set_scoring(self, scoring: Scoring) -> None:
        """Score with another pixel error, blur, map smoothing and top fraction (the networks are untouched)."""
        scoring.check()
        self.error, self.map_sigma, self.relative, self.error_blur_sigma, self.score_topk = scoring
        device = next(self.irm.parameters()).device
        self.smoothing_kernel = optional_kernel(scoring.map_sigma, device)
        self.error_blur_kernel = optional_kernel(scoring.error_blur_sigma, device)

    def to_model_channels(self, images: torch.Tensor) -> torch.Tensor:
        """Reduce anomalib's always-3-channel batch to the model's channels."""
        return to_model_channels(images, self.in_channels, "ProxyAno")

    def error_map(
        self, images: torch.Tensor, reconstructions: torch.Tensor, scoring: Scoring | None = None
    ) -> torch.Tensor:
        """Per-pixel reconstruction error ``[B, 1, H, W]``, smoothed; ``scoring`` overrides the model's own."""
        error, kernel, blur = self.error, self.smoothing_kernel, self.error_blur_kernel
        if scoring is not None:
            error = scoring.error
            kernel = optional_kernel(scoring.map_sigma, images.device)
            blur = optional_kernel(scoring.error_blur_sigma, images.device)
        if error == "ssim":
            pixel_error = ssim_error(images, reconstructions, blur)
        else:
            pixel_error = self.difference_error(images - reconstructions, error, blur)
        return pixel_error if kernel is None else gaussian_blur(pixel_error, kernel)

    def difference_error(self, difference: torch.Tensor, error: str, blur: torch.Tensor | None) -> torch.Tensor:
        """The l1, l2 or gradient error of ``image - reconstruction``, blurred first and signed, channel mean."""
        if blur is not None:  # blur is linear: blurring the difference blurs both sides
            difference = gaussian_blur(difference, blur)
        if self.error_sign == "brighter":
            difference = difference.clamp_min(0)
        elif self.error_sign == "darker":
            difference = difference.clamp_max(0)
        if error == "gradient":
            pixel_error = gradient_l1(difference)
        else:
            pixel_error = difference.abs() if error == "l1" else difference.square()
        return pixel_error.mean(dim=1, keepdim=True)

    def image_score(
        self, anomaly_map: torch.Tensor, images: torch.Tensor | None = None, scoring: Scoring | None = None
    ) -> torch.Tensor:
        """Mean of the ``score_topk`` highest map values per image.

        A relative scoring divides it by the map's mean over the head of ``images``; ``scoring`` (its ``topk`` and
        ``relative``) overrides the model's own.
        """
        topk, relative = (self.score_topk, self.relative) if scoring is None else (scoring.topk, scoring.relative)
        top = topk_mean(anomaly_map, topk)
        if not relative:
            return top
        if images is None:
            msg = "a relative image score needs the images (their head is the reference)"
            raise ValueError(msg)
        return relative_to_head(top, anomaly_map, images)

    def reconstruct(self, images: torch.Tensor) -> ProxyAnoOutput:
        """Run the full inference path and keep the intermediates."""
        images = self.to_model_channels(images)
        proxy = images if self.pem is None else self.pem(images)[0]
        reconstruction = self.irm(proxy)
        anomaly_map = self.error_map(images, reconstruction)
        return ProxyAnoOutput(images, proxy, reconstruction, anomaly_map, self.image_score(anomaly_map, images))

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Score a batch of images in ``[0, 1]``: ``pred_score`` ``[B]`` and ``anomaly_map`` ``[B, 1, H, W]``."""
        output = self.reconstruct(images)
        return InferenceBatch(pred_score=output.pred_score, anomaly_map=output.anomaly_map)
