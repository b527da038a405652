"""Import every public model and datamodule so anomalib's CLI and ``get_model`` see them by bare name.

jsonargparse (behind ``anomalib train --model X``) and ``anomalib.models.get_model("X")`` resolve a bare
class name only among subclasses that are already imported; importing this module imports them. When the
running program is the ``anomalib`` console script (this module is then imported by the ``.pth`` hook), it
also makes anomalib report a proxy error as one line (see :mod:`proxyano_plugin.anomalib_cli`); any other
process that imports it gets no such change to anomalib.
"""

import os
import sys

from proxyano_plugin.data import BrainMRIDemo, CheckedFolder, SplitCSV
from proxyano_plugin.models.autoencoder import Autoencoder
from proxyano_plugin.models.fanogan import FAnoGAN
from proxyano_plugin.models.patchcore import PatchcoreLite0
from proxyano_plugin.models.proxyano import ProxyAno

__all__ = ["Autoencoder", "BrainMRIDemo", "CheckedFolder", "FAnoGAN", "PatchcoreLite0", "ProxyAno", "SplitCSV"]

if os.path.basename((getattr(sys, "argv", None) or [""])[0]) in {"anomalib", "anomalib.exe"}:
    from proxyano_plugin.anomalib_cli import install

    install()
