"""Proxy extractors: what ProxyAno's Proxy Extraction Module learns to predict from an image.

- :class:`ProxyExtractor`: the protocol (``[B, C, H, W]`` in [0, 1] -> same shape; ``name``, ``cache_key``).
- :func:`available_proxies` / :func:`create_proxy` / :func:`broken_proxies`: the registry (entry-point group
  ``proxyano_plugin.proxies``), through which the built-ins and third-party proxies are found;
  :func:`register_proxy` adds one in-process (notebooks, scripts).
- :class:`ProxyError`: base of the one-line errors (unknown, duplicate, broken, bad arguments or values).
- :class:`CachedProxy`: per-image memory/disk cache around any extractor.
- Built-ins: ``superpixel`` (:class:`SuperpixelProxy`), ``blur``, ``edges``, ``identity``.

The registry and protocol import no torch; the rest loads on first use.
"""

from typing import TYPE_CHECKING

from proxyano_plugin.lazy import lazy_exports

from .base import (
    DuplicateProxyError,
    PerImageProxy,
    Proxy,
    ProxyArgumentError,
    ProxyError,
    ProxyExtractor,
    ProxyLoadError,
    ProxyLoadWarning,
    ProxyOutputError,
    ProxyValueError,
    UnknownProxyError,
)
from .registry import (
    BUILT_IN_DISTRIBUTION,
    ENTRY_POINT_GROUP,
    available_proxies,
    broken_proxies,
    create_proxy,
    register_proxy,
)

_LAZY = {
    "CachedProxy": "proxyano_plugin.proxies.cache",
    "SuperpixelProxy": "proxyano_plugin.proxies.superpixel",
    "superpixel_mean": "proxyano_plugin.proxies.superpixel",
    "BlurProxy": "proxyano_plugin.proxies.filters",
    "EdgesProxy": "proxyano_plugin.proxies.filters",
    "IdentityProxy": "proxyano_plugin.proxies.filters",
}

__all__ = [
    "BUILT_IN_DISTRIBUTION",
    "ENTRY_POINT_GROUP",
    "BlurProxy",
    "CachedProxy",
    "DuplicateProxyError",
    "EdgesProxy",
    "IdentityProxy",
    "PerImageProxy",
    "Proxy",
    "ProxyArgumentError",
    "ProxyError",
    "ProxyExtractor",
    "ProxyLoadError",
    "ProxyLoadWarning",
    "ProxyOutputError",
    "ProxyValueError",
    "SuperpixelProxy",
    "UnknownProxyError",
    "available_proxies",
    "broken_proxies",
    "create_proxy",
    "register_proxy",
    "superpixel_mean",
]

if TYPE_CHECKING:
    from .cache import CachedProxy
    from .filters import BlurProxy, EdgesProxy, IdentityProxy
    from .superpixel import SuperpixelProxy, superpixel_mean


__getattr__ = lazy_exports(__name__, _LAZY)
