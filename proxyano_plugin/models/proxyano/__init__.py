"""ProxyAno: proxy-bridged image reconstruction (Zhou et al., IEEE TMI 2021)."""

from .lightning_model import ProxyAno

__all__ = ["ProxyAno"]
