"""Checkpoints that let an interrupted benchmark run continue where it stopped, with the same numbers.

A run saves ``runs/<run_id>/resume.ckpt`` at the end of a training epoch once ``interval_s`` has passed since
the last save, atomically (a kill mid-write leaves the previous one). ``proxyano-bench run --resume``
continues an unfinished run from it. Epoch ends are the only points where a resumed run can match an
uninterrupted one exactly: Lightning cannot restart a plain DataLoader mid-epoch. The checkpoint carries
the random number generators' states (Python, NumPy, torch CPU and CUDA), which Lightning does not save,
and puts them back just before the next epoch draws its shuffle and augmentations.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

logger = logging.getLogger(__name__)

RESUME_CHECKPOINT = "resume.ckpt"


def capture_rng() -> dict[str, Any]:
    """Every global random state a training epoch draws from, as plain data (``weights_only``-loadable)."""
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": numpy_state[0],
            "keys": torch.from_numpy(numpy_state[1].copy()),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeCheckpoint(Checkpoint):
    """Saves ``path`` at epoch ends, at most once per ``interval_s``; restores random states on resume.

    A :class:`~lightning.pytorch.callbacks.Checkpoint` subclass, so Lightning calls its ``on_train_epoch_end``
    after the LightningModule's (a model that selects its best epoch has already taken this one into account).
    The last epoch is never saved: a fit resumed from it would skip ``on_train_end``, where such a model puts
    its best weights back. ``trained_s`` is the training time of the earlier segments that the checkpoint
    preserves; ``resumes`` how many times the run was continued.
    """

    def __init__(self, path: Path, interval_s: float) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self.trained_s = 0.0
        self.resumes = 0
        self.resumed_from_epoch: int | None = None
        self._segment_start = time.perf_counter()
        self._last_save = self._segment_start

    @property
    def state_key(self) -> str:
        return "ResumeCheckpoint"

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        del trainer, pl_module
        self._segment_start = self._last_save = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        del pl_module
        final = trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch + 1
        if self.interval_s <= 0 or final or trainer.should_stop:
            return
        if time.perf_counter() - self._last_save < self.interval_s:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        self._last_save = time.perf_counter()
        print(f"checkpoint: epoch {trainer.current_epoch + 1} saved for --resume ({self.path.name})", flush=True)

    def state_dict(self) -> dict[str, Any]:
        trained = self.trained_s + time.perf_counter() - self._segment_start
        return {"trained_s": trained, "resumes": self.resumes, "rng": capture_rng()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.trained_s = float(state_dict["trained_s"])
        self.resumes = int(state_dict["resumes"]) + 1
        # Now, before Lightning builds the first epoch's data iterator (which draws the shuffle's seed).
        restore_rng(state_dict["rng"])

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        del trainer, pl_module
        self.resumed_from_epoch = int(checkpoint.get("epoch", -1)) + 1


def usable_checkpoint(path: Path, model: torch.nn.Module) -> Path | None:
    """``path`` if it holds a checkpoint whose weights fit ``model``; else ``None``, saying why.

    The run id fixes the configuration, not the code: a checkpoint saved by an older version of a model may
    no longer fit it, and then the run starts again rather than failing.
    """
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        saved = {name: tuple(value.shape) for name, value in checkpoint["state_dict"].items()}
    except Exception as error:  # a damaged file must not fail the run: it only costs the time it saved
        print(f"checkpoint: ignoring {path.name} (unreadable: {type(error).__name__}: {error}); starting over")
        return None
    expected = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    if saved != expected:
        differing = sorted(set(saved) ^ set(expected)) or sorted(k for k in saved if saved[k] != expected[k])
        print(f"checkpoint: ignoring {path.name} (weights do not fit this model: {differing[:3]}); starting over")
        return None
    return path
