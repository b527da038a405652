"""Run one benchmark run: fit and test through anomalib's ``Engine``, then measure inference speed.

This module runs inside the process that executes the run (a forked child, or the harness itself with
``isolation: inline``); it returns plain data that the parent turns into the run's record.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxyano_plugin.bench.checkpointing import RESUME_CHECKPOINT
from proxyano_plugin.bench.curves import CURVES_DIR, curve_callback
from proxyano_plugin.bench.per_image import PER_IMAGE_DIR, write_per_image
from proxyano_plugin.bench.runtimes import measure_runtimes, median_seconds
from proxyano_plugin.bench.spec import RunSpec
from proxyano_plugin.bench.system import cpu_name
from proxyano_plugin.bench.validation import accepted_kwargs, import_class
from proxyano_plugin.proxies.base import cpu_count

GALLERY_HOOK = "gallery_images"
# Set by the harness when runs share the CPUs: torch threads for this run (see runner.threads_per_run).
THREADS_VARIABLE = "PROXYANO_BENCH_THREADS"
# Lines of a run's log that say how far training got; the harness quotes the last one when a run times out.
PROGRESS_PREFIX = "progress:"
# Imported once by the forkserver that starts the runs, so that each run inherits them.
WARM_MODULES = (
    "anomalib.engine",
    "anomalib.callbacks.checkpoint",
    "torch.utils.flop_counter",
    "proxyano_plugin.bench.metrics",
)


@dataclass(frozen=True)
class RunPaths:
    """Where one run writes; the record names ``log``, ``examples``, ``per_image`` and ``curve`` (relative to
    output)."""

    output: Path
    run_id: str
    # Under DDP every rank runs the run; ranks other than 0 log to their own file.
    rank: int = 0

    @property
    def run_dir(self) -> Path:
        return self.output / "runs" / self.run_id

    @property
    def log(self) -> Path:
        suffix = f".rank{self.rank}" if self.rank else ""
        return self.output / "logs" / f"{self.run_id}{suffix}.log"

    @property
    def result(self) -> Path:
        return self.run_dir / "result.json"

    @property
    def resume_checkpoint(self) -> Path:
        return self.run_dir / RESUME_CHECKPOINT

    @property
    def examples(self) -> Path:
        return self.output / "examples" / f"{self.run_id}.npz"

    @property
    def per_image(self) -> Path:
        return self.output / PER_IMAGE_DIR / f"{self.run_id}.csv"

    @property
    def curve(self) -> Path:
        return self.output / CURVES_DIR / f"{self.run_id}.csv"

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.output))


# ------------------------------------------------------------------------------------------- process entry


def child_main(spec: dict[str, Any], output: str, env: dict[str, str], harness_pid: int, resume: bool = False) -> None:
    """Entry point of a forked (or spawned) run process: its result goes to ``result.json``, its output to a log.

    With ``resume`` the run continues from its checkpoint when it has one.
    """
    os.environ.update(env)
    if THREADS_VARIABLE in env:
        import torch

        torch.set_num_threads(int(env[THREADS_VARIABLE]))
    _die_with_harness(harness_pid)
    # Ctrl-C reaches the whole process group; the parent decides what an interrupted run means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run_spec = RunSpec.from_dict(spec)
    paths = RunPaths(Path(output), run_spec.run_id, int(os.environ.get("RANK", "0")))
    result = run_captured(run_spec, paths, resume)
    if paths.rank == 0:
        tmp = paths.result.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, default=str))
        os.replace(tmp, paths.result)


def run_captured(spec: RunSpec, paths: RunPaths, resume: bool = False) -> dict[str, Any]:
    """Run with stdout and stderr going to the run's log; an exception becomes a failed result."""
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    paths.log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with _redirected(paths.log):
        print(f"run {spec.name} ({spec.run_id})\n{json.dumps(spec.to_dict(), indent=1, default=str)}", flush=True)
        try:
            result = execute(spec, paths, resume)
        except Exception as error:  # a run may fail in any way; the suite goes on
            traceback.print_exc()
            sys.stderr.flush()
            result = {"status": "failed", "error": _one_line(error)}
    result.setdefault("timing", {})["child_s"] = time.perf_counter() - start
    result["log"] = paths.relative(paths.log)
    return result


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:500]


@contextlib.contextmanager
def _redirected(log: Path) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``log`` (so native code's output lands there too), then restore."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log.open("a", buffering=1) as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            # Python-level streams too: they may not write to descriptors 1 and 2 (pytest's capture does not).
            with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _die_with_harness(harness_pid: int) -> None:
    """End this run when the harness dies (``kill -9``), instead of computing for nobody and racing the run
    that ``--resume`` starts. The run's parent is the forkserver, which outlives the harness, so the parent
    death signal would not fire: a thread waits on the harness itself (a pidfd on Linux, else polling)."""

    def watch() -> None:
        try:
            handle = os.pidfd_open(harness_pid)
        except (AttributeError, OSError):  # not Linux >= 5.3, or the harness is already gone
            handle = None
        if handle is not None:
            select.select([handle], [], [])  # readable once the harness has exited
        else:
            while _alive(harness_pid):
                time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="harness-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (the pid was reused)
        return False
    return True


