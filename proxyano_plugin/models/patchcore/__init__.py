"""anomalib's PatchCore with an offline ImageNet EfficientNet-Lite0 backbone."""

from .lightning_model import PatchcoreLite0

__all__ = ["PatchcoreLite0"]
