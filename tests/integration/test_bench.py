"""The benchmark harness end to end, on tiny models and a tiny Folder tree (32 px PNGs with masks).

The toy models below are referenced by class path (``test_bench.MeanScore``), as a suite would; runs fork
from the test process, so they find this module already imported.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
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
from anomalib.data import InferenceBatch
from anomalib.models import AnomalibModule
from PIL import Image
from testing_utils import TEST_DATA
from torch import nn

from proxyano_plugin.bench import records, report
from proxyano_plugin.bench.cli import main
from proxyano_plugin.bench.curves import CURVES_DIR, curve_files, read_curve, write_curve
from proxyano_plugin.bench.metrics import compute_metrics
from proxyano_plugin.bench.runner import device_slots, run_suite, threads_per_run
from proxyano_plugin.bench.spec import SuiteError
from proxyano_plugin.bench.suite import load_suite
from proxyano_plugin.bench.worker import start_loader_workers_with
from proxyano_plugin.models.base import OneClassReconstruction

HERE = Path(__file__).parent


def toy_env() -> dict[str, str]:
    """The environment of a ``proxyano-bench`` subprocess that imports the toy models below (and testing_utils)."""
    paths = [str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


TOYS = __name__  # class paths below: f"{TOYS}.MeanScore"


# ------------------------------------------------------------------------------------------------ toy models


class _IntensityNet(nn.Module):
    """Anomaly map = pixel intensity: the test lesions are bright, so this detects them."""

    def __init__(self, reduce: str) -> None:
        super().__init__()
        self.reduce = reduce
        self.gain = nn.Parameter(torch.ones(1))

    def forward(self, image: torch.Tensor) -> InferenceBatch:
        anomaly_map = image.mean(dim=1, keepdim=True) * self.gain
        flat = anomaly_map.flatten(1)
        score = flat.mean(dim=1) if self.reduce == "mean" else flat.amax(dim=1)
        return InferenceBatch(pred_score=score, anomaly_map=anomaly_map)


class MeanScore(OneClassReconstruction, AnomalibModule):
    """Scores an image by its mean intensity; trains a gain that stays at 1, so training is cheap."""

    def __init__(
        self,
        reduce: str = "mean",
        sleep_s: float = 0.0,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Any = True,
        visualizer: Any = True,
    ) -> None:
        super().__init__(pre_processor, post_processor, evaluator, visualizer)
        self.model = _IntensityNet(reduce)
        self.sleep_s = sleep_s

    def training_step(self, batch: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        time.sleep(self.sleep_s)
        loss = (self.model.gain - 1).square().sum()
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def gallery_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"reconstruction": images * 0.5}


class Failing(MeanScore):
    """Raises during training, as a broken model would."""

    def training_step(self, batch: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        msg = "boom: this model always fails"
        raise RuntimeError(msg)


class Crashing(MeanScore):
    """Dies without a Python exception, as an out-of-memory kill would."""

    def training_step(self, batch: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError  # not reached


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """normal/ (10), abnormal/ (4, a bright square each) and masks/ of 32 px grayscale PNGs."""
    root = tmp_path_factory.mktemp("tiny_folder")
    rng = np.random.default_rng(0)
    for sub in ("normal", "abnormal", "masks"):
        (root / sub).mkdir()
    for index in range(10):
        image = rng.uniform(40, 120, (32, 32)).astype(np.uint8)
        Image.fromarray(image).save(root / "normal" / f"n{index}.png")
    for index in range(4):
        image = rng.uniform(40, 120, (32, 32))
        mask = np.zeros((32, 32), np.uint8)
        top, left = rng.integers(2, 22, size=2)
        image[top : top + 8, left : left + 8] = 230
        mask[top : top + 8, left : left + 8] = 255
        Image.fromarray(image.astype(np.uint8)).save(root / "abnormal" / f"a{index}.png")
        Image.fromarray(mask).save(root / "masks" / f"a{index}.png")
    return root


def make_suite(directory: Path, folder: Path, models: list[dict[str, Any]], **top: Any) -> Path:
    """Write a suite YAML for ``models`` on the tiny folder and return its path."""
    suite = {
        "name": "toy",
        "seeds": [0, 1],
        "image_size": 32,
        "max_epochs": 1,
        "train_batch_size": 4,
        "eval_batch_size": 4,
        "timing": {"batch_size": 4, "warmup": 1, "repeats": 2},
        "examples": 2,
        "models": models,
        "datasets": [
            {
                "name": "tiny",
                "folder": {
                    "root": str(folder),
                    "normal_dir": "normal",
                    "abnormal_dir": "abnormal",
                    "mask_dir": "masks",
                    "normal_split_ratio": 0.3,
                    "val_split_mode": "same_as_test",
                },
            }
        ],
        **top,
    }
    path = directory / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def split_csv_suite(directory: Path, folder: Path, root: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """A written suite of the ``mean`` model on one SplitCSV dataset (split ``main`` under ``root``); returns its
    path, its raw YAML content and that dataset entry, for tests that rewrite the entry."""
    path = make_suite(directory, folder, [model("mean")])
    raw = yaml.safe_load(path.read_text())
    plain = {"name": "csv", "class_path": "proxyano_plugin.data.SplitCSV", "init_args": {"split_csv": "main"}}
    plain["paths"] = {"root": str(root)}
    raw["datasets"] = [plain]
    path.write_text(yaml.safe_dump(raw))
    return path, raw, plain


def model(name: str, cls: str = "MeanScore", **init_args: Any) -> dict[str, Any]:
    return {"name": name, "class_path": f"{TOYS}.{cls}", "init_args": init_args}


def read(output: Path) -> list[dict[str, Any]]:
    loaded = records.read_records(output / records.RECORDS_NAME)
    assert not loaded.problems
    return loaded.records


# ----------------------------------------------------------------------------------------------------- runs


@pytest.mark.slow
def test_suite_runs_records_and_reports(tmp_path: Path, folder: Path) -> None:
    suite = make_suite(tmp_path, folder, [model("mean"), model("max", reduce="max")])
    output = tmp_path / "out"

    assert main(["run", str(suite), "--output", str(output)]) == 0

    runs = read(output)
    assert sorted(r["name"] for r in runs) == ["max/tiny/seed0", "max/tiny/seed1", "mean/tiny/seed0", "mean/tiny/seed1"]
    assert len({r["run_id"] for r in runs}) == 4
    for record in runs:
        assert record["status"] == "ok"
        assert record["metrics"]["image_auroc"] == pytest.approx(1.0)
        assert 0.5 < record["metrics"]["pixel_auroc"] <= 1.0 + 1e-6
        assert record["metrics"]["pixel_dice_oracle"] is not None
        assert record["counts"]["test_with_masks"] == record["counts"]["test_images"] > 0
        assert record["perf"]["throughput_ips"] > 0
        assert record["perf"]["latency_ms"] > 0
        assert record["perf"]["param_count"] == 1
        assert record["perf"]["peak_rss_mb"] > 0
        assert record["device"]["type"] == "cpu"
        assert record["versions"]["anomalib"]
        assert record["timing"]["fit_s"] > 0
        log = (output / record["log"]).read_text()
        assert "progress: training started" in log
        assert "progress: epoch 1/1, step" in log
        (epoch,) = read_curve(output / record["curve"])
        assert epoch["epoch"] == 1
        assert epoch["step"] > 0
        assert epoch["train_loss"] == 0
        with np.load(output / record["examples"]) as examples:
            assert examples["image"].shape == (2, 3, 32, 32)
            assert examples["extra_reconstruction"].shape == (2, 3, 32, 32)
            assert sorted(examples["gt_label"].tolist()) == [0.0, 1.0]
    for name in ("report.md", "summary.csv", "auroc.png", "accuracy_vs_throughput.png", "gallery_mean.png"):
        assert (output / name).stat().st_size > 0
    with Image.open(output / "gallery_mean.png") as gallery:
        assert gallery.mode == "P"  # a palette: galleries are committed, and the tree must stay small
    assert "| mean | 2 |" in (output / "report.md").read_text()
    assert main(["curves", str(output), "--only", "mean/*", "--metric", "train_loss"]) == 0
    assert (output / "curves.png").stat().st_size > 0
    assert main(["curves", str(output), "--metric", "val_nothing"]) == 2
    assert main(["curves", str(output), "--only", "nosuch/*"]) == 2
    session = records.read_records(output / records.SESSIONS_NAME).records[-1]
    assert session["runs"] == 4
    assert 0 < session["measured_s"] < session["wall_s"]

    # The same output again without --resume is refused; with --resume nothing reruns.
    assert main(["run", str(suite), "--output", str(output)]) == 2
    assert main(["run", str(suite), "--output", str(output), "--resume", "--no-report"]) == 0
    assert len(read(output)) == 4


@pytest.mark.slow
def test_deployed_runtimes_are_timed_beside_torch_with_their_parity(tmp_path: Path, folder: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    runtimes = ["torch-bf16", "torch-compile", "onnxruntime", "openvino"]
    timing = {"batch_size": 4, "warmup": 1, "repeats": 2, "runtimes": runtimes}
    suite = make_suite(tmp_path, folder, [model("mean")], seeds=[0], timing=timing)
    output = tmp_path / "out"
    assert main(["run", str(suite), "--output", str(output)]) == 0
    (record,) = read(output)
    measured = record["perf"]["runtimes"]
    assert sorted(measured) == sorted(runtimes)
    for runtime in runtimes:
        assert measured[runtime]["throughput_ips"] > 0, measured[runtime]
        assert "achieved_tflops" not in measured[runtime]  # the toy has no FLOPs torch counts (ProxyAno: tested)
        # FP32 paths match the eager model; bf16 keeps 8 bits of mantissa (scores here are intensities in [0, 1]).
        tolerance = 1e-2 if runtime == "torch-bf16" else 1e-4
        assert measured[runtime]["max_score_diff"] < tolerance
        assert measured[runtime]["max_map_diff"] < tolerance
    report = (output / "report.md").read_text()
    for title in ("torch bf16 (img/s)", "torch.compile (img/s)", "ONNX Runtime (img/s)", "OpenVINO (img/s)"):
        assert title in report
    unknown = r"^timing\.runtimes: 'tensorrt' not one of torch, torch-bf16, torch-compile, onnxruntime, openvino"
    with pytest.raises(SuiteError, match=unknown):
        load_suite(str(make_suite(tmp_path, folder, [model("mean")], timing={"runtimes": ["tensorrt"]})))


def test_curves_of_a_run_still_training_are_plotted_by_its_name(tmp_path: Path) -> None:
    """A long run's curve can be watched before its record exists: named from its log's first line."""
    write_curve(tmp_path / CURVES_DIR / "abc123.csv", [{"epoch": 1, "step": 5, "seconds": 1.0, "train_loss": 0.5}])
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "abc123.log").write_text("run slow/tiny/seed0 (abc123)\n{}\n")
    (found,) = curve_files(tmp_path)
    assert (found.name, found.run_id) == ("slow/tiny/seed0", "abc123")
    assert "not recorded" in found.label
    assert main(["curves", str(tmp_path), "--only", "slow/*"]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_failure_is_isolated(tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = make_suite(
        tmp_path, folder, [model("fails", "Failing"), model("crashes", "Crashing"), model("mean")], seeds=[0]
    )
    output = tmp_path / "out"

    assert main(["run", str(suite), "--output", str(output), "--no-report"]) == 1

    by_model = {r["model"]["name"]: r for r in read(output)}
    assert by_model["mean"]["status"] == "ok"
    failed = by_model["fails"]
    assert failed["status"] == "failed"
    assert failed["error"].startswith("RuntimeError: boom")
    log = (output / failed["log"]).read_text()
    assert "Traceback (most recent call last)" in log
    assert "boom: this model always fails" in log
    assert by_model["crashes"]["status"] == "failed"
    assert "SIGKILL" in by_model["crashes"]["error"]
    assert "2 of 3 runs failed" in capsys.readouterr().out


@pytest.mark.slow
def test_runs_share_a_device(tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # no user choice: the harness splits the cores
    suite = make_suite(tmp_path, folder, [model("slow", sleep_s=0.5)], max_epochs=3, runs_per_device=2)
    output = tmp_path / "out"

    assert main(["run", str(suite), "--output", str(output), "--no-report"]) == 0

    first, second = sorted(read(output), key=lambda r: r["started_at"])
    assert second["started_at"] < first["finished_at"]  # ISO timestamps: they overlapped
    assert first["runs_per_device"] == second["runs_per_device"] == 2
    assert first["device"]["cpu_threads"] == second["device"]["cpu_threads"] == threads_per_run(2)


@pytest.mark.slow
def test_loader_workers_start_the_way_the_suite_says_without_changing_the_run_id(tmp_path: Path, folder: Path) -> None:
    """Workers started from a forkserver (what runs on a GPU get, issue 13) load the data like forked ones."""
    output = tmp_path / "out"
    suite = make_suite(tmp_path, folder, [model("mean")], seeds=[0], num_workers=1, loader_start_method="forkserver")
    (tmp_path / "default").mkdir()
    default = make_suite(tmp_path / "default", folder, [model("mean")], seeds=[0], num_workers=1)
    default_id = load_suite(str(default)).runs[0].run_id

    assert main(["run", str(suite), "--output", str(output), "--no-report"]) == 0

    (record,) = read(output)
    assert record["status"] == "ok"
    assert record["loader_start_method"] == "forkserver"
    assert record["run_id"] == default_id


@pytest.mark.parametrize(
    ("method", "num_workers", "expected"),
    [("default", 4, None), ("forkserver", 0, None), ("spawn", 4, "spawn"), ("fork", 2, "fork")],
)
def test_loader_start_method_is_set_only_when_asked_for_and_used(
    tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch, method: str, num_workers: int, expected: str | None
) -> None:
    suite = make_suite(tmp_path, folder, [model("mean")], num_workers=num_workers, loader_start_method=method)
    spec = load_suite(str(suite)).runs[0]
    chosen: list[str] = []
    monkeypatch.setattr(torch.multiprocessing, "set_start_method", lambda m, force: chosen.append(m))

    assert start_loader_workers_with(spec) == expected
    assert chosen == ([expected] if expected else [])


@pytest.mark.parametrize(
    ("processes", "omp", "cpus", "expected"),
    [(1, None, 16, None), (4, None, 16, 4), (3, None, 2, 1), (4, "2", 16, None)],
)
def test_runs_sharing_the_cpus_split_their_threads(
    monkeypatch: pytest.MonkeyPatch, processes: int, omp: str | None, cpus: int, expected: int | None
) -> None:
    """Several runs at once, each with every core, crowded a 16-core GPU machine until nothing progressed."""
    monkeypatch.setattr("proxyano_plugin.bench.runner.cpu_count", lambda: cpus)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)

    assert threads_per_run(processes) == expected


@pytest.mark.slow
def test_timeout_records_how_far_the_run_got(tmp_path: Path, folder: Path) -> None:
    # About 1 s per epoch (two batches of 0.5 s); the run is killed well before its 100 epochs.
    suite = make_suite(tmp_path, folder, [model("slow", sleep_s=0.5)], seeds=[0], max_epochs=100, run_timeout_s=25)
    output = tmp_path / "out"

    assert main(["run", str(suite), "--output", str(output), "--no-report"]) == 1

    (record,) = read(output)
    assert record["status"] == "failed"
    assert record["error"].startswith("timeout: run exceeded run_timeout_s=25; last progress: epoch ")
    assert "/100, step " in record["error"]


@pytest.mark.slow
def test_resume_after_kill_loses_only_the_run_in_flight(tmp_path: Path, folder: Path) -> None:
    suite = make_suite(tmp_path, folder, [model("slow", sleep_s=0.5)], seeds=[0, 1, 2])
    output = tmp_path / "out"
    env = toy_env()
    command = [sys.executable, "-m", "proxyano_plugin.bench.cli", "run", str(suite), "--output", str(output)]
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    records_path = output / records.RECORDS_NAME
    deadline = time.monotonic() + 120
    while not (records_path.exists() and records_path.read_text().count("\n") >= 1):
        assert process.poll() is None, "the suite ended before it could be killed"
        assert time.monotonic() < deadline, "no record within 120 s"
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)  # the harness only: its run dies with it
    process.wait()
    first = read(output)
    assert len(first) in (1, 2)
    with records_path.open("a") as handle:  # what a write cut short by kill -9 would leave
        handle.write('{"run_id": "abc", "status": "o')

    assert main(["run", str(suite), "--output", str(output), "--resume", "--no-report"]) == 0

    final = read(output)
    assert final[: len(first)] == first
    assert sorted(r["seed"] for r in final) == [0, 1, 2]
    assert all(r["status"] == "ok" for r in final)
    assert (output / "records.jsonl.corrupt").exists()


def test_parallel_runs_one_per_gpu(tmp_path: Path, folder: Path) -> None:
    """Scheduling over a fake list of two GPUs (the runs themselves compute on the CPU here)."""
    suite = load_suite(str(make_suite(tmp_path, folder, [model("slow", sleep_s=1.0)], parallel=True)))
    output = tmp_path / "out"
    start = time.perf_counter()

    assert run_suite(suite, output, gpus=["0", "1"], log=lambda _: None) == 0

    wall = time.perf_counter() - start
    runs = read(output)
    assert sorted(r["device"]["cuda_visible_devices"] for r in runs) == ["0", "1"]
    assert sorted(tuple(r["device"]["gpus"]) for r in runs) == [("0",), ("1",)]
    assert wall < sum(r["timing"]["wall_s"] for r in runs)  # they overlapped


def test_device_slots() -> None:
    assert device_slots([], 1, True, "auto") == [None]
    assert device_slots(["0", "1", "2", "3"], 1, False, "auto") == [["0"]]
    assert device_slots(["0", "1", "2", "3"], 1, True, "auto") == [["0"], ["1"], ["2"], ["3"]]
    assert device_slots(["0", "1", "2", "3", "4"], 2, True, "gpu") == [["0", "1"], ["2", "3"]]
    assert device_slots(["0", "1"], 1, True, "cpu") == [None]
    assert device_slots(["0", "1"], 1, True, "auto", runs_per_device=2) == [["0"], ["0"], ["1"], ["1"]]
    assert device_slots(["0", "1"], 1, False, "auto", runs_per_device=3) == [["0"], ["0"], ["0"]]
    assert device_slots([], 1, False, "auto", runs_per_device=2) == [None, None]
    with pytest.raises(SuiteError, match="devices: each run spans 4 GPUs but only 2"):
        device_slots(["0", "1"], 4, True, "auto")


@pytest.mark.slow
def test_ddp_run_spans_two_processes(tmp_path: Path, folder: Path) -> None:
    """``devices: 2`` trains one run with DDP (two CPU processes, gloo); its metrics equal a one-device run's."""
    odd = tmp_path / "odd"  # 5 test images, so that DDP's sampler repeats one to give both ranks 3
    shutil.copytree(folder, odd)
    for sub in ("abnormal", "masks"):
        (odd / sub / "a3.png").unlink()
    suite = str(make_suite(tmp_path, odd, [model("mean")], seeds=[0], accelerator="cpu"))

    assert main(["run", suite, "--output", str(tmp_path / "one"), "--no-report"]) == 0
    assert main(["run", suite, "--output", str(tmp_path / "ddp"), "--set", "devices=2", "--no-report"]) == 0

    (single,) = read(tmp_path / "one")
    (ddp,) = read(tmp_path / "ddp")
    assert ddp["device"]["count"] == 2
    assert (tmp_path / "ddp" / "logs" / f"{ddp['run_id']}.rank1.log").exists()
    assert single["counts"]["test_images"] == ddp["counts"]["test_images"] == 5
    assert ddp["metrics"] == pytest.approx(single["metrics"])


