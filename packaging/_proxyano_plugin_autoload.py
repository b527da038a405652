"""Make ``anomalib train --model ProxyAno`` resolve the bare name.

anomalib 2.7 loads no plugins: jsonargparse only matches bare class names against subclasses that are
already imported. This module is imported at interpreter start-up by ``proxyano_plugin_autoload.pth``
(installed into site-packages by the wheel). It does nothing unless the running program is the
``anomalib`` console script, so other Python processes pay only for this file's own import.

Set ``PROXYANO_PLUGIN_AUTOLOAD=0`` to switch it off. A failure never breaks the interpreter: it is
reported as a warning and anomalib goes on without the plugin's bare names.
"""

import os
import sys

_DISABLED = {"0", "false", "no", "off"}


def _wanted() -> bool:
    if os.environ.get("PROXYANO_PLUGIN_AUTOLOAD", "1").strip().lower() in _DISABLED:
        return False
    argv = getattr(sys, "argv", None) or [""]
    return os.path.basename(argv[0]) in {"anomalib", "anomalib.exe"}


if _wanted():
    try:
        import proxyano_plugin.autoload  # noqa: F401  (registers ProxyAno, FAnoGAN, ... with anomalib's CLI)
    except Exception as error:  # a broken plugin must never break anomalib itself
        import warnings

        warnings.warn(
            f"proxyano-plugin: bare model names (ProxyAno, ...) are unavailable because importing the plugin "
            f"failed: {type(error).__name__}: {error}. Use the dotted form --model proxyano_plugin.ProxyAno, "
            "or set PROXYANO_PLUGIN_AUTOLOAD=0 to silence this.",
            stacklevel=1,
        )
