"""Helpers shared by several test modules (imported as ``testing_utils``: tests/conftest.py puts tests/ on the
path, pytest's default ``prepend`` import mode)."""

from __future__ import annotations

from pathlib import Path

import lightning
import numpy as np
import torch
from anomalib.data import AnomalibDataModule
from anomalib.models import AnomalibModule
from jsonargparse import ActionConfigFile, ArgumentParser
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
"""The repository root (configs, examples, benchmarks)."""
TEST_DATA = REPO / "tests" / "data"
HEAD_SIZE = 48
"""Side of the synthetic head slices of :func:`head_slice` and :func:`write_patients_tree`."""


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


def head_slice(seed: int) -> np.ndarray:
    """A bright noisy disc on a dark background: enough head for the lesion painter."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:HEAD_SIZE, :HEAD_SIZE]
    disc = (rows - HEAD_SIZE / 2) ** 2 + (cols - HEAD_SIZE / 2) ** 2 < (0.4 * HEAD_SIZE) ** 2
    return np.clip(disc * 0.5 + rng.normal(0, 0.03, (HEAD_SIZE, HEAD_SIZE)) + 0.02, 0, 1).astype(np.float32)


def write_patients_tree(root: Path) -> Path:
    """6 training patients x 3 slices, 2 test patients; splits/patients.csv has a patient column."""
    rows = ["file,label,split,mask,patient"]
    for patient in range(8):
        split = "train" if patient < 6 else "test"
        for slice_index in range(3):
            name = f"images/p{patient}_{slice_index}.png"
            (root / "images").mkdir(exist_ok=True)
            image = head_slice(10 * patient + slice_index)
            label, mask = 0, ""
            if split == "test" and slice_index == 1:
                image[20:28, 20:28] = 1.0
                label, mask = 1, f"masks/p{patient}_{slice_index}.png"
                (root / "masks").mkdir(exist_ok=True)
                lesion = np.zeros((HEAD_SIZE, HEAD_SIZE), np.uint8)
                lesion[20:28, 20:28] = 255
                Image.fromarray(lesion).save(root / mask)
            Image.fromarray((image * 255).astype(np.uint8)).save(root / name)
            rows.append(f"{name},{label},{split},{mask},P{patient}")
    (root / "splits").mkdir()
    (root / "splits" / "patients.csv").write_text("\n".join(rows) + "\n")
    return root
