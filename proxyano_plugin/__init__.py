"""proxyano-plugin: ProxyAno and its baselines as anomalib 2.x models.

Heavy modules (torch, anomalib) are imported lazily, on first attribute access, so that
``import proxyano_plugin`` stays cheap for tools that only need the proxy registry or the version.
"""

from proxyano_plugin.lazy import lazy_exports

__version__ = "0.1.0"

_LAZY_EXPORTS = {
    "ProxyAno": "proxyano_plugin.models.proxyano",
    "Autoencoder": "proxyano_plugin.models.autoencoder",
    "FAnoGAN": "proxyano_plugin.models.fanogan",
    "PatchcoreLite0": "proxyano_plugin.models.patchcore",
    "BrainMRIDemo": "proxyano_plugin.data",
    "CheckedFolder": "proxyano_plugin.data",
    "SplitCSV": "proxyano_plugin.data",
    "available_proxies": "proxyano_plugin.proxies",
    "create_proxy": "proxyano_plugin.proxies",
}

__all__ = ["__version__", *_LAZY_EXPORTS]


__getattr__ = lazy_exports(__name__, _LAZY_EXPORTS)
