"""Run a suite: schedule its runs on devices, one process per run, and record each one as it ends.

Each run executes in a child process: its peak memory is its own, and a crash, ``os._exit`` or an
out-of-memory kill fails that run only. Children come from a ``forkserver`` that has imported anomalib once
(so a run does not pay the import again) but never computed anything: forking the harness itself deadlocks
as soon as the harness has used torch's OpenMP thread pool (seen under pytest, where earlier tests train).
Each child gets the harness's environment and its GPUs through ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from proxyano_plugin.bench import records
from proxyano_plugin.bench.spec import RunSpec, Suite, SuiteError
from proxyano_plugin.bench.system import git_commit, versions
from proxyano_plugin.bench.worker import (
    THREADS_VARIABLE,
    WARM_MODULES,
    RunPaths,
    child_main,
    last_progress,
    run_captured,
)
from proxyano_plugin.proxies.base import cpu_count

SCHEMA_VERSION = 1
EXIT_OK, EXIT_FAILED_RUNS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _process_context() -> Any:
    """A ``forkserver`` preloaded with what every run imports; ``spawn`` where there is none (Windows)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WARM_MODULES))
    return context


def run_matches(name: str, run_id: str, pattern: str) -> bool:
    """``--only``: a glob on the run's name (``model/dataset/seedN``), or its id."""
    return fnmatch(name, pattern) or run_id == pattern


def select_runs(suite: Suite, only: str | Sequence[str] | None) -> list[RunSpec]:
    """The runs whose name (``model/dataset/seedN``) or id matches any of the ``--only`` globs, in suite order."""
    if only is None:
        return list(suite.runs)
    patterns = [only] if isinstance(only, str) else list(only)

    def matches(run: RunSpec, pattern: str) -> bool:
        return run_matches(run.name, run.run_id, pattern)

    selected = [r for r in suite.runs if any(matches(r, p) for p in patterns)]
    unmatched = [p for p in patterns if not any(matches(r, p) for r in suite.runs)]
    if unmatched:
        names = ", ".join(r.name for r in suite.runs[:6])
        msg = f"--only {', '.join(map(repr, unmatched))} matches no run (run names look like: {names})"
        raise SuiteError(msg)
    return selected


def device_slots(
    gpus: list[str], devices: int, parallel: bool, accelerator: str, runs_per_device: int = 1
) -> list[list[str] | None]:
    """One entry per run that may execute at once: the GPUs it gets, or ``None`` (default placement, CPU).

    Small models leave a GPU mostly idle (their runs are bound by data loading and Python), so
    ``runs_per_device`` runs may share one device (or group of ``devices``); on CPUs, the cores.
    """
    if accelerator == "cpu" or not gpus:
        return [None] * runs_per_device
    groups = [gpus[i : i + devices] for i in range(0, len(gpus) - devices + 1, devices)]
    if not groups:
        msg = f"devices: each run spans {devices} GPUs but only {len(gpus)} are visible ({','.join(gpus)})"
        raise SuiteError(msg)
    return [group for group in (groups if parallel else groups[:1]) for _ in range(runs_per_device)]


def base_record(spec: RunSpec) -> dict[str, Any]:
    """The part of a record known before the run starts."""
    return {
        "schema": SCHEMA_VERSION,
        "run_id": spec.run_id,
        "name": spec.name,
        "suite": spec.suite,
        "model": {"name": spec.model.name, "class_path": spec.model.class_path, "init_args": spec.model.init_args},
        "dataset": {
            "name": spec.dataset.name,
            "class_path": spec.dataset.class_path,
            "init_args": spec.dataset.init_args,
            "split": spec.dataset.split,
            "subsets": spec.dataset.subsets,
            "shortcuts": spec.dataset.shortcuts,
        },
        "seed": spec.seed,
        "config": {
            key: value for key, value in spec.to_dict().items() if key not in {"suite", "model", "dataset", "seed"}
        },
        "host": platform.node(),
        "versions": versions(),
        "git_commit": git_commit(),
    }


@dataclass
class _Job:
    spec: RunSpec
    slot: int
    processes: list[Any]
    started: float
    started_at: str
    timed_out: bool = False


