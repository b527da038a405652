"""Per-image proxy cache (memory, optionally disk), keyed by image content and proxy parameters.

ProxyAno needs the proxy of every training image in every epoch, but the proxy of an image never changes:
computing it once turns the superpixel proxy from a per-step cost into a first-epoch cost. That only pays
when images repeat: with random augmentations every image is new, so the memory cache is bounded (least
recently used go first) and can be switched off, which also skips its host copy and hashing.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from .base import ProxyExtractor, ProxyOutputError, check_images

__all__ = ["CachedProxy"]


class CachedProxy:
    """Wraps a :class:`ProxyExtractor`, computing each distinct image's proxy once.

    An image's entry is keyed by a hash of its tensor content (bytes, dtype, shape) together with the
    proxy's ``cache_key``, so changing a parameter never returns stale proxies. Misses of a batch are
    computed in one call on CPU (the extractor parallelises it: see :class:`~.base.PerImageProxy`), so that
    cached proxies do not depend on the device that asked first; they are checked (shape, finite values)
    and returned on the input's device and dtype.

    With ``max_items=0`` and no ``cache_dir`` nothing is cached: the proxy runs on the input where it is
    (on the GPU for torch proxies), with the same checks but no host copy and no hashing.

    Args:
        proxy: The extractor to cache.
        cache_dir: Optional folder for an on-disk cache shared across runs and processes: one ``.npy`` per
            image under a sub-folder named after the parameters; written atomically. Unbounded: meant for
            fixed image sets, not for randomly augmented ones.
        max_items: Memory cache size in images (least recently used go first); ``None`` = unbounded,
            0 = none (disk only, or no cache at all without ``cache_dir``).
    """

    def __init__(
        self, proxy: ProxyExtractor, cache_dir: str | Path | None = None, max_items: int | None = None
    ) -> None:
        if not isinstance(proxy, ProxyExtractor):
            msg = f"CachedProxy needs a ProxyExtractor (name, cache_key, __call__), got {type(proxy).__name__}"
            raise TypeError(msg)
        if max_items is not None and (isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 0):
            msg = f"max_items must be None or a non-negative integer, got {max_items!r}"
            raise ValueError(msg)
        self.proxy = proxy
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_items = max_items
        self.hits = 0
        self.misses = 0
        self._memory: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()

    @property
    def name(self) -> str:
        """The wrapped proxy's name."""
        return self.proxy.name

    @property
    def cache_key(self) -> str:
        """The wrapped proxy's cache key (caching does not change the output)."""
        return self.proxy.cache_key

    @property
    def caching(self) -> bool:
        """Whether proxies are kept anywhere (memory or disk); if not, calls pass straight to the proxy."""
        return self.max_items != 0 or self.cache_dir is not None

    def __len__(self) -> int:
        """Proxies held in memory."""
        return len(self._memory)

    def __repr__(self) -> str:
        return f"CachedProxy({self.proxy!r}, cache_dir={self.cache_dir!r}, max_items={self.max_items!r})"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Proxies of ``images``, computing only those not cached yet."""
        check_images(images, self.name)
        if not bool(torch.isfinite(images).all()):
            msg = f"proxy {self.cache_key}: the input images contain NaN or inf values"
            raise ValueError(msg)
        if not self.caching:
            return self._compute(images.detach()).to(images.device, images.dtype)
        cpu = images.detach().to("cpu").contiguous()
        key = self.proxy.cache_key
        digests = [_digest(image) for image in cpu]
        results = [self._lookup(key, digest, image.shape) for digest, image in zip(digests, cpu, strict=True)]
        missing = [index for index, result in enumerate(results) if result is None]
        self.hits += len(results) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = self._compute(cpu[missing]).to("cpu")
            for index, row in zip(missing, computed, strict=True):
                proxy = row.clone()  # its own storage: a view would keep its whole batch alive in the cache
                results[index] = proxy
                self._remember(key, digests[index], proxy)
                self._write(key, digests[index], proxy)
        return torch.stack(results).to(images.device, images.dtype)

    def _compute(self, batch: torch.Tensor) -> torch.Tensor:
        output = self.proxy(batch)
        if not isinstance(output, torch.Tensor) or output.shape != batch.shape:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            msg = f"proxy {self.cache_key} returned {got} for input {tuple(batch.shape)}; must keep the input shape"
            raise ProxyOutputError(msg)
        finite = torch.isfinite(output).flatten(1).all(dim=1)
        if not bool(finite.all()):
            msg = f"proxy {self.cache_key} returned NaN or inf for {int((~finite).sum())} of {len(batch)} images"
            raise ProxyOutputError(msg)
        return output.detach()

    def _lookup(self, key: str, digest: str, shape: torch.Size) -> torch.Tensor | None:
        entry = self._memory.get((key, digest))
        if entry is not None:
            self._memory.move_to_end((key, digest))
            return entry
        entry = self._read(key, digest, shape)
        if entry is not None:
            self._remember(key, digest, entry)
        return entry

    def _remember(self, key: str, digest: str, proxy: torch.Tensor) -> None:
        if self.max_items == 0:
            return
        self._memory[(key, digest)] = proxy
        if self.max_items is not None and len(self._memory) > self.max_items:
            self._memory.popitem(last=False)

    def _path(self, key: str, digest: str) -> Path | None:
        if self.cache_dir is None:
            return None
        # Readable parameters, plus a hash of the exact key since the readable part is sanitised and cut.
        readable = re.sub(r"[^A-Za-z0-9_.,=()+-]", "_", key)[:120]
        folder = f"{readable}-{hashlib.blake2b(key.encode(), digest_size=6).hexdigest()}"
        return self.cache_dir / folder / f"{digest}.npy"

    def _read(self, key: str, digest: str, shape: torch.Size) -> torch.Tensor | None:
        path = self._path(key, digest)
        if path is None or not path.is_file():
            return None
        try:
            array = np.load(path)
        except (OSError, ValueError):  # unreadable: recompute and overwrite
            return None
        return torch.from_numpy(array) if array.shape == tuple(shape) else None

    def _write(self, key: str, digest: str, proxy: torch.Tensor) -> None:
        path = self._path(key, digest)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: readers in other processes never see a partial file.
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                np.save(file, proxy.to(torch.float32).numpy())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _digest(image: torch.Tensor) -> str:
    """Content hash of one contiguous CPU image tensor (dtype and shape included)."""
    hasher = hashlib.blake2b(f"{image.dtype}{tuple(image.shape)}".encode(), digest_size=16)
    hasher.update(image.view(torch.uint8).numpy())
    return hasher.hexdigest()