def test_lock_prevents_two_writers(tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = make_suite(tmp_path, folder, [model("mean")], seeds=[0])
    output = tmp_path / "out"
    output.mkdir()
    with records.locked(output):
        assert main(["run", str(suite), "--output", str(output)]) == 2
    assert f"in use by another proxyano-bench (pid {os.getpid()})" in capsys.readouterr().err
    with records.locked(output):  # released when the holder's block ends
        pass


@pytest.fixture
def refuse_writes(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make ``folder`` refuse new files as a read-only mount would (chmod cannot stop root, who runs CI)."""

    def refuse(folder: Path) -> None:
        real_open = os.open
        real_temporary = records.tempfile.TemporaryFile

        def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if Path(path).parent == folder and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, flags, *args, **kwargs)

        def temporary(*args: Any, dir: Any = None, **kwargs: Any) -> Any:
            if dir is not None and Path(dir) == folder:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
            return real_temporary(*args, dir=dir, **kwargs)

        monkeypatch.setattr(records.os, "open", open_)
        monkeypatch.setattr(records.tempfile, "TemporaryFile", temporary)

    return refuse


def test_read_only_results_folder_is_refused_in_one_line(
    tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture[str], refuse_writes: Any
) -> None:
    """``run --resume`` and ``report`` on a folder that refuses writes: one line, exit 2, nothing trained."""
    suite = make_suite(tmp_path, folder, [model("mean")], seeds=[0])
    output = tmp_path / "out"
    assert main(["run", str(suite), "--output", str(output), "--no-report"]) == 0
    before = (output / "records.jsonl").read_bytes()
    refuse_writes(output)

    assert main(["run", str(suite), "--output", str(output), "--resume", "--set", "seeds=[0,1]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"proxyano-bench: error: {output} is not writable (Read-only file system): make it writable, "
        "or pass --output DIR for a writable folder"
    )
    assert main(["report", str(output)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"proxyano-bench: error: {output} is not writable (Read-only file system): make it writable, "
        f"or report on a writable copy (cp -r {output} /tmp/report)"
    )
    assert (output / "records.jsonl").read_bytes() == before


def test_full_disk_keeps_whole_records_and_says_what_to_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails part-way with ENOSPC is cut back: the file holds whole records only."""
    path = tmp_path / "records.jsonl"
    records.append_record(path, {"run_id": "a1", "status": "ok"})
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "big.npz").write_bytes(b"x" * 2_000_000)
    real_write = os.write

    def write_half_then_fail(descriptor: int, data: bytes) -> int:
        if len(data) > 10:
            real_write(descriptor, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(descriptor, data)

    monkeypatch.setattr(records.os, "write", write_half_then_fail)
    with pytest.raises(records.ResultsError) as raised:
        records.append_record(path, {"run_id": "b2", "status": "ok", "metrics": {"image_auroc": 0.5}})

    message = str(raised.value)
    assert message.startswith(f"no space left to write {path}: ")
    assert f"{tmp_path / 'examples'}/ holds 2.0 MB (gallery images of the report)" in message
    assert message.endswith("then continue with --resume (the file holds whole records only)")
    assert "\n" not in message
    loaded = records.read_records(path)
    assert (loaded.records, loaded.problems) == ([{"run_id": "a1", "status": "ok"}], [])


def test_missing_optional_data_is_skipped(tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOY_DATA", raising=False)
    path = make_suite(tmp_path, folder, [model("mean")], seeds=[0])
    raw = yaml.safe_load(path.read_text())
    raw["datasets"].append(
        {"name": "absent", "skip_if_missing": True, "folder": {"root": "${TOY_DATA}", "normal_dir": "normal"}}
    )
    path.write_text(yaml.safe_dump(raw))
    output = tmp_path / "out"

    assert main(["run", str(path), "--output", str(output), "--no-report"]) == 0

    by_dataset = {r["dataset"]["name"]: r for r in read(output)}
    assert by_dataset["tiny"]["status"] == "ok"
    assert by_dataset["absent"]["status"] == "skipped"
    assert "${TOY_DATA}" in by_dataset["absent"]["error"]

    # The variable, or --set, points the same suite at the data.
    monkeypatch.setenv("TOY_DATA", str(folder))
    suite = load_suite(str(path), ["datasets.absent.folder.abnormal_dir=abnormal"])
    absent = next(r for r in suite.runs if r.dataset.name == "absent")
    assert absent.dataset.skip_reason is None
    assert absent.dataset.init_args["root"] == str(folder.resolve())
    assert absent.dataset.init_args["abnormal_dir"] == "abnormal"


def test_only_and_dry_run(tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = make_suite(tmp_path, folder, [model("mean"), model("max", reduce="max")])
    output = tmp_path / "out"

    assert main(["run", str(suite), "--output", str(output), "--only", "max/*/seed1", "--dry-run"]) == 0

    lines = [line for line in capsys.readouterr().out.splitlines() if " run " in f" {line} "]
    assert len(lines) == 1
    assert "max/tiny/seed1" in lines[0]
    assert not output.exists()
    assert main(["run", str(suite), "--output", str(output), "--only", "nothing*"]) == 2
    capsys.readouterr()

    # Repeated --only selects the union, in suite order; a pattern that matches nothing is still an error.
    assert (
        main(
            ["run", str(suite), "--output", str(output), "--only", "max/*/seed0", "--only", "mean/*/seed1", "--dry-run"]
        )
        == 0
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if " run " in f" {line} "]
    assert [line.split()[-1] for line in lines] == ["mean/tiny/seed1", "max/tiny/seed0"]
    assert main(["run", str(suite), "--output", str(output), "--only", "max/*", "--only", "typo*"]) == 2
    assert "'typo*' matches no run" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"models": [{"name": "m", "class_path": "proxyano_plugin.NoSuchModel"}]}, r"^models\[0\]\.class_path: "),
        ({"models": [{"name": "m", "class_path": "torch.nn.Linear"}]}, r"^models\[0\]\.class_path: .*AnomalibModule"),
        ({"models": [model("m", bogus=1)]}, r"^models\[0\]\.init_args\.bogus: MeanScore.__init__ has no param"),
        ({"models": [model("m"), model("m")]}, r"^models\[1\]\.name: duplicate name 'm'"),
        ({"max_epochs": 0}, r"^max_epochs: expected an int >= 1"),
        ({"precision": "8-bit"}, r"^precision: '8-bit' is not one of"),
        ({"seeds": [0, "one"]}, r"^seeds: expected a non-empty list of ints"),
        ({"max_epoch": 3}, r"^max_epoch: unknown key \(did you mean 'max_epochs'\?\)"),
        ({"image_size": [32]}, r"^image_size: expected a positive int or \[height, width\]"),
        ({"trainer_args": {"max_epochs": 3}}, r"^trainer_args\.max_epochs: set by the harness"),
        ({"runs_per_device": 0}, r"^runs_per_device: expected an int >= 1"),
        ({"runs_per_device": 2, "isolation": "inline"}, r"^isolation: 'inline' runs one run at a time"),
        ({"loader_start_method": "thread"}, r"^loader_start_method: 'thread' is not one of"),
    ],
)
def test_invalid_suites_name_the_key(tmp_path: Path, folder: Path, change: dict[str, Any], message: str) -> None:
    path = make_suite(tmp_path, folder, [model("mean")])
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **change}))
    with pytest.raises(SuiteError, match=message):
        load_suite(str(path))