@dataclass
class Runner:
    """Executes runs (one process each, over ``slots``) and appends their records as they end."""

    suite: Suite
    output: Path
    slots: list[list[str] | None]
    log: Callable[[str], None] = print
    resume: bool = False
    """Continue unfinished runs from their checkpoints (``--resume``); else they start over."""
    results: list[dict[str, Any]] = field(default_factory=list)
    intervals: list[tuple[float, float, float]] = field(default_factory=list)
    """``(start, end, measured_s)`` of each finished run, on the ``perf_counter`` clock (for the overhead)."""
    _durations: dict[str, list[float]] = field(default_factory=dict)
    _remaining: list[RunSpec] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)
    _start: float = 0.0

    @property
    def records_path(self) -> Path:
        return self.output / records.RECORDS_NAME

    def run(self, runs: list[RunSpec]) -> None:
        """Execute ``runs`` (skipped ones are recorded at once), in parallel over ``slots``."""
        self._index = {spec.run_id: number for number, spec in enumerate(runs, start=1)}
        self._remaining = list(runs)
        self._start = time.perf_counter()
        todo = []
        for spec in runs:
            if spec.dataset.skip_reason:
                self._finish(spec, {"status": "skipped", "error": spec.dataset.skip_reason}, None, now(), 0.0)
            else:
                todo.append(spec)
        todo = [spec for spec in todo if not self._adopt_finished(spec)]
        if self.suite.isolation == "inline":
            for spec in todo:
                started, started_at = time.perf_counter(), now()
                self._announce(spec, None)
                result = run_captured(spec, RunPaths(self.output, spec.run_id), self.resume)
                self._finish(spec, result, None, started_at, time.perf_counter() - started)
            return
        self._run_parallel(todo)

    def _adopt_finished(self, spec: RunSpec) -> bool:
        """Record a run that finished while no harness was there to collect it (killed meanwhile)."""
        result_path = RunPaths(self.output, spec.run_id).result
        if not (self.resume and result_path.exists()):
            return False
        try:
            result = json.loads(result_path.read_text())
        except (OSError, ValueError):
            return False
        if result.get("status") != "ok":
            return False
        self.log(f"{self._tag(spec)} {spec.name} had finished before the harness stopped; recording it")
        self._finish(spec, result, None, now(), 0.0)
        result_path.unlink()
        return True

    def _run_parallel(self, todo: list[RunSpec]) -> None:
        pending = list(todo)
        active: dict[int, _Job] = {}
        try:
            while pending or active:
                for slot in range(len(self.slots)):
                    if slot not in active and pending:
                        spec = pending.pop(0)
                        self._announce(spec, self.slots[slot])
                        active[slot] = _Job(spec, slot, self.launch(spec, self.slots[slot]), time.perf_counter(), now())
                sentinels = [p.sentinel for job in active.values() for p in job.processes]
                multiprocessing.connection.wait(sentinels, timeout=1.0)
                for slot, job in list(active.items()):
                    self._check_timeout(job)
                    if all(not p.is_alive() for p in job.processes):
                        del active[slot]
                        self._collect(job)
        finally:
            for job in active.values():  # interrupted: the runs in flight are lost, not recorded
                for process in job.processes:
                    process.terminate()
                for process in job.processes:
                    process.join(timeout=10)

    def launch(self, spec: RunSpec, gpus: list[str] | None) -> list[Any]:
        """Start the process(es) of one run: one, or one per device under DDP."""
        context = _process_context()
        paths = RunPaths(self.output, spec.run_id)
        paths.run_dir.mkdir(parents=True, exist_ok=True)
        paths.result.unlink(missing_ok=True)  # left by a harness killed before it could collect it
        env = dict(os.environ)  # the forkserver's own environment dates from its start
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        world = self.suite.devices
        threads = threads_per_run(len(self.slots) * world)
        if threads is not None:
            env[THREADS_VARIABLE] = str(threads)
        if world > 1:
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world), NODE_RANK="0")
        processes = []
        for rank in range(world):
            rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)} if world > 1 else env
            process = context.Process(
                target=child_main,
                args=(spec.to_dict(), str(self.output), rank_env, os.getpid(), self.resume),
                name=f"bench-{spec.run_id}",
            )
            process.start()
            processes.append(process)
        return processes

    def _check_timeout(self, job: _Job) -> None:
        limit = self.suite.run_timeout_s
        if limit is not None and time.perf_counter() - job.started > limit:
            for process in job.processes:
                if process.is_alive():
                    process.kill()
            for process in job.processes:
                process.join()
            job.timed_out = True

    def _collect(self, job: _Job) -> None:
        paths = RunPaths(self.output, job.spec.run_id)
        elapsed = time.perf_counter() - job.started
        if job.timed_out:
            reached = last_progress(paths.log) or "nothing (no progress line in the log)"
            error = f"timeout: run exceeded run_timeout_s={self.suite.run_timeout_s}; last progress: {reached}"
            result = {"status": "failed", "error": error}
        elif paths.result.exists():
            result = json.loads(paths.result.read_text())
            paths.result.unlink()
        else:
            result = {"status": "failed", "error": _exit_reason([p.exitcode for p in job.processes])}
        result.setdefault("log", paths.relative(paths.log))
        self._finish(job.spec, result, self.slots[job.slot], job.started_at, elapsed)

    def _announce(self, spec: RunSpec, gpus: list[str] | None) -> None:
        where = f" on GPU {','.join(gpus)}" if gpus else ""
        checkpoint = RunPaths(self.output, spec.run_id).resume_checkpoint
        again = ", continuing from its checkpoint" if self.resume and checkpoint.exists() else ""
        self.log(f"{self._tag(spec)} start {spec.name} ({spec.run_id}){where}{again}{self._eta()}")

    def _tag(self, spec: RunSpec) -> str:
        return f"[{self._index[spec.run_id]}/{len(self._index)}]"

    def _finish(
        self, spec: RunSpec, result: dict[str, Any], gpus: list[str] | None, started_at: str, elapsed: float
    ) -> None:
        record = {**base_record(spec), **result, "started_at": started_at, "finished_at": now()}
        # Under "inline" isolation peak RSS is the harness process's, not the run's alone.
        record["isolation"] = self.suite.isolation
        record["runs_per_device"] = self.suite.runs_per_device  # > 1: timings taken on a shared device
        timing = record.setdefault("timing", {})
        timing["wall_s"] = elapsed
        measured = records.measured_seconds(timing)
        timing["overhead_s"] = max(elapsed - measured, 0.0) if result["status"] == "ok" else None
        finished = time.perf_counter()
        self.intervals.append((finished - elapsed, finished, measured))
        if gpus is not None:
            record.setdefault("device", {})["gpus"] = gpus
        records.append_record(self.records_path, record)
        if result["status"] == "ok":  # recorded: its checkpoint has served
            RunPaths(self.output, spec.run_id).resume_checkpoint.unlink(missing_ok=True)
        self.results.append(record)
        self._remaining.remove(spec)
        if result["status"] == "ok":
            self._durations.setdefault(spec.model.name, []).append(elapsed)
            metrics = record.get("metrics") or {}
            shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if v is not None and k.endswith("auroc"))
            detail = f"fit {timing.get('fit_s', 0):.1f}s test {timing.get('test_s', 0):.1f}s {shown}"
        else:
            detail = f"{record.get('error')}" + (f" (log: {record['log']})" if record.get("log") else "")
        self.log(f"{self._tag(spec)} {result['status']} {spec.name} in {elapsed:.1f}s: {detail}{self._eta()}")

    def _eta(self) -> str:
        """Remaining time: each remaining run costs its model's mean duration so far (else the overall mean)."""
        finished = [d for ds in self._durations.values() for d in ds]
        if not finished:
            return ""
        mean = sum(finished) / len(finished)
        per_model = {name: sum(ds) / len(ds) for name, ds in self._durations.items()}
        estimate = sum(per_model.get(s.model.name, mean) for s in self._remaining) / len(self.slots)
        elapsed = time.perf_counter() - self._start
        return f" | elapsed {_clock(elapsed)}, ETA {_clock(estimate)}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _exit_reason(exitcodes: list[int | None]) -> str:
    """Why a run's process ended without a result (it crashed before it could write one)."""
    code = next((c for c in exitcodes if c not in (0, None)), exitcodes[0])
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = " (killed: out of memory?)" if -code == signal.SIGKILL else ""
        return f"run process died from signal {name}{hint}"
    return f"run process exited with code {code} without a result"


