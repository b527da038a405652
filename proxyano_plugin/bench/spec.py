"""What a benchmark suite is, once loaded: plain, frozen data (the schema), and a run's identity.

:mod:`~proxyano_plugin.bench.suite` reads a suite's YAML, :mod:`~proxyano_plugin.bench.validation` checks it
and builds these.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any


class SuiteError(ValueError):
    """An invalid suite; the message starts with the offending key."""


@dataclass(frozen=True)
class Timing:
    """How inference speed is measured (after fit and test)."""

    batch_size: int = 32
    warmup: int = 3
    repeats: int = 10
    # Where inference is timed: the eager torch model always; "torch-bf16" and "torch-compile" add it under bf16
    # autocast and compiled, on the run's device; "onnxruntime" and "openvino" add the model as exported, on
    # CPUs (bench/runtimes.py).
    runtimes: tuple[str, ...] = ("torch",)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    class_path: str
    init_args: dict[str, Any]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    class_path: str
    init_args: dict[str, Any]
    split: str | None = None
    # Why the dataset's runs are skipped (missing optional data), or None.
    skip_reason: str | None = None
    # Subsets reported from the runs' per-image results: ``{"name": ..., "split_csv": absolute path}`` each.
    subsets: list[dict[str, str]] = field(default_factory=list)
    # A ``shortcuts.csv`` of benchmarks/split_shortcuts.py (absolute path): no-model AUROCs shown beside the runs.
    shortcuts: str | None = None


# Run settings that change where a run executes, how fast, or what it saves besides its numbers.
NOT_IDENTITY = (
    "suite",
    "accelerator",
    "num_workers",
    "loader_start_method",
    "timing",
    "examples",
    "checkpoint_interval_s",
)


@dataclass(frozen=True)
class RunSpec:
    """One fully resolved run: everything the worker needs, all plain data."""

    suite: str
    model: ModelSpec
    dataset: DatasetSpec
    seed: int
    data_seed: int
    image_size: list[int] | None
    max_epochs: int
    train_batch_size: int
    eval_batch_size: int
    num_workers: int
    precision: str
    deterministic: bool | str
    accelerator: str
    trainer_args: dict[str, Any]
    timing: Timing
    examples: int
    # Seconds between the checkpoints an interrupted run continues from with --resume (0: none).
    checkpoint_interval_s: float = 600.0
    # How DataLoader workers start: "default" (the platform's: fork on Linux), "fork", "forkserver" or "spawn".
    loader_start_method: str = "default"

    @property
    def name(self) -> str:
        return f"{self.model.name}/{self.dataset.name}/seed{self.seed}"

    def identity(self) -> dict[str, Any]:
        """What determines the numbers of a run (not where or how fast it runs)."""
        config = asdict(self)
        for key in NOT_IDENTITY:
            config.pop(key)
        config["dataset"].pop("skip_reason")
        config["dataset"].pop("subsets")  # reported from the per-image results; the run's numbers are the same
        config["dataset"].pop("shortcuts")  # numbers computed without any model, shown beside the run's
        return config

    @property
    def run_id(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        data = dict(data)
        data["model"] = ModelSpec(**data["model"])
        data["dataset"] = DatasetSpec(**data["dataset"])
        timing = data["timing"]
        data["timing"] = Timing(**{**timing, "runtimes": tuple(timing.get("runtimes", Timing.runtimes))})
        return cls(**data)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    runs: list[RunSpec]
    accelerator: str = "auto"
    parallel: bool = False
    devices: int = 1
    runs_per_device: int = 1
    isolation: str = "process"
    run_timeout_s: float | None = None