def test_dataset_settings_sit_between_the_suite_and_the_model(tmp_path: Path, folder: Path) -> None:
    """A small dataset may ask for a smaller batch and more epochs; a model's own setting still wins."""
    path = make_suite(tmp_path, folder, [model("plain"), {**model("own"), "max_epochs": 2}], seeds=[0])
    raw = yaml.safe_load(path.read_text())
    small = {**raw["datasets"][0], "name": "small", "max_epochs": 5, "train_batch_size": 2}
    raw["datasets"].append(small)
    path.write_text(yaml.safe_dump(raw))
    settings = {
        run.name: (run.max_epochs, run.train_batch_size, run.eval_batch_size) for run in load_suite(str(path)).runs
    }
    assert settings == {
        "plain/tiny/seed0": (1, 4, 4),
        "plain/small/seed0": (5, 2, 4),
        "own/tiny/seed0": (2, 4, 4),
        "own/small/seed0": (2, 2, 4),
    }
    raw["datasets"][1]["train_batch_size"] = 0
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteError, match=r"^datasets\[1\]\.train_batch_size: expected an int >= 1"):
        load_suite(str(path))
    del raw["max_epochs"], raw["datasets"][1]["train_batch_size"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteError, match=r"^max_epochs: required for plain on tiny"):
        load_suite(str(path))