def threads_per_run(processes: int) -> int | None:
    """CPU threads for each of ``processes`` run processes at once, or None to leave torch's default.

    Each would otherwise take every core: several at once then crowd the CPUs, and work done on them in the
    training step (ProxyAno's superpixels on a first epoch) slows down many times over; that was the "loader
    hang" seen on a GPU machine (issue 13). A user's ``OMP_NUM_THREADS`` wins.
    """
    if processes <= 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, cpu_count() // processes)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_suite(
    suite: Suite,
    output: Path,
    *,
    resume: bool = False,
    only: str | Sequence[str] | None = None,
    dry_run: bool = False,
    gpus: list[str] | None = None,
    startup_s: float = 0.0,
    log: Callable[[str], None] = print,
) -> int:
    """Run (or with ``dry_run`` list) a suite's runs into ``output``; returns the process exit code.

    ``gpus`` defaults to the visible NVIDIA GPUs; ``startup_s`` is the time spent before this call (imports,
    validation), counted as harness overhead in ``sessions.jsonl``.
    """
    from proxyano_plugin.bench.system import visible_gpus

    session_start = time.perf_counter()
    started_at = now()
    runs = select_runs(suite, only)
    records_path = output / records.RECORDS_NAME
    gpus = visible_gpus() if gpus is None else gpus
    slots = device_slots(gpus, suite.devices, suite.parallel, suite.accelerator, suite.runs_per_device)
    if dry_run:
        done = records.read_records(records_path).finished_ids() if resume else set()
        for spec in runs:
            state = "done" if spec.run_id in done else "skip" if spec.dataset.skip_reason else "run"
            reason = f"  ({spec.dataset.skip_reason})" if state == "skip" else ""
            log(f"{state:4}  {spec.run_id}  {spec.name}{reason}")
        log(f"{len(runs)} runs; {len(slots)} at a time; results would go to {output}")
        return EXIT_OK
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise records.write_failed(output, error, "run the same command again, or pass another --output") from None
    # Up front: a folder that refuses writes would otherwise fail at the lock (or a run's record) with a traceback.
    records.check_writable(output, "make it writable, or pass --output DIR for a writable folder")
    with records.locked(output):
        existing = records.read_records(records_path)
        if not resume and records_path.exists() and records_path.stat().st_size > 0:
            msg = (
                f"{records_path} already holds {len(existing.records)} records; pass --resume to continue "
                "that suite, or --output DIR to start a new one"
            )
            raise records.ResultsError(msg)
        for problem in existing.problems:
            log(f"warning: {problem} (line skipped)")
        if existing.problems:
            records.repair(records_path, existing)
            log(f"warning: kept {len(existing.records)} valid records; the original is saved as *.jsonl.corrupt")
        done = existing.finished_ids()
        todo = [spec for spec in runs if spec.run_id not in done]
        log(
            f"suite {suite.name} ({suite.description or 'no description'}): {len(runs)} runs, "
            f"{len(runs) - len(todo)} already recorded, {len(todo)} to run, {len(slots)} at a time; results in {output}"
        )
        runner = Runner(suite, output, slots, log=log, resume=resume)
        interrupted = True
        try:
            runner.run(todo)
            interrupted = False
        finally:
            try:
                _log_session(output, runner, started_at, session_start, startup_s, interrupted)
            except records.ResultsError as error:
                if not interrupted:
                    raise
                log(f"warning: the session was not logged: {error}")  # keep the error that stopped the suite
    failed = [r for r in runner.results if r["status"] == "failed"]
    if failed:
        log(f"{len(failed)} of {len(runner.results)} runs failed: " + ", ".join(r["name"] for r in failed))
    return EXIT_FAILED_RUNS if failed else EXIT_OK


def _log_session(
    output: Path,
    runner: Runner,
    started_at: str,
    session_start: float,
    startup_s: float,
    interrupted: bool,
) -> None:
    """One line per invocation: how much of its time went to fit, test and measurement (the rest is
    harness overhead: imports, validation, process start, metric computation, examples, records)."""
    wall = time.perf_counter() - session_start + startup_s
    overhead, work = records.session_overhead(wall, runner.intervals)
    records.append_record(
        output / records.SESSIONS_NAME,
        {
            "run_id": "session",
            "status": "interrupted" if interrupted else "finished",
            "started_at": started_at,
            "finished_at": now(),
            "runs": len(runner.results),
            "wall_s": wall,
            "startup_s": startup_s,
            "measured_s": sum(measured for *_, measured in runner.intervals),
            "work_s": work,
            "overhead_s": overhead,
            "overhead_fraction": overhead / work if work > 0 else None,
        },
    )
