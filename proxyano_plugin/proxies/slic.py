"""Batched, vectorised SLIC superpixels in torch, following scikit-image's ``slic`` closely.

Why: scikit-image's ``slic`` takes ~60-90 ms per 256 px image here, one image at a time. This version runs
a whole batch through dense tensor operations, on any device, with the same grid, initialisation
(centres on the grid with colour 0), distance and connectivity rule, so its output matches scikit-image's
about as well as scikit-image matches itself on a mirrored image (``benchmarks/proxy_speed.py``).

How: the image is cut into a regular grid of equal blocks (padded at the borders), one centre per block.
A pixel may join only the centres of its own block and of the 8 neighbouring ones (SLIC's local search
window), so an iteration is 9 broadcast distance evaluations with a running minimum, then per-centre sums.
The distance splits into terms varying along image rows and per pixel, so each candidate costs a few
fused passes; the running minimum carries the winner's index in the low mantissa bits of the distance
(see :func:`_nearest_slot`); the sums use one packed-integer ``index_add`` (see :class:`_CentreSums`).
Connectivity is then enforced as in scikit-image: parts smaller than half the expected superpixel join a
neighbour, which is what keeps the superpixel mean image coarse.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

__all__ = ["Grid", "enforce_connectivity", "slic_grid", "slic_labels"]

# Where centres outside the grid sit (in units of the grid step): farther than any pixel.
_FAR = 1e6
# (dy, dx) of the 9 candidate centres; slot 4 is the pixel's own block.
_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
# The low mantissa bits of a distance that carry the candidate's slot (0-8) in the running minimum.
_SLOT_BITS = 15
# Colours are summed as integers with this many levels over their range (see _CentreSums).
_COLOUR_LEVELS = 2**15 - 1


class Grid(NamedTuple):
    """Initial centres at ``start + step * (row, column)`` pixels: scikit-image's ``slic`` grid (square images)."""

    rows: int
    cols: int
    step: int
    start: int