# ------------------------------------------------------------------------------------------------- the run


def start_loader_workers_with(spec: RunSpec) -> str | None:
    """Set how this run's DataLoader workers start; returns the method, or None where the default stays.

    anomalib's datamodules build their loaders with ``num_workers`` only, so the workers start with the
    process's default method (fork on Linux, also on a GPU: measured on an H200, benchmarks/README.md).
    """
    if spec.loader_start_method == "default" or spec.num_workers == 0:
        return None
    import torch.multiprocessing

    torch.multiprocessing.set_start_method(spec.loader_start_method, force=True)
    if spec.loader_start_method == "forkserver":
        torch.multiprocessing.set_forkserver_preload([*WARM_MODULES, "proxyano_plugin"])
    return spec.loader_start_method


def build_datamodule(spec: RunSpec) -> Any:
    """The datamodule with the harness's batch sizes, workers and split seed where it accepts them."""
    cls = import_class(spec.dataset.class_path, "AnomalibDataModule", f"datasets.{spec.dataset.name}.class_path")
    kwargs = dict(spec.dataset.init_args)
    accepted = accepted_kwargs(cls)
    managed = {
        "train_batch_size": spec.train_batch_size,
        "eval_batch_size": spec.eval_batch_size,
        "num_workers": spec.num_workers,
        "seed": spec.data_seed,
    }
    for key, value in managed.items():
        if key not in kwargs and (accepted is None or key in accepted):
            kwargs[key] = value
    return cls(**kwargs)


def build_model(spec: RunSpec) -> Any:
    """The model, resized through its own ``configure_pre_processor`` (keeping its normalisation)."""
    cls = import_class(spec.model.class_path, "AnomalibModule", f"models.{spec.model.name}.class_path")
    kwargs = dict(spec.model.init_args)
    if spec.image_size is not None:
        kwargs["pre_processor"] = cls.configure_pre_processor(image_size=tuple(spec.image_size))
    model = cls(**kwargs)
    # The harness computes the metrics itself (see metrics.py) and saves its own examples.
    model.evaluator = None
    model.visualizer = None
    return model


