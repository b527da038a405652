"""Training curves of a run: one row per epoch, so that convergence is shown, not asserted.

``curves/<run_id>.csv`` holds ``epoch`` (1-based), ``step`` (optimiser steps so far), ``seconds`` (training time
of this process so far) and every ``train*`` and ``val_*`` value the model logged for that epoch (losses, and
the label-free validation AUROCs of models that validate). The file is rewritten after every epoch, so a
killed run leaves the curve up to its last epoch, and the rows live in the resume checkpoint too, so a resumed
run's curve is the same as an uninterrupted one's. ``proxyano-bench curves`` plots them.
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

CURVES_DIR = "curves"
FIXED_COLUMNS = ("epoch", "step", "seconds")


def is_curve_metric(name: str) -> bool:
    """Training losses and validation scores; not the test metrics a model may have logged earlier."""
    return name.startswith(("train", "val_"))


def write_curve(path: Path, rows: Sequence[dict[str, float]]) -> Path:
    """Write the rows atomically: a run killed while writing keeps the previous epoch's file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = sorted({key for row in rows for key in row} - set(FIXED_COLUMNS))
    tmp = path.with_name(f"{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, [*FIXED_COLUMNS, *metrics], restval="")
        writer.writeheader()
        writer.writerows({key: f"{value:.7g}" for key, value in row.items()} for row in rows)
    os.replace(tmp, path)
    return path


def read_curve(path: Path) -> list[dict[str, float]]:
    """The rows of a curve file, empty cells (a metric not logged that epoch) left out."""
    with path.open(newline="", encoding="utf-8") as handle:
        return [{key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(handle)]


def curve_callback(path: Path) -> Any:
    """A Lightning callback that appends an epoch's logged values to the curve and rewrites ``path``."""
    from lightning.pytorch import Callback

    class TrainingCurve(Callback):
        def __init__(self) -> None:
            self.rows: list[dict[str, float]] = []
            self.previous_s = 0.0  # training seconds of earlier segments of a resumed run

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            del trainer, pl_module
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            del pl_module
            row = {
                "epoch": float(trainer.current_epoch + 1),
                "step": float(trainer.global_step),
                "seconds": self.previous_s + time.perf_counter() - self.start,
            }
            for name, value in trainer.callback_metrics.items():
                if is_curve_metric(name) and value.numel() == 1 and math.isfinite(float(value)):
                    row[name] = float(value)
            self.rows.append(row)
            if trainer.is_global_zero:
                write_curve(path, self.rows)

        def state_dict(self) -> dict[str, Any]:
            return {"rows": self.rows, "seconds": self.rows[-1]["seconds"] if self.rows else 0.0}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            self.rows = list(state_dict["rows"])
            self.previous_s = float(state_dict["seconds"])

    return TrainingCurve()


class CurveFile(NamedTuple):
    name: str  # model/dataset/seedN
    run_id: str
    path: Path
    label: str  # for the plot's legend


def curve_files(directory: Path) -> list[CurveFile]:
    """The curves of a results folder: recorded runs first, then runs still training (or killed unrecorded),
    named from the first line of their log (``run NAME (ID)``)."""
    from proxyano_plugin.bench.records import RECORDS_NAME, read_records

    records = read_records(directory / RECORDS_NAME).latest() if (directory / RECORDS_NAME).exists() else []
    found = [
        CurveFile(r["name"], r["run_id"], directory / r["curve"], f"{r['name']} ({r['run_id']})")
        for r in records
        if r.get("curve") and (directory / r["curve"]).exists()
    ]
    recorded = {c.run_id for c in found}
    for path in sorted((directory / CURVES_DIR).glob("*.csv")):
        if path.stem in recorded:
            continue
        log = directory / "logs" / f"{path.stem}.log"
        first = log.read_text(errors="replace").split("\n", 1)[0] if log.exists() else ""
        name = first.split()[1] if first.startswith("run ") and len(first.split()) > 1 else path.stem
        found.append(CurveFile(name, path.stem, path, f"{name} ({path.stem}, not recorded: running or cut off)"))
    return found


def plot_curves(curves: Iterable[tuple[str, list[dict[str, float]]]], metrics: Sequence[str], output: Path) -> Path:
    """One panel per metric, one line per run, against optimiser steps."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    curves = list(curves)
    figure, axes = plt.subplots(len(metrics), 1, figsize=(7, 2.2 * len(metrics)), sharex=True, squeeze=False)
    for axis, metric in zip(axes[:, 0], metrics, strict=True):
        for label, rows in curves:
            points = [(row["step"], row[metric]) for row in rows if metric in row]
            if points:
                axis.plot(*zip(*points, strict=True), label=label, linewidth=1)
        axis.set_ylabel(metric, fontsize="small")
        axis.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("optimiser step")
    axes[0, 0].legend(fontsize="x-small")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output
