"""The proxy-extractor protocol, its errors, and base classes that do the repetitive parts.

A proxy is the training target of ProxyAno's Proxy Extraction Module: a deterministic function of the
image that keeps its coarse content (by default the superpixel mean image). Anything that satisfies
:class:`ProxyExtractor` works; the base classes here add input checks, a ``cache_key`` derived from the
dataclass fields, and (for NumPy/OpenCV code working on one image at a time) a parallel map over the batch.
"""

from __future__ import annotations

import dataclasses
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = [
    "DuplicateProxyError",
    "PerImageProxy",
    "Proxy",
    "ProxyArgumentError",
    "ProxyError",
    "ProxyExtractor",
    "ProxyLoadError",
    "ProxyLoadWarning",
    "ProxyOutputError",
    "ProxyValueError",
    "UnknownProxyError",
    "check_images",
    "map_images",
]


@runtime_checkable
class ProxyExtractor(Protocol):
    """Maps a float image batch ``[B, C, H, W]`` in [0, 1] (C = 1 or 3) to its proxy batch.

    The output has the input's shape, dtype and device, and depends only on the input and the parameters,
    which ``cache_key`` spells out (caches are keyed by it, so it must change whenever the output would).
    """

    name: str

    @property
    def cache_key(self) -> str:
        """Stable text naming the extractor and every parameter that affects its output."""
        ...

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Proxy of every image of the batch."""
        ...


class ProxyError(Exception):
    """Base of the proxy errors: one line saying what is wrong and what to do.

    A command line can catch exactly these to print the line instead of a traceback (as ProxyAno does under
    ``anomalib``): they are the user's input, not a bug.
    """


class UnknownProxyError(ProxyError, ValueError):
    """No installed distribution registers a proxy of that name."""


class DuplicateProxyError(ProxyError, ValueError):
    """Two installed plugins (neither of them proxyano-plugin) register the same proxy name."""


class ProxyLoadError(ProxyError, ValueError):
    """A registered proxy could not be imported, or does not produce a proxy extractor."""


class ProxyArgumentError(ProxyError, TypeError):
    """``create_proxy`` got keyword arguments the proxy's factory does not accept."""


class ProxyValueError(ProxyError, ValueError):
    """The proxy's factory refused a parameter value (its own message, prefixed with the proxy's name)."""


class ProxyOutputError(ProxyError, ValueError):
    """A proxy extractor returned a wrong shape or non-finite values."""


class ProxyLoadWarning(UserWarning):
    """A registered proxy was left out or overridden (failed to import, duplicate or shadowing name); the
    others still work."""


def check_images(images: object, name: str) -> None:
    """Refuse anything but a floating ``[B, C, H, W]`` tensor with C = 1 or 3, in one actionable line."""
    import torch  # here, not at the top: ``import proxyano_plugin.proxies`` stays free of torch

    if not isinstance(images, torch.Tensor):
        msg = f"proxy {name!r}: expected a torch.Tensor batch [B, C, H, W], got {type(images).__name__}"
        raise TypeError(msg)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        msg = f"proxy {name!r}: expected a [B, C, H, W] batch with C = 1 or 3, got shape {tuple(images.shape)}"
        raise ValueError(msg)
    if not images.is_floating_point():
        msg = f"proxy {name!r}: expected floating images in [0, 1], got dtype {images.dtype}"
        raise TypeError(msg)


class Proxy(ABC):
    """Base for dataclass proxies: ``cache_key`` comes from the dataclass fields.

    Subclasses are frozen dataclasses whose fields are exactly the output-affecting parameters, so a
    parameter cannot change behind a cache's back. Normalise field types in ``__post_init__`` (e.g.
    ``float(sigma)``) so that ``2`` and ``2.0`` give the same key.
    """

    name: ClassVar[str]

    @property
    def cache_key(self) -> str:
        """``name(field=value,...)`` over all dataclass fields, in declaration order."""
        params = ",".join(f"{field.name}={getattr(self, field.name)!r}" for field in dataclasses.fields(self))
        return f"{self.name}({params})"

    @abstractmethod
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Proxy of every image of the batch."""


class PerImageProxy(Proxy):
    """Base for proxies computed one image at a time on NumPy arrays (OpenCV, scikit-image, ...).

    Implement :meth:`apply`; the batch is spread over threads (see :func:`map_images`).
    """

    @abstractmethod
    def apply(self, image: np.ndarray) -> np.ndarray:
        """Proxy of one ``[H, W, C]`` float32 image in [0, 1]; same shape."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Apply :meth:`apply` to every image, returning the input's shape, dtype and device."""
        import numpy as np
        import torch

        check_images(images, self.name)
        arrays = images.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).contiguous().numpy()
        outputs = map_images(self.apply, list(arrays))
        result = torch.from_numpy(np.stack(outputs).astype(np.float32, copy=False)).permute(0, 3, 1, 2)
        return result.to(images.device, images.dtype).contiguous()


def map_images(function: Callable[[np.ndarray], Any], images: Sequence[np.ndarray]) -> list[Any]:
    """``[function(image) for image in images]``, spread over the available CPU cores with threads.

    Threads suffice because the per-image work of the built-ins runs without the GIL: OpenCV releases it,
    and so does scikit-image's SLIC in its Cython loops (``benchmarks/proxy_speed.py`` measures this). A
    process pool would also re-run an unguarded ``__main__`` under the "spawn"/"forkserver" start methods.
    """
    workers = min(len(images), cpu_count())
    if workers <= 1:
        return [function(image) for image in images]
    with ThreadPoolExecutor(workers) as executor:
        return list(executor.map(function, images))


def cpu_count() -> int:
    """CPUs this process may use (the affinity mask on Linux, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def positive(name: str, value: object, *, integer: bool = False) -> Any:
    """``value`` as float (or int), refusing non-positive, non-finite or non-numeric values in one line."""
    try:
        number = int(value) if integer else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if isinstance(value, bool) or not (math.isfinite(number) and number > 0) or (integer and number != value):
        kind = "a positive integer" if integer else "a positive number"
        msg = f"{name} must be {kind}, got {value!r}"
        raise ValueError(msg)
    return number