def slic_grid(height: int, width: int, n_segments: int) -> Grid:
    """The initial grid of about ``n_segments`` centres."""
    spacing = math.sqrt(height * width / max(n_segments, 1))
    step, start = max(1, round(spacing)), int(spacing // 2)
    return Grid(max(1, math.ceil((height - start) / step)), max(1, math.ceil((width - start) / step)), step, start)


def slic_labels(features: torch.Tensor, n_segments: int, compactness: float, iterations: int) -> torch.Tensor:
    """SLIC labels ``[B, H, W]`` (int64 grid indices, row-major, some may be unused) of ``[B, F, H, W]`` features.

    The distance is ``|feature difference|^2 / compactness^2 + |position difference|^2 / step^2`` with ``step``
    the grid spacing in pixels, as in scikit-image, so ``compactness`` is on the scale of the features.
    Labels are not made connected; see :func:`enforce_connectivity`.
    """
    batch, channels, height, width = features.shape
    device, dtype = features.device, torch.float32
    rows, cols, step, start = slic_grid(height, width, n_segments)
    blocks = _Blocks(rows, cols, math.ceil(height / rows), math.ceil(width / cols))
    top, left = (rows * blocks.height - height) // 2, (cols * blocks.width - width) // 2
    pad = (left, cols * blocks.width - width - left, top, rows * blocks.height - height - top)

    # Pixels as [batch, channels, rows, block height, padded width]: a view of the padded image. Positions
    # are in grid steps, y relative to the middle of the pixel's block row (keeps the numbers small).
    colour = F.pad(features.to(dtype) / compactness, pad).view(batch, channels, rows, blocks.height, -1)
    middle = (blocks.height - 1) / 2
    local_y = (torch.arange(blocks.height, device=device, dtype=dtype).view(1, -1, 1) - middle) / step
    row_middle = (torch.arange(rows, device=device, dtype=dtype) * blocks.height - top + middle) / step
    xs = (torch.arange(cols * blocks.width, device=device, dtype=dtype) - left) / step
    valid = F.pad(torch.ones(height, width, device=device, dtype=torch.bool), pad).view(rows, blocks.height, -1)
    sums = _CentreSums(colour, valid, blocks, top, left, step)
    # Added to every distance so that all are non-negative (see _nearest_slot): >= max(y^2 + |colour|^2).
    offset = float(local_y.max() ** 2 + torch.maximum(sums.low**2, (sums.low + sums.span) ** 2).sum())

    # As in scikit-image, centres start on the grid with colour 0, so the first assignment is spatial only,
    # the same for every image: computed once.
    centres = torch.zeros(3 + channels, batch, rows, cols, device=device, dtype=dtype)
    centres[0] = 1
    centres[1] = (start + step * torch.arange(rows, device=device, dtype=dtype)).view(rows, 1) / step
    centres[2] = (start + step * torch.arange(cols, device=device, dtype=dtype)) / step
    slots = _nearest_slot(centres[:3, :1], blocks, local_y, row_middle, xs, colour[:1, :0], offset)
    for _ in range(iterations - 1):
        centres = sums.centres(slots, centres)
        slots = _nearest_slot(centres, blocks, local_y, row_middle, xs, colour, offset)

    # Slot (dy, dx) of block (i, j) is centre (i + dy) * cols + j + dx.
    cell = torch.arange(rows * cols, device=device, dtype=torch.int32).view(1, rows, 1, cols, 1)
    slots = slots.expand(batch, -1, -1, -1).view(batch, rows, blocks.height, cols, blocks.width)
    labels = (cell + (slots // 3 - 1) * cols + slots % 3 - 1).view(batch, rows * blocks.height, -1)
    return labels[:, top : top + height, left : left + width].long()


class _Blocks(NamedTuple):
    rows: int
    cols: int
    height: int
    width: int


class _CentreSums:
    """Per-centre pixel count, position and colour sums, with one or two int64 ``index_add`` per iteration.

    Why: ``index_add``/``scatter_add`` cost ~2-3 ns per element on CPU, more than any other pass, and SLIC needs
    3 + channels sums. So every pixel contributes small integers instead (1, its row and column inside its
    block, its colour quantised to 15 bits), packed into bit fields of int64 words wide enough that the sum
    over a whole block cannot carry into the next field; one scatter then sums all fields of a word.
    Sums go to (block, slot) bins: the block the pixel sits in, the slot of the candidate it chose.
    """

    def __init__(self, colour: torch.Tensor, valid: torch.Tensor, blocks: _Blocks, top: int, left: int, step: int):
        batch, channels = colour.shape[:2]
        device = colour.device
        self.blocks, self.step = blocks, step
        low = colour.amin(dim=(0, 2, 3, 4))
        span = (colour.amax(dim=(0, 2, 3, 4)) - low).clamp_min(1e-12)
        # Shaped for the per-slot sums [channels, batch, rows, cols, 9].
        self.low, self.span = low.view(channels, 1, 1, 1, 1), span.view(channels, 1, 1, 1, 1)
        # Where each block starts, in pixels of the unpadded image.
        self.origin_y = (torch.arange(blocks.rows, device=device) * blocks.height - top).view(-1, 1, 1)
        self.origin_x = (torch.arange(blocks.cols, device=device) * blocks.width - left).view(-1, 1)

        mask = valid.long()
        row = torch.arange(blocks.height, device=device).view(-1, 1)
        column = torch.arange(blocks.cols * blocks.width, device=device) % blocks.width
        scale = _COLOUR_LEVELS / span.view(1, channels, 1, 1, 1)
        # Rounded (+0.5, then truncated: values are non-negative); padding pixels contribute 0.
        quantised = (((colour - low.view(1, channels, 1, 1, 1)) * scale + 0.5) * valid).long()
        fields = [mask, mask * row, mask * column, *quantised.unbind(1)]
        block_pixels = blocks.height * blocks.width
        largest = [block_pixels, block_pixels * (blocks.height - 1), block_pixels * (blocks.width - 1)]
        largest += [block_pixels * _COLOUR_LEVELS] * channels
        # Fields packed greedily into words, as (word, shift, bits); int64, so 63 bits keep the sign clear.
        self.layout: list[tuple[int, int, int]] = []
        word, used = -1, 63
        for maximum in largest:
            bits = maximum.bit_length()
            if used + bits > 63:
                word, used = word + 1, 0
            self.layout.append((word, used, bits))
            used += bits
        shape = (batch, *valid.shape)
        self.words = [
            sum(field << shift for field, (w, shift, _) in zip(fields, self.layout, strict=True) if w == index)
            .expand(shape)
            .reshape(-1)
            for index in range(word + 1)
        ]
        # int32 bins: index_add_ accepts them, and int32 arithmetic is several times faster than int64.
        cells = torch.arange(batch * blocks.rows * blocks.cols, device=device, dtype=torch.int32) * 9
        cells = cells.view(batch, blocks.rows, 1, blocks.cols, 1).expand(*shape[:3], blocks.cols, blocks.width)
        self.own_bin = cells.reshape(shape)
        self.bins = torch.empty_like(self.own_bin)

    def centres(self, slots: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Mean position (grid steps) and colour of every centre's pixels, ``[3 + channels, batch, rows, cols]``.

        Row 0 holds the pixel count. An empty centre keeps its ``previous`` position and colour.
        """
        rows, cols = self.blocks.rows, self.blocks.cols
        bins = torch.add(self.own_bin, slots, out=self.bins).view(-1)
        size = len(self.own_bin) * rows * cols * 9
        sums = [word.new_zeros(size).index_add_(0, bins, word) for word in self.words]
        count, row_sum, column_sum, *colour_sums = (
            ((sums[word] >> shift) & ((1 << bits) - 1)).view(-1, rows, cols, 9).float()
            for word, shift, bits in self.layout
        )
        y_sum = (row_sum + count * self.origin_y) / self.step
        x_sum = (column_sum + count * self.origin_x) / self.step
        colour_sum = torch.stack(colour_sums) * (self.span / _COLOUR_LEVELS) + count * self.low
        per_slot = torch.cat([torch.stack([count, y_sum, x_sum]), colour_sum])
        padded = F.pad(per_slot.view(*per_slot.shape[:4], 3, 3), (0, 0, 0, 0, 1, 1, 1, 1))
        # A pixel of block (i, j) in slot (dy, dx) belongs to centre (i + dy, j + dx).
        totals = sum(
            padded[:, :, 1 - dy : 1 - dy + rows, 1 - dx : 1 - dx + cols, dy + 1, dx + 1] for dy, dx in _OFFSETS
        )
        counts = totals[:1]
        centres = torch.cat([counts, totals[1:] / counts.clamp_min(1)])
        return torch.where(counts > 0, centres, previous)


def _nearest_slot(
    centres: torch.Tensor,
    blocks: _Blocks,
    local_y: torch.Tensor,
    row_middle: torch.Tensor,
    xs: torch.Tensor,
    colour: torch.Tensor,
    offset: float,
) -> torch.Tensor:
    """Slot (0-8, into ``_OFFSETS``) of each pixel's nearest candidate centre, int32 ``[batch, rows, bh, width]``.

    Per candidate, ``|y - cy|^2 + |x - cx|^2 + |v - c|^2`` is evaluated without the pixel's own ``y^2 + |v|^2``
    (a per-pixel constant cannot change the argmin) as ``A + y * B + v.C``, where ``A``, ``B``, ``C`` vary only
    along the image row: two broadcast passes. ``offset >= max(y^2 + |v|^2)`` keeps the results non-negative,
    so that their int32 bit patterns order like the floats, and the winner's slot can ride in the 4 lowest
    mantissa bits: one int32 minimum per candidate finds both.
    """
    rows, cols, block_w = blocks.rows, blocks.cols, blocks.width
    padded = F.pad(centres[1:], (1, 1, 1, 1))
    padded[:2, :, [0, -1]] = _FAR
    padded[:2, :, :, [0, -1]] = _FAR
    # Every candidate's centre per image-row position: [9, 2 + channels, batch, rows, 1, width].
    candidates = torch.stack([padded[:, :, 1 + dy : 1 + dy + rows, 1 + dx : 1 + dx + cols] for dy, dx in _OFFSETS])
    candidates = candidates.unsqueeze(-1).expand(*candidates.shape, block_w).flatten(-2).unsqueeze(-2)
    cy = candidates[:, 0] - row_middle.view(rows, 1, 1)
    colours = candidates[:, 2:]
    constants = cy**2 + (xs - candidates[:, 1]) ** 2 + (colours**2).sum(1) + offset

    shape = (centres.shape[1], rows, local_y.shape[1], cols * block_w)
    best = torch.empty(shape, dtype=colour.dtype, device=colour.device)
    distance = torch.empty_like(best)
    for slot in range(len(_OFFSETS)):
        target = best if slot == 0 else distance
        torch.addcmul(constants[slot], local_y, cy[slot], value=-2, out=target)
        for channel, centre in zip(colour.unbind(1), colours[slot], strict=True):
            target.addcmul_(channel, centre, value=-2)
        target.view(torch.int32).bitwise_and_(~_SLOT_BITS).bitwise_or_(slot)
        if slot > 0:
            torch.minimum(best.view(torch.int32), distance.view(torch.int32), out=best.view(torch.int32))
    return best.view(torch.int32).bitwise_and_(_SLOT_BITS)


def enforce_connectivity(labels: torch.Tensor, min_size: int) -> torch.Tensor:
    """Split superpixels into connected parts; merge each part below ``min_size`` pixels into a neighbour.

    As in scikit-image, a small part joins a neighbour that starts earlier in raster order (here the one
    sharing the longest border; scikit-image takes the last its scan meets), else its largest-border large
    neighbour. Returns ``[B, H, W]`` int64 labels numbered from 0 per image, on the input's device.
    """
    merged = [_connected(image, min_size) for image in labels.cpu().numpy()]
    return torch.from_numpy(np.stack(merged)).to(labels.device)


def _connected(labels: np.ndarray, min_size: int) -> np.ndarray:
    from skimage.measure import label as connected_parts  # heavy import, needed here only

    # Parts are numbered in raster order of their first pixel, which the merge rule relies on.
    parts = connected_parts(labels, connectivity=1, background=-1) - 1
    sizes = np.bincount(parts.ravel())
    small = sizes < min(min_size, sizes.max())
    target = np.arange(len(sizes))
    if small.any():
        target = _merge_targets(parts, small)
        # Targets point to an earlier part or to a large one, so following them ends (pointer jumping).
        while not np.array_equal(jumped := target[target], target):
            target = jumped
    # Renumber the surviving parts 0..n-1 in raster order.
    survivors = np.zeros(len(sizes), dtype=bool)
    survivors[target] = True
    return (np.cumsum(survivors) - 1)[target][parts]


def _merge_targets(parts: np.ndarray, small: np.ndarray) -> np.ndarray:
    """Per part, the part it joins: a neighbour for small parts (unless none is usable), else itself."""
    count = len(small)
    near_small = small[parts]
    sources, neighbours = [], []
    for here, there, flag_here, flag_there in (
        (parts[:, :-1], parts[:, 1:], near_small[:, :-1], near_small[:, 1:]),
        (parts[:-1], parts[1:], near_small[:-1], near_small[1:]),
    ):
        touching = (here != there) & (flag_here | flag_there)
        sources += [here[touching], there[touching]]
        neighbours += [there[touching], here[touching]]
    source, neighbour = np.concatenate(sources), np.concatenate(neighbours)
    keep = small[source]
    pairs, border = np.unique(source[keep] * count + neighbour[keep], return_counts=True)
    source, neighbour = np.divmod(pairs, count)
    # Preference: an earlier part (rank 2), else a large later one (1), never a small later one (0: could
    # cycle); then the longest border; then the lowest number. As one integer score, maximal per source.
    rank = np.where(neighbour < source, 2, np.where(small[neighbour], 0, 1))
    score = (rank * (border.max() + 1) + border) * count + (count - 1 - neighbour)
    starts = np.flatnonzero(np.r_[True, source[1:] != source[:-1]])  # pairs come sorted by source
    best = np.maximum.reduceat(score, starts)
    chosen, usable = count - 1 - best % count, best // count >= border.max() + 1
    target = np.arange(count)
    target[source[starts][usable]] = chosen[usable]
    return target