def test_a_model_sets_its_own_dataset_arguments(tmp_path: Path, folder: Path) -> None:
    """``dataset_init_args`` reach that model's runs on that dataset only; mistakes name the key."""
    own = {**model("own"), "dataset_init_args": {"tiny": {"val_split_ratio": 0.3}}}
    path = make_suite(tmp_path, folder, [model("plain"), own], seeds=[0])
    raw = yaml.safe_load(path.read_text())
    raw["datasets"].append({**raw["datasets"][0], "name": "other"})
    path.write_text(yaml.safe_dump(raw))
    runs = {run.name: run for run in load_suite(str(path)).runs}
    ratios = {name: run.dataset.init_args.get("val_split_ratio") for name, run in runs.items()}
    assert ratios == {
        "plain/tiny/seed0": None,
        "plain/other/seed0": None,
        "own/tiny/seed0": 0.3,
        "own/other/seed0": None,
    }
    without = {**raw, "models": [model("plain"), model("own")]}
    path.write_text(yaml.safe_dump(without))
    unchanged = {run.name: run.run_id for run in load_suite(str(path)).runs}
    assert [name for name in runs if runs[name].run_id != unchanged[name]] == ["own/tiny/seed0"]

    for overrides, message in [
        ({"nosuch": {"val_split_ratio": 0.3}}, r"^models\[1\]\.dataset_init_args\.nosuch: no dataset named 'nosuch'"),
        ({"tiny": {"bogus": 1}}, r"^models\[1\]\.dataset_init_args\.tiny\.bogus: Folder.__init__ has no param"),
        ({"tiny": {"root": "/elsewhere"}}, r"^models\[1\]\.dataset_init_args\.tiny\.root: set on the dataset"),
    ]:
        path.write_text(
            yaml.safe_dump({**raw, "models": [model("plain"), {**model("own"), "dataset_init_args": overrides}]})
        )
        with pytest.raises(SuiteError, match=message):
            load_suite(str(path))


def test_a_model_runs_on_the_datasets_it_names(tmp_path: Path, folder: Path) -> None:
    """``datasets`` restricts a model to some of the suite's datasets, without changing any run id."""
    path = make_suite(tmp_path, folder, [model("plain"), model("own")], seeds=[0])
    raw = yaml.safe_load(path.read_text())
    raw["datasets"].append({**raw["datasets"][0], "name": "other"})
    path.write_text(yaml.safe_dump(raw))
    everywhere = {run.name: run.run_id for run in load_suite(str(path)).runs}
    only_other = {**model("own"), "datasets": ["other"], "dataset_init_args": {"other": {"val_split_ratio": 0.3}}}
    path.write_text(yaml.safe_dump({**raw, "models": [model("plain"), {**model("own"), "datasets": ["other"]}]}))
    restricted = {run.name: run.run_id for run in load_suite(str(path)).runs}
    assert sorted(restricted) == ["own/other/seed0", "plain/other/seed0", "plain/tiny/seed0"]
    assert all(restricted[name] == everywhere[name] for name in restricted)
    path.write_text(yaml.safe_dump({**raw, "models": [model("plain"), only_other]}))
    assert [run.name for run in load_suite(str(path)).runs if run.model.name == "own"] == ["own/other/seed0"]

    for own, message in [
        ({"datasets": ["nosuch"]}, r"^models\[1\]\.datasets: no dataset named 'nosuch' in this suite \(tiny, other\)"),
        ({"datasets": "other"}, r"^models\[1\]\.datasets: expected a non-empty list of dataset names"),
        ({"datasets": []}, r"^models\[1\]\.datasets: expected a non-empty list of dataset names"),
        (
            {"datasets": ["other"], "dataset_init_args": {"tiny": {"val_split_ratio": 0.3}}},
            r"^models\[1\]\.dataset_init_args\.tiny: this model does not run on 'tiny' \(its datasets: other\)",
        ),
    ]:
        path.write_text(yaml.safe_dump({**raw, "models": [model("plain"), {**model("own"), **own}]}))
        with pytest.raises(SuiteError, match=message):
            load_suite(str(path))


PROXYANO = "proxyano_plugin.ProxyAno"
AVAILABLE = "available: blur, edges, identity, superpixel"


@pytest.mark.parametrize(
    ("init_args", "message"),
    [
        ({"proxy": "nosuch"}, rf"^models\[1\]\.init_args\.proxy: unknown proxy 'nosuch'; {AVAILABLE}$"),
        (
            {"proxy": "blur", "proxy_kwargs": {"sigmaa": 3}},
            r"^models\[1\]\.init_args\.proxy_kwargs: proxy 'blur' got unexpected argument\(s\) sigmaa "
            r"\(did you mean 'sigma'\?\); it accepts: sigma$",
        ),
        ({"proxy_kwargs": {"n_segments": 0}}, r"^models\[1\]\.init_args\.proxy_kwargs: proxy 'superpixel': n_segm"),
        ({"proxy": "blur", "proxy_kwargs": [3]}, r"^models\[1\]\.init_args\.proxy_kwargs: expected a mapping"),
        ({"proxy": 3}, r"^models\[1\]\.init_args\.proxy: expected a proxy name, got 3$"),
    ],
)
def test_proxies_are_validated_with_the_suite(
    tmp_path: Path, folder: Path, init_args: dict[str, Any], message: str
) -> None:
    """A bad proxy fails loading (before anything trains), not every run of the model."""
    proxyano = {"name": "proxyano", "class_path": PROXYANO, "init_args": init_args}
    path = make_suite(tmp_path, folder, [model("mean"), proxyano])
    with pytest.raises(SuiteError, match=message):
        load_suite(str(path))


def test_unknown_proxy_fails_the_dry_run_in_one_line(
    tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proxyano = {"name": "proxyano", "class_path": PROXYANO, "init_args": {"proxy": "bluur"}}
    path = make_suite(tmp_path, folder, [model("mean"), proxyano])

    assert main(["run", str(path), "--output", str(tmp_path / "out"), "--dry-run"]) == 2

    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"proxyano-bench: error: models[1].init_args.proxy: unknown proxy 'bluur' (did you mean 'blur'?); {AVAILABLE}"
    ]
    assert "mean/tiny" not in captured.out  # no run listed: the suite never got that far
    assert not (tmp_path / "out").exists()
    # A good proxy passes, and so does the --set that fixes the typo.
    assert load_suite(str(path), ["models.proxyano.init_args.proxy=blur"]).runs


