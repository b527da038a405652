"""Helpers shared by several test modules (imported as ``testing_utils``; pytest puts tests/ on the path)."""

from __future__ import annotations

from pathlib import Path

import lightning
import numpy as np
import torch
from anomalib.data import AnomalibDataModule
from anomalib.models import AnomalibModule
from jsonargparse import ActionConfigFile, ArgumentParser
from PIL import Image


def parse_data(*args: str) -> AnomalibDataModule:
    """Build the datamodule the way ``anomalib train --config ... --data ...`` does."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_subclass_arguments(AnomalibDataModule, "data")
    parser.add_argument("--trainer", type=dict, default={})  # a data config may set what its data needs
    return parser.instantiate_classes(parser.parse_args(list(args))).data


def save_checkpoint(model: AnomalibModule, path: Path) -> None:
    """What Lightning's checkpoint connector writes for a model, without a trainer."""
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)


def write_tiny_folder_dataset(root: Path) -> None:
    """8 normal training images, 4 normal and 4 abnormal test images with masks, 64 px grayscale PNGs.

    Laid out for ``anomalib.data.Folder``: ``train/good``, ``test/good``, ``test/bad``, ``mask/bad``.
    """
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for sub, count, abnormal in (("train/good", 8, False), ("test/good", 4, False), ("test/bad", 4, True)):
        (root / sub).mkdir(parents=True)
        for index in range(count):
            image = 0.5 + 0.2 * np.sin(xx / 7 + rng.uniform(0, 3)) * np.cos(yy / 9)
            mask = np.zeros((64, 64), dtype=bool)
            if abnormal:
                cy, cx = rng.integers(16, 48, 2)
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 64
                image[mask] = 1.0
                (root / "mask/bad").mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(root / "mask/bad" / f"{index}.png")
            Image.fromarray((image * 255).astype(np.uint8)).save(root / sub / f"{index}.png")