def execute(spec: RunSpec, paths: RunPaths, resume: bool = False) -> dict[str, Any]:
    """Fit, test and measure one run in this process; returns the measured part of its record.

    Training saves a checkpoint every ``spec.checkpoint_interval_s`` (at an epoch end); with ``resume`` a run
    continues from it, else an old one is discarded.
    """
    start = time.perf_counter()
    import torch
    from anomalib.callbacks.checkpoint import ModelCheckpoint
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from proxyano_plugin.bench.checkpointing import ResumeCheckpoint, usable_checkpoint
    from proxyano_plugin.bench.metrics import Collector

    seed_everything(spec.seed, workers=True)
    loader_start_method = start_loader_workers_with(spec)
    datamodule = build_datamodule(spec)
    model = build_model(spec)
    collector = Collector(spec.examples, spec.timing.batch_size)
    progress = _epoch_progress()
    curve = curve_callback(paths.curve)
    checkpoint = ResumeCheckpoint(paths.resume_checkpoint, spec.checkpoint_interval_s)
    if not resume and paths.rank == 0:
        paths.resume_checkpoint.unlink(missing_ok=True)
        paths.curve.unlink(missing_ok=True)
    resume_from = usable_checkpoint(paths.resume_checkpoint, model) if resume else None
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    engine = Engine(
        # A checkpoint callback that saves nothing: Engine would add one that writes every epoch.
        callbacks=[
            collector,
            progress,
            curve,
            checkpoint,
            ModelCheckpoint(dirpath=paths.run_dir, save_top_k=0, save_last=False),
        ],
        logger=False,
        # Engine.fit makes a new numbered workspace folder in every rank: DDP ranks sharing one root raced for the
        # same `v0` and the loser's FileExistsError left the winner waiting for it forever. One root per rank.
        default_root_dir=paths.run_dir if paths.rank == 0 else paths.run_dir / f"rank{paths.rank}",
        max_epochs=spec.max_epochs,
        accelerator=spec.accelerator,
        devices=world_size,
        strategy="ddp" if world_size > 1 else "auto",
        precision=spec.precision,
        deterministic=spec.deterministic,
        enable_progress_bar=False,
        enable_model_summary=False,
        **spec.trainer_args,
    )
    use_cuda = spec.accelerator != "cpu" and torch.cuda.is_available()
    sync = torch.cuda.synchronize if use_cuda else _no_sync
    if use_cuda and torch.cuda.is_initialized():  # a previous run in this process (isolation: inline)
        torch.cuda.reset_peak_memory_stats()
    setup_s = time.perf_counter() - start
    fit_s = _timed(lambda: engine.fit(model, datamodule=datamodule, ckpt_path=resume_from), sync)
    test_s = _timed(lambda: engine.test(model, datamodule=datamodule, verbose=False), sync)
    trainer = engine.trainer
    if trainer.global_rank != 0:
        return {"status": "ok"}
    # Scores, labels and mask areas of every test image: subsets and strata are computed from them later.
    per_image = write_per_image(paths.per_image, collector.per_image, root=spec.dataset.init_args.get("root"))

    measure_start = time.perf_counter()
    # Other processes competing for the CPUs distort latency and throughput; record how busy it was.
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    device = trainer.strategy.root_device
    model.to(device).eval()
    # The test loop's own pre-processed images, in the model's dtype (half under "16-true" precision).
    dtype = next((p.dtype for p in model.model.parameters() if p.is_floating_point()), torch.float32)
    images = torch.stack(collector.timing_images).to(dtype)
    with torch.inference_mode(), trainer.precision_plugin.test_step_context():
        speed = measure_speed(model.model, images, spec.timing, device, sync)
    runtimes = measure_runtimes(model, images, spec.timing, paths.run_dir / "exported", device, sync)
    flops = count_flops(model.model, images[:1].to(device))
    if flops:  # how much of the device's peak a path reaches: divide by the peak of the precision it runs in
        for measured in (speed, *runtimes.values()):
            if "throughput_ips" in measured:
                measured["achieved_tflops"] = flops * measured["throughput_ips"] / 1e12
    if runtimes:
        speed["runtimes"] = runtimes
    measure_s = time.perf_counter() - measure_start
    perf = {
        **speed,
        "load_avg_1m": load,
        "flops_per_image": flops,
        "param_count": sum(p.numel() for p in model.model.parameters()),
        "state_mb": sum(t.numel() * t.element_size() for t in (*model.model.parameters(), *model.model.buffers()))
        / 2**20,
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }
    examples_start = time.perf_counter()
    examples = save_examples(model, collector.example_items, paths.examples, device) if spec.examples else None
    return {
        "status": "ok",
        "device": describe_device(device, world_size),
        # How DataLoader workers were started when not the platform's default (None: default, or no workers).
        "loader_start_method": loader_start_method,
        "timing": {
            "setup_s": setup_s,
            # Training time of the whole run: earlier segments up to their checkpoint, and this one.
            "fit_s": checkpoint.trained_s + fit_s,
            "fit_previous_s": checkpoint.trained_s,
            "test_s": test_s,
            "metrics_s": collector.metrics_s,
            "measure_s": measure_s,
            "examples_s": time.perf_counter() - examples_start,
        },
        "perf": perf,
        "metrics": collector.metrics,
        "counts": collector.counts,
        "examples": paths.relative(examples) if examples else None,
        "per_image": paths.relative(per_image),
        # Losses and validation scores per epoch (models trained for zero epochs have none).
        "curve": paths.relative(paths.curve) if paths.curve.exists() else None,
        # The epoch (0-based) whose weights were tested, when the model chose it on a label-free validation set.
        "selected_epoch": getattr(getattr(model, "best_epoch", None), "best_epoch", None),
        "selected_scores": getattr(getattr(model, "best_epoch", None), "best_metrics", None),
        "selected_scoring": _selected_scoring(model),
        # How many times this run was continued from a checkpoint, and the epoch the last one started at.
        "resumes": checkpoint.resumes,
        "resumed_from_epoch": checkpoint.resumed_from_epoch,
    }


def _selected_scoring(model: Any) -> dict[str, Any] | None:
    """The scoring a model chose on the label-free validation set (ProxyAno's ``score_candidates``), if any."""
    scoring = getattr(model, "selected_scoring", None)
    return None if scoring is None else scoring._asdict()


