"""proxyano-plugin: ProxyAno and its baselines as anomalib 2.x models.

Heavy modules (torch, anomalib) are imported lazily, on first attribute access, so that
``import proxyano_plugin`` stays cheap for tools that only need the proxy registry or the version.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY_EXPORTS = {
    "ProxyAno": "proxyano_plugin.models.proxyano",
    "Autoencoder": "proxyano_plugin.models.autoencoder",
    "FAnoGAN": "proxyano_plugin.models.fanogan",
    "BrainMRIDemo": "proxyano_plugin.data",
    "available_proxies": "proxyano_plugin.proxies",
    "create_proxy": "proxyano_plugin.proxies",
}

__all__ = ["__version__", *_LAZY_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _LAZY_EXPORTS:
        value = getattr(import_module(_LAZY_EXPORTS[name]), name)
        globals()[name] = value
        return value
    msg = f"module 'proxyano_plugin' has no attribute {name!r}"
    raise AttributeError(msg)