def test_invalid_dataset_path_names_the_key(tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_suite(tmp_path, folder, [model("mean")])
    raw = yaml.safe_load(path.read_text())
    raw["datasets"][0]["folder"]["root"] = str(tmp_path / "nowhere")
    path.write_text(yaml.safe_dump(raw))

    assert main(["run", str(path), "--output", str(tmp_path / "out")]) == 2

    error = capsys.readouterr().err
    assert "datasets[0].folder.root: path does not exist" in error
    assert "--set datasets.tiny.folder.root=PATH" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_quick_suite_smoke(tmp_path: Path) -> None:
    """The shipped quick suite end to end: all four models train, test and report (minutes on 2 CPU cores)."""
    output = tmp_path / "quick"
    timing = ["--set", "timing.warmup=1", "--set", "timing.repeats=2", "--set", "timing.runtimes=[torch-bf16]"]

    assert main(["run", "quick", "--output", str(output), *timing]) == 0

    runs = read(output)
    assert len(runs) == 4
    for record in runs:
        assert record["status"] == "ok", record.get("error")
        assert all(record["metrics"][key] is not None for key in ("image_auroc", "pixel_auroc", "pixel_aupro"))
        assert (output / f"gallery_{record['model']['name']}.png").exists()
        perf = record["perf"]
        assert perf["achieved_tflops"] == pytest.approx(perf["flops_per_image"] * perf["throughput_ips"] / 1e12)
        bf16 = perf["runtimes"]["torch-bf16"]
        assert bf16["throughput_ips"] > 0
        assert bf16["max_map_diff"] > 0  # convolutions ran in bf16
        if record["model"]["name"] == "ProxyAno":  # its maps are intensity errors: bf16 keeps them close
            assert bf16["max_map_diff"] < 0.05


def test_print_config_shows_the_suite_as_it_runs_and_reloads_to_the_same_runs(tmp_path: Path, capsys) -> None:
    from proxyano_plugin.bench.cli import main

    assert main(["run", "quick", "--set", "max_epochs=2", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "max_epochs: 2" in printed
    (tmp_path / "printed.yaml").write_text(printed)
    reloaded = load_suite(str(tmp_path / "printed.yaml"))
    expected = load_suite("quick", ["max_epochs=2"])
    assert [run.run_id for run in reloaded.runs] == [run.run_id for run in expected.runs]


@pytest.mark.parametrize(
    ("name", "runs"),
    [
        ("quick", 4),
        ("brain-tumor", 30),
        ("proxy-ablation", 36),
        ("paper", 36),
        ("speed", 21),
        ("speed-gpu", 4),
        ("brain-lesions", 114),
    ],
)
def test_shipped_suites_validate(name: str, runs: int) -> None:
    """Every shipped suite validates against the real classes (missing data only skips)."""
    suite = load_suite(name)
    assert len(suite.runs) == runs
    assert len({r.run_id for r in suite.runs}) == runs


# ---------------------------------------------------------------------------------------- records and report


def test_corrupt_records_are_reported_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    good = {"run_id": "a1", "status": "ok", "name": "m/d/seed0"}
    path.write_text(json.dumps(good) + "\nthis is not json\n" + '{"no_run_id": 1}\n' + '{"run_id": "b2", "sta')

    loaded = records.read_records(path)

    assert loaded.records == [good]
    assert [p.split(": ")[0] for p in loaded.problems] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert loaded.problems[2] == f"{path}:4: cut off (its writer was interrupted)"
    assert loaded.finished_ids() == {"a1"}


def test_metrics_match_anomalib_and_ignore_the_score_scale() -> None:
    from anomalib.metrics import AUROC, F1Max

    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 30 + [1] * 20)
    scores = torch.rand(50, generator=generator) + 0.3 * labels
    auroc = AUROC(fields=["pred_score", "gt_label"])
    f1max = F1Max(fields=["pred_score", "gt_label"])
    batch = type("Batch", (), {"pred_score": scores, "gt_label": labels})()
    auroc.update(batch)
    f1max.update(batch)

    ours = compute_metrics(scores, labels)

    assert ours["image_auroc"] == pytest.approx(float(auroc.compute()))
    assert ours["image_f1max"] == pytest.approx(float(f1max.compute()))
    # Raw scores far above 1 (distances, energies): a sigmoid would tie them all at 1.0; ours does not.
    assert compute_metrics(scores * 100 + 50, labels) == pytest.approx(ours)
    assert compute_metrics(scores, torch.zeros(50, dtype=torch.int))["image_auroc"] is None


def test_overhead_counts_parallel_runs_without_going_negative() -> None:
    from proxyano_plugin.bench.report import harness_overhead

    # One at a time: work is the wall time, overhead is wall minus measured (5 s alone + 3 s inside runs).
    assert records.session_overhead(25.0, [(10.0, 20.0, 9.0), (0.0, 10.0, 8.0)]) == (8.0, 25.0)
    # Two runs at once: wall minus measured would be 12 - 16 = -4; summing the runs' durations is not.
    assert records.session_overhead(12.0, [(0.0, 10.0, 8.0), (1.0, 11.0, 8.0)]) == (5.0, 21.0)
    assert records.session_overhead(3.0, []) == (3.0, 3.0)

    def run(finished: str, wall: float, fit: float) -> dict[str, Any]:
        return {"finished_at": f"2026-01-01T00:{finished}+00:00", "timing": {"wall_s": wall, "fit_s": fit}}

    def session(start: str, end: str, wall: float, status: str = "finished") -> dict[str, Any]:
        times = {"started_at": f"2026-01-01T00:{start}+00:00", "finished_at": f"2026-01-01T00:{end}+00:00"}
        return {**times, "wall_s": wall, "status": status}

    sessions = [session("00:00", "00:12", 12.0), session("01:00", "01:30", 30.0, "interrupted")]
    runs = [run("00:10", 10.0, 8.0), run("00:11", 10.0, 8.0), run("01:20", 20.0, 1.0), run("05:00", 9.0, 1.0)]
    # Only the finished session counts, joined to the two runs that ended inside it.
    assert harness_overhead(sessions, runs) == (5.0, 21.0, 1)
    assert harness_overhead([], runs) is None


def test_report_splits_runs_whose_settings_differ() -> None:
    from proxyano_plugin.bench.report import group_runs

    loaded = records.read_records(TEST_DATA / "bench_records.jsonl").records
    autoencoder = [r for r in loaded if r["model"]["name"] == "Autoencoder" and r["dataset"]["name"] == "demo"]
    longer = [
        {**r, "run_id": f"e{r['run_id']}", "config": {**r.get("config", {}), "max_epochs": 600}} for r in autoencoder
    ]
    # Where the data lives does not split a group: a copy elsewhere is the same dataset.
    moved = {**longer[0], "run_id": "moved", "dataset": {**longer[0]["dataset"], "init_args": {"root": "/else"}}}

    groups = {g.model: g for g in group_runs([*autoencoder, *longer, moved]) if g.dataset == "demo"}

    assert sorted(groups) == ["Autoencoder [max_epochs=600]", "Autoencoder [max_epochs=unset]"]
    assert len(groups["Autoencoder [max_epochs=600]"].runs) == 3
    assert len(groups["Autoencoder [max_epochs=unset]"].runs) == 2

    # What the data is does split: the same dataset name validated on another set is another group.
    revalidated = [
        {**r, "run_id": f"v{r['run_id']}", "dataset": {**r["dataset"], "init_args": {"val_subjects": 8}}}
        for r in autoencoder
    ]
    groups = {g.model: g for g in group_runs([*autoencoder, *revalidated]) if g.dataset == "demo"}
    assert sorted(groups) == ["Autoencoder [data.val_subjects=8]", "Autoencoder [data.val_subjects=unset]"]


def test_gallery_files_of_split_groups_have_plain_names() -> None:
    assert report.gallery_file("ProxyAno") == "gallery_ProxyAno.png"
    assert report.gallery_file('ProxyAno [proxy_kwargs={"n_segments": 1000}]') == (
        "gallery_ProxyAno_proxy_kwargs_n_segments_1000.png"
    )
    long_label = 'ProxyAno [score_candidates=[{"error": "l1", "map_sigma": 1.0}, {"error": "gradient", "map_sigma": %s}'
    one, other = (report.gallery_file(long_label % sigma) for sigma in ("2.0", "3.0"))
    assert len(one) <= len("gallery_.png") + report.GALLERY_NAME_CHARS
    assert one.startswith("gallery_ProxyAno_score_candidates_error_l1")
    assert one != other  # labels that differ only past the cut keep distinct files


def test_report_shows_the_validation_score_and_how_many_runs_have_it(tmp_path: Path) -> None:
    """The label-free selection score gets its own column; runs recorded before it existed are counted out."""
    loaded = records.read_records(TEST_DATA / "bench_records.jsonl").records
    autoencoder = [r for r in loaded if r["model"]["name"] == "Autoencoder" and r["dataset"]["name"] == "demo"]
    autoencoder[0] = {**autoencoder[0], "selected_scores": {"image_auroc": 0.7, "pixel_auroc": 0.9, "selection": 0.8}}
    path = tmp_path / records.RECORDS_NAME
    for record in autoencoder:
        records.append_record(path, record)

    from proxyano_plugin.bench.report import write_report

    write_report(tmp_path)

    lines = (tmp_path / "report.md").read_text().splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("| Model | n |"))
    titles, row = ([cell.strip() for cell in lines[index].split("|")] for index in (header, header + 2))
    assert row[titles.index("Validation (selection)")] == "80.0 (n=1)"
    summary = (tmp_path / "summary.csv").read_text().splitlines()
    assert "val_selection_mean,val_selection_std" in summary[0]


def test_report_matches_golden(tmp_path: Path) -> None:
    """report.md from a fixed records file; regenerate the golden file with PROXYANO_BENCH_GOLDEN=1."""
    data = TEST_DATA
    (tmp_path / records.RECORDS_NAME).write_text((data / "bench_records.jsonl").read_text())

    from proxyano_plugin.bench.report import write_report

    written = {p.name for p in write_report(tmp_path)}

    report = (tmp_path / "report.md").read_text()
    if os.environ.get("PROXYANO_BENCH_GOLDEN"):
        (data / "bench_report.md").write_text(report)
    assert report == (data / "bench_report.md").read_text()
    assert written == {"report.md", "summary.csv", "auroc.png", "accuracy_vs_throughput.png"}
    header = (tmp_path / "summary.csv").read_text().splitlines()[0]
    assert header.startswith("dataset,model,n,image_auroc_mean,image_auroc_std")


def test_report_on_a_cut_off_records_file_says_so_on_the_console(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A writer killed mid-line leaves a partial last record: the console says the report leaves it out."""
    text = (TEST_DATA / "bench_records.jsonl").read_text()
    (tmp_path / records.RECORDS_NAME).write_text(text + '{"run_id": "cut", "stat')

    assert main(["report", str(tmp_path)]) == 0

    lines = capsys.readouterr().err.strip().splitlines()
    path = tmp_path / records.RECORDS_NAME
    count = len(text.splitlines()) + 1
    assert [line for line in lines if line.startswith("proxyano-bench: warning:")] == [
        f"proxyano-bench: warning: {path}:{count}: cut off (its writer was interrupted) (left out of the report)"
    ]


# ------------------------------------------------------------------------------ per-image results and subsets


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_run_writes_per_image_results_and_reports_a_subset(tmp_path: Path, folder: Path) -> None:
    """One inline run: its per-image CSV (named in the record) reproduces its metrics; a subset gets its own row."""
    part = write_csv(
        tmp_path / "part.csv",
        "file,label,split",
        ["abnormal/a0.png,1,test", "abnormal/a1.png,1,test", "abnormal/a2.png,1,train"]
        + [f"normal/n{index}.png,0,test" for index in range(10)],
    )
    path = make_suite(tmp_path, folder, [model("mean")], seeds=[0], isolation="inline")
    raw = yaml.safe_load(path.read_text())
    raw["datasets"][0]["subsets"] = [{"name": "part", "split_csv": str(part)}]
    path.write_text(yaml.safe_dump(raw))
    output = tmp_path / "out"

    assert main(["run", str(path), "--output", str(output)]) == 0

    (record,) = read(output)
    assert record["status"] == "ok", record.get("error")
    assert record["per_image"] == f"per_image/{record['run_id']}.csv"
    assert record["selected_epoch"] is None  # the toy model chooses no epoch
    assert record["dataset"]["subsets"] == [{"name": "part", "split_csv": str(part.resolve())}]
    with (output / record["per_image"]).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["file", "label", "score", "mask_pixels"]
    assert len(rows) == record["counts"]["test_images"]
    normals = sum(row["label"] == "0" for row in rows)
    assert len(rows) - normals == 4
    for row in rows:
        # relative to the dataset's root: short, and the same on every machine
        assert Path(row["file"]).parent == Path("abnormal" if row["label"] == "1" else "normal")
        assert (folder / row["file"]).is_file()
        assert int(row["mask_pixels"]) == (64 if row["label"] == "1" else 0)  # the 8 x 8 squares, at 32 px
    assert not list((output / "per_image").glob("*.tmp"))

    from proxyano_plugin.bench.per_image import read_per_image
    from proxyano_plugin.bench.report import image_metrics

    recomputed = image_metrics(read_per_image(output / record["per_image"]))
    assert recomputed["image_auroc"] == record["metrics"]["image_auroc"]
    assert recomputed["image_aupr"] == record["metrics"]["image_aupr"]
    with (output / "summary.csv").open(newline="") as handle:
        summary = {row["dataset"]: row for row in csv.DictReader(handle)}
    assert list(summary) == ["tiny", "tiny-part"]
    assert summary["tiny-part"]["model"] == "mean"
    assert summary["tiny-part"]["n"] == "1"
    assert float(summary["tiny-part"]["image_auroc_mean"]) == pytest.approx(1.0)
    assert summary["tiny-part"]["pixel_auroc_mean"] == summary["tiny-part"]["throughput_ips_mean"] == ""
    report = (output / "report.md").read_text()
    assert "## tiny-part" in report
    assert f"images found: {normals + 2} (2 anomalous)" in report  # a2, a3 are not test rows of the subset


def test_report_computes_subsets_and_strata_from_per_image_results(tmp_path: Path) -> None:
    """A hand-made results directory (two seeds) and split CSVs; nothing trains."""
    from proxyano_plugin.bench.report import write_report

    root = tmp_path / "lgg"
    files = {f"n{i}": (0, "AA" if i < 3 else "BB", 0) for i in range(1, 5)}
    files |= {f"a{i}": (1, "AA" if i < 4 else "BB", size) for i, size in enumerate((10, 20, 30, 100, 200, 300), 1)}
    kinds = {"a1": "ring", "a2": "ring", "a3": "ring", "a4": "solid", "a5": "solid", "a6": "solid"}
    copies = {"n4", "a6"}  # copies of training images (the manifest of proxyano-prepare lesions says which)
    header = "file,label,split,mask,patient,slice,mask_pixels_256,lesion,training_copy"
    rows = [
        f"images/{n}.png,{label},test,,TCGA_{site}_1,1,{size},{kinds.get(n, '')},{int(n in copies)}"
        for n, (label, site, size) in files.items()
    ]
    write_csv(root / "splits" / "all.csv", header, [*rows, "images/t1.png,0,train,,TCGA_CC_2,1,0,,"])
    # The mid-brain subset: n1, n2, a1, a2, and a row the runs never scored.
    mid = [row for row in rows if row.split(",")[0][7:9] in ("n1", "n2", "a1", "a2")]
    write_csv(root / "splits" / "mid.csv", header, [*mid, "images/x9.png,1,test,,TCGA_AA_1,1,5"])
    scores = {"n1": 0.1, "n2": 0.5, "n3": 0.2, "n4": 0.9, "a1": 0.4, "a2": 0.6, "a3": 0.3, "a4": 0.8}
    scores |= {"a5": 0.7, "a6": 0.95}
    output = tmp_path / "out"
    lines = []
    for seed, a1 in ((0, 0.4), (1, 0.95)):
        run_id = f"run{seed}"
        # seed 0 as files written before 2026-12-07 (absolute paths), seed 1 relative to the dataset's root
        where = root / "images" if seed == 0 else Path("images")
        per_image = [
            f"{where / name}.png,{files[name][0]},{a1 if name == 'a1' else score},{files[name][2]}"
            for name, score in scores.items()
        ]
        write_csv(output / "per_image" / f"{run_id}.csv", "file,label,score,mask_pixels", per_image)
        dataset = {
            "name": "lgg",
            "class_path": "proxyano_plugin.data.SplitCSV",
            "init_args": {"root": str(root), "split_csv": "all"},
            "subsets": [{"name": "midbrain", "split_csv": str(root / "splits" / "mid.csv")}],
        }
        record = {"run_id": run_id, "name": f"m/lgg/seed{seed}", "status": "ok", "seed": seed, "dataset": dataset}
        record |= {"model": {"name": "m"}, "metrics": {"image_auroc": 0.5}, "per_image": f"per_image/{run_id}.csv"}
        lines.append(json.dumps(record))
    (output / records.RECORDS_NAME).write_text("\n".join(lines) + "\n")

    write_report(output)

    with (output / "summary.csv").open(newline="") as handle:
        summary = {row["dataset"]: row for row in csv.DictReader(handle)}
    assert list(summary) == ["lgg", "lgg-midbrain"]
    midbrain = summary["lgg-midbrain"]
    # Seed 0: a1 (0.4) beats n1 (0.1) but not n2 (0.5), a2 (0.6) beats both: 3/4; seed 1 (a1 0.95): 4/4.
    assert midbrain["n"] == "2"
    assert float(midbrain["image_auroc_mean"]) == pytest.approx(0.875)
    assert float(midbrain["image_auroc_std"]) == pytest.approx(0.1767767, rel=1e-5)
    assert midbrain["pixel_auroc_mean"] == ""
    report = (output / "report.md").read_text()
    assert "## lgg-midbrain" in report
    assert "`mid.csv` (5 rows)" in report
    assert "images found: 4 (2 anomalous)" in report
    assert "### lgg: image AUROC by stratum" in report
    # Terciles of 10, 20, 30, 100, 200, 300; the smallest against n1-n4: seed 0 5/8, seed 1 7/8.
    assert "| lesion 10-20 px | 4 | 2 | 75.0 ± 17.7 |" in report
    assert "| lesion 30-100 px | 4 | 2 |" in report
    assert "| lesion 200-300 px | 4 | 2 |" in report
    # Institution AA: n1, n2 against a1-a3 (seed 0: a1 1/2, a2 2/2, a3 1/2 -> 4/6; seed 1: 5/6).
    assert "| institution AA | 2 | 3 | 75.0 ± 11.8 |" in report
    assert "| institution BB | 2 | 3 |" in report
    # Lesion kinds against n1-n4: ring a1-a3 (seed 0: 2 + 3 + 2 of 12; seed 1, a1 at 0.95: 9 of 12), solid a4-a6.
    assert "| ring lesions | 4 | 3 | 66.7 ± 11.8 |" in report
    assert "| solid lesions | 4 | 3 | 83.3 ± 0.0 |" in report
    assert "each kind of lesion (the `lesion` column)" in report
    # Without the copies n4 and a6: n1-n3 against a1-a5 (seed 0: 2 + 3 + 2 + 3 + 3 of 15; seed 1: 14 of 15).
    assert "| no copies of training images | 3 | 5 | 90.0 ± 4.7 |" in report

    # The same directory with the subset given by the caller (a suite edited since the runs) and no strata.
    write_report(output, {"lgg": [{"name": "midbrain", "split_csv": str(tmp_path / "gone.csv")}]})
    assert "not reported: subset `lgg-midbrain`: " in (output / "report.md").read_text()


@pytest.mark.parametrize(
    ("subset", "csv_text", "message"),
    [
        ({"name": "part"}, None, r"^datasets\[0\]\.subsets\[0\]\.split_csv: required"),
        ({"name": "a.b", "split_csv": "x"}, None, r"^datasets\[0\]\.subsets\[0\]\.name: 'a\.b' must be letters"),
        (
            {"name": "p", "split": "x"},
            None,
            r"^datasets\[0\]\.subsets\[0\]\.split: unknown key \(did you mean 'split_csv'",
        ),
        (
            {"name": "p", "split_csv": "nowhere"},
            None,
            r"^datasets\[0\]\.subsets\[0\]\.split_csv: split CSV nowhere not f",
        ),
        ({"name": "p"}, "file,label\nnormal/n0.png,0\n", r"^datasets\[0\]\.subsets\[0\]\.split_csv: .*missing column"),
        ({"name": "p"}, "file,label,split\nnormal/n0.png,0,train\n", r"subsets\[0\]\.split_csv: .* has no test rows"),
    ],
)
def test_invalid_subsets_name_the_key(
    tmp_path: Path, folder: Path, subset: dict[str, Any], csv_text: str | None, message: str
) -> None:
    if csv_text is not None:
        subset["split_csv"] = str(write_csv(tmp_path / "subset.csv", *csv_text.split("\n", 1)))
    path = make_suite(tmp_path, folder, [model("mean")])
    raw = yaml.safe_load(path.read_text())
    raw["datasets"][0]["subsets"] = [subset]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteError, match=message):
        load_suite(str(path))


def test_subsets_of_a_split_csv_dataset(tmp_path: Path, folder: Path) -> None:
    """A subset found by name under root/splits; its test rows must be test rows of the dataset's own CSV; adding
    a subset changes no run id (``--resume`` reports it without training again)."""
    header = "file,label,split"
    root = tmp_path / "data"  # the split files only: validation reads no image
    write_csv(root / "splits" / "main.csv", header, ["normal/n0.png,0,train", "normal/n1.png,0,test"])
    write_csv(root / "splits" / "mid.csv", header, ["normal/n1.png,0,test"])
    write_csv(root / "splits" / "bad.csv", header, ["normal/n0.png,0,test"])
    path, raw, plain = split_csv_suite(tmp_path, folder, root)
    before = [run.run_id for run in load_suite(str(path)).runs]

    raw["datasets"] = [{**plain, "subsets": [{"name": "midbrain", "split_csv": "mid"}]}]
    path.write_text(yaml.safe_dump(raw))
    suite = load_suite(str(path))

    assert [run.run_id for run in suite.runs] == before
    expected = [{"name": "midbrain", "split_csv": str((root / "splits" / "mid.csv").resolve())}]
    assert suite.runs[0].dataset.subsets == expected
    raw["datasets"] = [{**plain, "subsets": [{"name": "midbrain", "split_csv": "bad"}]}]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(
        SuiteError, match=r"^datasets\[0\]\.subsets\[0\]\.split_csv: 1 of the 1 test rows .* \(first: normal/n0\.png\)"
    ):
        load_suite(str(path))


# ------------------------------------------------------------------------------------------- no-model scores

SHORTCUTS_HEADER = "split,statistic,level,auroc"


def test_report_shows_no_model_scores_beside_the_dataset_and_its_subset(tmp_path: Path) -> None:
    """A hand-made results directory whose records name a shortcuts.csv: each table gets its split's rows."""
    from proxyano_plugin.bench.report import write_report

    root = tmp_path / "lgg"
    header = "file,label,split"
    names = {"n1": 0, "n2": 0, "a1": 1, "a2": 1}
    write_csv(root / "splits" / "all.csv", header, [f"images/{n}.png,{label},test" for n, label in names.items()])
    write_csv(root / "splits" / "mid.csv", header, ["images/n1.png,0,test", "images/a1.png,1,test"])
    shortcuts = write_csv(
        tmp_path / "shortcuts" / "shortcuts.csv",
        SHORTCUTS_HEADER,
        [
            "all,mean intensity,image,0.696101",
            '"all","slice position: closeness to the patient\'s middle, -abs(pos - 0.5)",image,0.849985',
            "all,pixel: intensity,pixel,0.954806",
            "mid,mean intensity,image,0.607138",
            '"mid","slice position: closeness to the patient\'s middle, -abs(pos - 0.5)",image,0.543241',
            "other,mean intensity,image,0.123456",
        ],
    )
    output = tmp_path / "out"
    scores = {"n1": 0.1, "n2": 0.5, "a1": 0.4, "a2": 0.6}
    dataset = {
        "name": "lgg",
        "class_path": "proxyano_plugin.data.SplitCSV",
        "init_args": {"root": str(root), "split_csv": "all"},
        "subsets": [{"name": "midbrain", "split_csv": str(root / "splits" / "mid.csv")}],
        "shortcuts": str(shortcuts),
    }
    per_image = [f"{root / 'images' / n}.png,{names[n]},{score}," for n, score in scores.items()]
    write_csv(output / "per_image" / "run0.csv", "file,label,score,mask_pixels", per_image)
    record = {"run_id": "run0", "name": "m/lgg/seed0", "status": "ok", "seed": 0, "dataset": dataset}
    record |= {"model": {"name": "m"}, "metrics": {"image_auroc": 0.75}, "per_image": "per_image/run0.csv"}
    (output / records.RECORDS_NAME).write_text(json.dumps(record) + "\n")

    write_report(output)

    report = (output / "report.md").read_text()
    lgg = report[report.index("## lgg\n") : report.index("## lgg-midbrain")]
    midbrain = report[report.index("## lgg-midbrain") : report.index("## Plots")]
    assert "No-model scores (benchmarks/split_shortcuts.py), split `all` of `shortcuts.csv`" in lgg
    assert "| No-model score | Image AUROC | Pixel AUROC |" in lgg
    assert "| mean intensity | 69.6 | – |" in lgg
    assert "| slice position: closeness to the patient's middle, -abs(pos - 0.5) | 85.0 | – |" in lgg
    assert "| pixel: intensity | – | 95.5 |" in lgg
    assert "No-model scores (benchmarks/split_shortcuts.py), split `mid` of `shortcuts.csv`" in midbrain
    assert "| No-model score | Image AUROC |" in midbrain
    assert "Pixel AUROC" not in midbrain  # no pixel rows for this split, and subsets have no pixel metrics
    assert "| mean intensity | 60.7 |" in midbrain
    assert "| slice position: closeness to the patient's middle, -abs(pos - 0.5) | 54.3 |" in midbrain
    assert "12.3" not in report  # another split's rows
    with (output / "summary.csv").open(newline="") as handle:
        summary = [(row["dataset"], row["model"], row) for row in csv.DictReader(handle)]
    assert [(dataset, model) for dataset, model, _ in summary] == [
        ("lgg", "m"),
        ("lgg", "no-model: mean intensity"),
        ("lgg", "no-model: slice position: closeness to the patient's middle, -abs(pos - 0.5)"),
        ("lgg", "no-model: pixel: intensity"),
        ("lgg-midbrain", "m"),
        ("lgg-midbrain", "no-model: mean intensity"),
        ("lgg-midbrain", "no-model: slice position: closeness to the patient's middle, -abs(pos - 0.5)"),
    ]
    mean_intensity = summary[1][2]
    assert float(mean_intensity["image_auroc_mean"]) == pytest.approx(0.696101)
    assert mean_intensity["n"] == mean_intensity["image_auroc_std"] == mean_intensity["pixel_auroc_mean"] == ""
    assert float(summary[3][2]["pixel_auroc_mean"]) == pytest.approx(0.954806)
    assert summary[3][2]["image_auroc_mean"] == ""

    # Records name the file where it was when they ran (a worktree since removed): the sibling results folder's
    # file of that name stands in, here `shortcuts/shortcuts.csv` beside the report's `out/`.
    gone = str(tmp_path / "removed-worktree" / "shortcuts" / "shortcuts.csv")
    (output / records.RECORDS_NAME).write_text(json.dumps(record | {"dataset": dataset | {"shortcuts": gone}}) + "\n")
    write_report(output)
    assert "| mean intensity | 69.6 | – |" in (output / "report.md").read_text()
    (output / records.RECORDS_NAME).write_text(json.dumps(record) + "\n")

    # The caller's file (the suite as it is now) replaces the records'; one without the split's rows is said.
    other = write_csv(tmp_path / "other.csv", SHORTCUTS_HEADER, ["all,mean intensity,image,0.5"])
    write_report(output, shortcuts={"lgg": str(other)})
    report = (output / "report.md").read_text()
    assert "| mean intensity | 50.0 | – |" not in report  # no pixel rows now: one column
    assert "| mean intensity | 50.0 |" in report
    assert f"not reported: no-model scores of `lgg-midbrain`: {other} has no rows for split `mid`" in report


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        (None, r"^datasets\[0\]\.shortcuts: path does not exist: .*--set datasets\.csv\.shortcuts=PATH"),
        ("split,statistic,auroc\nmain,mean,0.5\n", r"^datasets\[0\]\.shortcuts: .*missing column\(s\) level"),
        ("split,statistic,level,auroc\nmain,mean,image,71.2\n", r"^datasets\[0\]\.shortcuts: .* line 2: auroc '71"),
        ("split,statistic,level,auroc\nmain,mean,voxel,0.5\n", r"^datasets\[0\]\.shortcuts: .* level 'voxel'"),
    ],
)
def test_invalid_shortcuts_name_the_key(tmp_path: Path, folder: Path, csv_text: str | None, message: str) -> None:
    root = tmp_path / "data"  # the split file only: validation reads no image
    write_csv(root / "splits" / "main.csv", "file,label,split", ["normal/n0.png,0,train", "normal/n1.png,0,test"])
    shortcuts = tmp_path / "shortcuts.csv"
    if csv_text is not None:
        shortcuts.write_text(csv_text)
    path = make_suite(tmp_path, folder, [model("mean")])
    raw = yaml.safe_load(path.read_text())
    raw["datasets"] = [
        {
            "name": "csv",
            "class_path": "proxyano_plugin.data.SplitCSV",
            "init_args": {"split_csv": "main"},
            "paths": {"root": str(root)},
            "shortcuts": str(shortcuts),
        }
    ]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteError, match=message):
        load_suite(str(path))


