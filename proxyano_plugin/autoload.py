"""Import every public model and datamodule so anomalib's CLI and ``get_model`` see them by bare name.

jsonargparse (behind ``anomalib train --model X``) and ``anomalib.models.get_model("X")`` resolve a bare
class name only among subclasses that are already imported; importing this module imports them.
"""

from proxyano_plugin.data import BrainMRIDemo, CheckedFolder, SplitCSV
from proxyano_plugin.models.autoencoder import Autoencoder
from proxyano_plugin.models.fanogan import FAnoGAN
from proxyano_plugin.models.patchcore import PatchcoreLite0
from proxyano_plugin.models.proxyano import ProxyAno

__all__ = ["Autoencoder", "BrainMRIDemo", "CheckedFolder", "FAnoGAN", "PatchcoreLite0", "ProxyAno", "SplitCSV"]
