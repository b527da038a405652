"""Dataset items read once and kept in memory, for datasets read every epoch.

anomalib decodes and resizes each image again in every epoch. At 64 px that work (PNG decoding, RGB
conversion, the sample table's row lookup, the model's resize) costs as much as a training step of a small
network: about 2 s an epoch for lgg_flair's 1,100 training slices on one core, an eighth of an f-AnoGAN CPU run.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import get_worker_info
from torchvision.transforms.v2 import Compose, Resize, Transform

# Bytes of item tensors a dataset keeps at most (one 64 px RGB item: 52 KiB, at 256 px: 832 KiB).
DEFAULT_CACHE_BYTES = 2 * 1024**3


def is_deterministic(transform: Transform | None) -> bool:
    """Whether ``transform`` gives the same output every time: none, a resize, or a composition of them.

    anomalib gives the datasets the model's resize as their augmentations; anything else may be random.
    """
    if transform is None or isinstance(transform, Resize):
        return True
    return isinstance(transform, Compose) and all(is_deterministic(part) for part in transform.transforms)


class ItemCache:
    """Mixin for an anomalib image dataset (first in the bases): each item is read once, then served from memory.

    An item is kept only when reading it again would give the same item: with no augmentations or only
    resizes. Only the main process adds items; a DataLoader worker's additions would die with it at the end
    of the epoch. Items past ``max_bytes`` are read each time. Make one from an existing dataset with
    :meth:`adopt`.
    """

    augmentations: Transform | None

    @classmethod
    def adopt(cls, dataset: Any, max_bytes: int = DEFAULT_CACHE_BYTES) -> Any:
        """Return ``dataset`` (an instance of this class's anomalib base) as one that keeps its items."""
        base = cls.__bases__[-1]
        if type(dataset) is not base:
            msg = f"{cls.__name__} keeps {base.__name__} items, not {type(dataset).__name__}'s"
            raise TypeError(msg)
        adopted = cls.__new__(cls)
        adopted.__dict__.update(vars(dataset))
        adopted.cache_max_bytes = max_bytes
        adopted.cached_items = {}
        adopted.cached_for = (None, None)
        adopted.cached_bytes = 0
        return adopted

    def __getitem__(self, index: int) -> Any:
        # Items of another sample table (a split made after them) or another model's resize are dropped.
        samples, augmentations = self.cached_for
        if samples is not self.samples or augmentations is not self.augmentations:
            self.cached_items, self.cached_bytes = {}, 0
            self.cached_for = (self.samples, self.augmentations)
        item = self.cached_items.get(index)
        if item is not None:
            return item
        item = super().__getitem__(index)  # type: ignore[misc]
        size = sum(tensor.nbytes for tensor in (item.image, item.gt_mask) if tensor is not None)
        if (
            get_worker_info() is None
            and is_deterministic(self.augmentations)
            and self.cached_bytes + size <= self.cache_max_bytes
        ):
            self.cached_items[index] = item
            self.cached_bytes += size
        return item