def test_shortcuts_change_no_run_id_and_may_be_missing_with_the_data(
    tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is recorded, relative to the current directory and with ``${VAR:-default}``, and changes no run id;
    where the data is missing (runs skipped), so may the file be."""
    root = tmp_path / "data"
    write_csv(root / "splits" / "main.csv", "file,label,split", ["normal/n0.png,0,train", "normal/n1.png,0,test"])
    write_csv(tmp_path / "scores" / "shortcuts.csv", SHORTCUTS_HEADER, ["main,mean intensity,image,0.6"])
    monkeypatch.chdir(tmp_path)
    path, raw, plain = split_csv_suite(tmp_path, folder, root)
    before = [run.run_id for run in load_suite(str(path)).runs]

    raw["datasets"] = [{**plain, "shortcuts": "${PROXYANO_TEST_SCORES:-scores}/shortcuts.csv"}]
    path.write_text(yaml.safe_dump(raw))
    suite = load_suite(str(path))

    assert [run.run_id for run in suite.runs] == before
    assert suite.runs[0].dataset.shortcuts == str((tmp_path / "scores" / "shortcuts.csv").resolve())
    from proxyano_plugin.bench.runner import base_record

    assert base_record(suite.runs[0])["dataset"]["shortcuts"] == suite.runs[0].dataset.shortcuts

    raw["datasets"] = [
        {**plain, "paths": {"root": str(tmp_path / "nowhere")}, "skip_if_missing": True, "shortcuts": "gone.csv"}
    ]
    path.write_text(yaml.safe_dump(raw))
    (run, *_) = load_suite(str(path)).runs
    assert run.dataset.skip_reason
    assert run.dataset.shortcuts == str((tmp_path / "gone.csv").resolve())

    raw = yaml.safe_load(make_suite(tmp_path, folder, [model("mean")]).read_text())
    raw["datasets"][0]["shortcuts"] = "scores/shortcuts.csv"  # a Folder dataset: no split CSV to pick rows by
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteError, match=r"^datasets\[0\]\.shortcuts: the dataset has no init_args\.split_csv"):
        load_suite(str(path))


def test_records_say_how_many_cpu_threads_computed_the_numbers() -> None:
    """The thread count is not part of the run id but changes float reductions: each record carries it."""
    from proxyano_plugin.bench.worker import describe_device

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert describe_device(torch.device("cpu"), 1)["cpu_threads"] == 1
    finally:
        torch.set_num_threads(threads)
    assert describe_device(torch.device("cpu"), 1)["cpu_threads"] == threads


def test_gallery_shows_intermediates_on_the_input_scale(tmp_path: Path) -> None:
    """A reconstruction much darker than its input is drawn dark, not stretched to its own range (white)."""
    image = np.full((1, 3, 64, 64), 0.6, dtype=np.float16)
    image[..., :8, :] = 0.0  # the input spans [0, 0.6]
    reconstruction = np.full((1, 1, 64, 64), 0.05, dtype=np.float16)
    reconstruction[..., :8, :] = 0.02
    np.savez_compressed(
        tmp_path / "examples.npz",
        extra_names=np.array(["reconstruction"]),
        image=image,
        extra_reconstruction=reconstruction,
        anomaly_map=np.full((1, 64, 64), 0.5, dtype=np.float16),
        gt_label=np.array([0.0]),
        pred_score=np.array([0.5]),
    )
    run = {"examples": "examples.npz", "seed": 0, "dataset": {"name": "set"}, "counts": {}}
    path = report._plot_gallery(tmp_path, "model", [run])
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255
    height, width = pixels.shape

    def centre_of(column: int) -> np.ndarray:  # a 20 x 20 patch at the centre of one of the 3 panels
        x = (2 * column + 1) * width // 6
        return pixels[height // 2 - 10 : height // 2 + 10, x - 10 : x + 10]

    assert centre_of(0).mean() > 0.9  # the input's body, at the top of its own range
    assert centre_of(1).mean() < 0.15  # the reconstruction, 0.05 on the input's [0, 0.6] scale


def test_report_keeps_a_gallery_whose_examples_are_not_in_this_checkout(tmp_path: Path) -> None:
    """examples/ is not committed: regenerating a report in a fresh clone keeps the drawn gallery and its link."""
    run = {"examples": "examples/gone.npz", "seed": 0, "dataset": {"name": "set"}, "counts": {}}
    assert report._plot_gallery(tmp_path, "model", [run]) is None  # nothing drawn, nothing to show
    drawn = tmp_path / report.gallery_file("model")
    drawn.write_bytes(b"png drawn by an earlier session")
    assert report._plot_gallery(tmp_path, "model", [run]) == drawn
    assert drawn.read_bytes() == b"png drawn by an earlier session"
