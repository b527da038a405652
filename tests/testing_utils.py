"""Helpers shared by several test modules (imported as ``testing_utils``; pytest puts tests/ on the path)."""

from __future__ import annotations

from pathlib import Path

import lightning
import torch
from anomalib.data import AnomalibDataModule
from anomalib.models import AnomalibModule
from jsonargparse import ActionConfigFile, ArgumentParser


def parse_data(*args: str) -> AnomalibDataModule:
    """Build the datamodule the way ``anomalib train --config ... --data ...`` does."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_subclass_arguments(AnomalibDataModule, "data")
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
