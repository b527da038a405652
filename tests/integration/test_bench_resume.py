"""An interrupted suite continues its unfinished run from a checkpoint and ends with the numbers of an
uninterrupted one (harness killed with ``kill -9`` twice, real training of ProxyAno with epoch selection)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from test_bench import model, read, toy_env

from proxyano_plugin.bench.checkpointing import ResumeCheckpoint, capture_rng, restore_rng, usable_checkpoint
from proxyano_plugin.bench.cli import main
from proxyano_plugin.bench.curves import read_curve

pytestmark = pytest.mark.slow


def resume_suite(directory: Path, root: Path) -> Path:
    """A quick toy run, then ProxyAno for 10 epochs on label-free lesion validation, checkpointing every epoch."""
    proxyano = {
        "name": "ProxyAno",
        "class_path": "proxyano_plugin.ProxyAno",
        "init_args": {"widths": [4, 8], "memory_size": 16, "proxy": "blur"},
    }
    lesions = {"val_split_mode": "lesions", "val_split_ratio": 0.34, "val_group_column": "patient"}
    suite = {
        "name": "resume",
        "seeds": [0],
        "image_size": 32,
        "max_epochs": 10,
        "train_batch_size": 1,
        "eval_batch_size": 4,
        "timing": {"batch_size": 4, "warmup": 1, "repeats": 2},
        "examples": 0,
        "checkpoint_interval_s": 1e-6,
        "trainer_args": {"check_val_every_n_epoch": 1},
        "models": [model("toy"), proxyano],
        "datasets": [
            {
                "name": "patients",
                "class_path": "proxyano_plugin.data.SplitCSV",
                "init_args": {"split_csv": "patients", "val_cache_dir": str(root / "cache"), **lesions},
                "paths": {"root": str(root)},
            }
        ],
    }
    path = directory / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def checkpoints_saved(output: Path) -> int:
    """How many checkpoints ProxyAno's log reports, over all the segments of its run."""
    logs = [path.read_text() for path in (output / "logs").glob("*.log")] if (output / "logs").exists() else []
    return sum(text.count("checkpoint: epoch") for text in logs if "ProxyAno" in text.split("\n", 1)[0])


def kill_after_checkpoints(suite: Path, output: Path, saves: int) -> None:
    """Run the suite in a harness process and ``kill -9`` it once ProxyAno has saved ``saves`` more checkpoints."""
    target = checkpoints_saved(output) + saves
    env = toy_env()
    command = [sys.executable, "-m", "proxyano_plugin.bench.cli", "run", str(suite), "--output", str(output)]
    process = subprocess.Popen([*command, "--resume"], env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while checkpoints_saved(output) < target:
        assert process.poll() is None, "the suite ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # the harness only
    process.wait()
    saved = checkpoints_saved(output)
    time.sleep(2.0)  # several epochs' time: a run outliving its harness would race the resumed one
    assert checkpoints_saved(output) == saved, "the run went on after its harness was killed"


def proxyano_record(output: Path) -> dict[str, Any]:
    (record,) = [r for r in read(output) if r["model"]["name"] == "ProxyAno"]
    return record


def test_a_suite_killed_twice_resumes_without_losing_or_repeating_runs(tmp_path: Path, patients_tree: Path) -> None:
    suite = resume_suite(tmp_path, patients_tree)
    reference = tmp_path / "reference"
    assert main(["run", str(suite), "--output", str(reference), "--no-report"]) == 0

    output = tmp_path / "interrupted"
    kill_after_checkpoints(suite, output, saves=2)
    assert [r["model"]["name"] for r in read(output)] == ["toy"]
    kill_after_checkpoints(suite, output, saves=2)  # the resumed run, after two checkpoints of its own
    assert main(["run", str(suite), "--output", str(output), "--resume", "--no-report"]) == 0

    runs = read(output)
    assert [r["model"]["name"] for r in runs] == ["toy", "ProxyAno"]  # nothing lost, nothing run twice
    resumed, uninterrupted = proxyano_record(output), proxyano_record(reference)
    assert resumed["resumes"] == 2
    assert uninterrupted["resumes"] == 0
    assert resumed["resumed_from_epoch"] >= 4
    assert resumed["selected_epoch"] == uninterrupted["selected_epoch"]
    assert resumed["selected_scores"] == uninterrupted["selected_scores"]
    assert resumed["metrics"] == pytest.approx(uninterrupted["metrics"], abs=1e-6)
    assert resumed["timing"]["fit_previous_s"] > 0
    assert not (output / "runs" / resumed["run_id"] / "resume.ckpt").exists()  # removed once recorded
    # The training curve is whole: every epoch once, the same losses and validation scores as without a kill.
    curve, reference_curve = (read_curve(o / r["curve"]) for o, r in ((output, resumed), (reference, uninterrupted)))
    assert [row["epoch"] for row in curve] == [float(epoch) for epoch in range(1, len(reference_curve) + 1)]
    assert {"train_loss", "val_image_auroc", "val_pixel_auroc"} <= set(curve[-1])
    for row, reference_row in zip(curve, reference_curve, strict=True):
        values = {key: value for key, value in row.items() if key != "seconds"}
        assert values == pytest.approx({key: reference_row[key] for key in values}, abs=1e-6)
    assert curve[-1]["seconds"] >= resumed["timing"]["fit_previous_s"]


def test_random_states_round_trip() -> None:
    state = capture_rng()
    first = torch.rand(3), np.random.rand(3), random.random()
    restore_rng(state)
    again = torch.rand(3), np.random.rand(3), random.random()
    torch.testing.assert_close(first[0], again[0])
    assert list(first[1]) == list(again[1])
    assert first[2] == again[2]


def test_a_checkpoint_that_does_not_fit_the_model_is_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    net = torch.nn.Linear(2, 1)
    path = tmp_path / "resume.ckpt"
    assert usable_checkpoint(path, net) is None  # none yet
    path.write_bytes(b"not a checkpoint")
    assert usable_checkpoint(path, net) is None
    assert "unreadable" in capsys.readouterr().out
    torch.save({"state_dict": torch.nn.Linear(3, 1).state_dict()}, path)
    assert usable_checkpoint(path, net) is None
    assert "do not fit" in capsys.readouterr().out
    torch.save({"state_dict": net.state_dict()}, path)
    assert usable_checkpoint(path, net) == path
    assert ResumeCheckpoint(path, 0).resumes == 0
