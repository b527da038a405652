"""Plain convolutional autoencoder of the MedIAnomaly benchmark (Cai et al., Medical Image Analysis 2025)."""

from .lightning_model import Autoencoder

__all__ = ["Autoencoder"]