def _epoch_progress(interval_s: float = 30.0) -> Any:
    """A callback writing ``progress:`` lines to the run's log: training start, the first epoch, then at most
    one line per ``interval_s`` and the last epoch, so that a slow or stuck run shows where it is."""
    from lightning.pytorch import Callback

    class EpochProgress(Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            del pl_module
            self.start = self.last = time.perf_counter()
            batches = trainer.num_training_batches
            print(f"{PROGRESS_PREFIX} training started, {batches} batches per epoch", flush=True)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            del pl_module
            now = time.perf_counter()
            epoch, total = trainer.current_epoch + 1, trainer.max_epochs
            final = total is not None and total > 0 and epoch >= total
            if epoch > 1 and not final and now - self.last < interval_s:
                return
            self.last = now
            metrics = trainer.callback_metrics.items()
            # Training losses, and the label-free validation scores of models that select their epoch.
            losses = " ".join(
                f"{name}={float(value):.4g}" for name, value in metrics if name.startswith(("train", "val_"))
            )
            of_total = f"/{total}" if total is not None and total > 0 else ""
            print(
                f"{PROGRESS_PREFIX} epoch {epoch}{of_total}, step {trainer.global_step}, "
                f"{now - self.start:.0f} s {losses}".rstrip(),
                flush=True,
            )

    return EpochProgress()


def last_progress(log: Path) -> str | None:
    """The last ``progress:`` line of a run's log, without the prefix (``None`` if it has none)."""
    with contextlib.suppress(OSError):
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith(PROGRESS_PREFIX)]
        if lines:
            return lines[-1].removeprefix(PROGRESS_PREFIX).strip()
    return None


def _no_sync() -> None:
    """CPU work is synchronous."""


def _timed(action: Callable[[], Any], sync: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    sync()
    return time.perf_counter() - start


def measure_speed(net: Any, images: Any, timing: Any, device: Any, sync: Callable[[], None]) -> dict[str, Any]:
    """Latency at batch 1 and throughput at ``timing.batch_size`` of the eval-mode torch model (median time).

    The images are the test loop's own pre-processed tensors, repeated when the test set is smaller than a batch.
    """
    import torch

    batch = torch.cat([images] * math.ceil(timing.batch_size / len(images)))[: timing.batch_size]
    single_input, batch_input = images[:1].to(device), batch.to(device)
    single = median_seconds(lambda: net(single_input), timing, sync)
    full = median_seconds(lambda: net(batch_input), timing, sync)
    return {
        "latency_ms": single * 1e3,
        "throughput_ips": timing.batch_size / full,
        "timing_batch_size": timing.batch_size,
    }


def count_flops(net: Any, single: Any) -> float | None:
    """FLOPs of one forward pass on one image, as torch's FlopCounterMode counts them (None if it cannot)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    try:
        with torch.inference_mode(), counter:
            net(single)
    except Exception as error:  # counting is best effort; it must not fail a run that worked
        print(f"FLOP counting failed: {_one_line(error)}", file=sys.stderr)
        return None
    return float(counter.get_total_flops())


def peak_rss_mb() -> float:
    """Peak resident memory of this process (with process isolation: of this run)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def describe_device(device: Any, world_size: int) -> dict[str, Any]:
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        name = "Apple MPS"
    else:
        name = cpu_name()
    return {
        "type": device.type,
        "name": name,
        "count": world_size,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "cpus_available": cpu_count(),
    }


def save_examples(model: Any, items: list[dict[str, Any]], path: Path, device: Any) -> Path | None:
    """Save the gallery's examples: input, anomaly map, ground truth, and the model's intermediates."""
    import numpy as np
    import torch

    if not items:
        return None
    items = sorted(items, key=lambda item: -int(item["gt_label"]))  # anomalous rows first
    arrays: dict[str, Any] = {}
    for key in ("image", "anomaly_map", "gt_mask", "gt_label", "pred_score"):
        if all(key in item for item in items):
            arrays[key] = torch.stack([item[key] for item in items]).float().numpy()
    try:
        with torch.inference_mode():
            extras = intermediates(model, torch.from_numpy(arrays["image"]).to(device))
    except Exception as error:  # the gallery is an illustration; it must not fail a run that worked
        print(f"gallery intermediates failed: {_one_line(error)}", file=sys.stderr)
        extras = {}
    for name, tensor in extras.items():
        arrays[f"extra_{name}"] = tensor.detach().float().cpu().numpy()
    arrays = {k: v.astype(np.float16) if v.ndim > 1 else v for k, v in arrays.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, extra_names=np.array(list(extras), dtype=str), **arrays)
    return path


def intermediates(model: Any, images: Any) -> dict[str, Any]:
    """Images a model computes on the way to its anomaly map (proxy, reconstruction, ...), for the gallery.

    From the model's ``gallery_images(images) -> {name: tensor}`` when it has one; else from the image-shaped
    fields of the named tuple its torch model's ``reconstruct(images)`` returns.
    """
    import torch

    hook = getattr(model, GALLERY_HOOK, None)
    if callable(hook):
        return dict(hook(images))
    reconstruct = getattr(model.model, "reconstruct", None)
    output = reconstruct(images) if callable(reconstruct) else None
    if not hasattr(output, "_asdict"):
        return {}
    return {
        name: value
        for name, value in output._asdict().items()
        if name not in {"image", "images", "anomaly_map"}
        and isinstance(value, torch.Tensor)
        and value.ndim == 4
        and value.shape[0] == images.shape[0]
        and value.shape[-2:] == images.shape[-2:]
    }
