"""Proxy extractors: what ProxyAno's Proxy Extraction Module learns to predict from an image.

- :class:`ProxyExtractor`: the protocol (``[B, C, H, W]`` in [0, 1] -> same shape; ``name``, ``cache_key``).
- :func:`available_proxies` / :func:`create_proxy`: the registry (entry-point group
  ``proxyano_plugin.proxies``), through which the built-ins and third-party proxies are found.
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
    ProxyExtractor,
    ProxyLoadError,
    ProxyLoadWarning,
    ProxyOutputError,
    UnknownProxyError,
)
from .registry import ENTRY_POINT_GROUP, available_proxies, create_proxy

_LAZY = {
    "CachedProxy": "proxyano_plugin.proxies.cache",
    "SuperpixelProxy": "proxyano_plugin.proxies.superpixel",
    "superpixel_mean": "proxyano_plugin.proxies.superpixel",
    "BlurProxy": "proxyano_plugin.proxies.filters",
    "EdgesProxy": "proxyano_plugin.proxies.filters",
    "IdentityProxy": "proxyano_plugin.proxies.filters",
}

__all__ = [
    "ENTRY_POINT_GROUP",
    "BlurProxy",
    "CachedProxy",
    "DuplicateProxyError",
    "EdgesProxy",
    "IdentityProxy",
    "PerImageProxy",
    "Proxy",
    "ProxyArgumentError",
    "ProxyExtractor",
    "ProxyLoadError",
    "ProxyLoadWarning",
    "ProxyOutputError",
    "SuperpixelProxy",
    "UnknownProxyError",
    "available_proxies",
    "create_proxy",
    "superpixel_mean",
]

if TYPE_CHECKING:
    from .cache import CachedProxy
    from .filters import BlurProxy, EdgesProxy, IdentityProxy
    from .superpixel import SuperpixelProxy, superpixel_mean


__getattr__ = lazy_exports(__name__, _LAZY)
