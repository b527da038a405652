"""The results file: one JSON record per line, appended durably, read back tolerantly.

A run's record is written (flushed and fsynced) the moment the run ends, so a killed suite loses at most
the run in flight. Reading keeps every valid line and reports the others by line number, because the last
line of a file whose writer was killed mid-write is expected to be truncated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECORDS_NAME = "records.jsonl"
SESSIONS_NAME = "sessions.jsonl"
LOCK_NAME = ".lock"
MEASURED_KEYS = ("fit_s", "test_s", "measure_s")
"""A run's timing entries that are the measured work; the rest of its wall time is harness overhead."""


def measured_seconds(timing: Mapping[str, Any] | None) -> float:
    """Seconds of a run's ``timing`` spent fitting, testing and measuring speed (in this process: a resumed
    run's ``fit_s`` also counts the earlier segments, ``fit_previous_s``)."""
    timing = timing or {}
    return sum(timing.get(key) or 0.0 for key in MEASURED_KEYS) - (timing.get("fit_previous_s") or 0.0)


def session_overhead(wall_s: float, runs: Iterable[tuple[float, float, float]]) -> tuple[float, float]:
    """``(overhead_s, work_s)`` of one harness invocation from its wall time and its runs' ``(start, end, measured_s)``.

    Work is the time with no run in flight (imports, validation, report) plus every run's duration; overhead
    is that time plus each run's duration outside fit, test and speed measurement. With one run at a time
    work is the wall time and overhead is wall minus measured; with runs in parallel ``wall - measured``
    would go negative, so the runs' durations are summed instead.
    """
    runs = sorted(runs)
    busy, span_start, span_end = 0.0, None, None
    for start, end, _ in runs:  # length of the union of the runs' intervals
        if span_end is None or start > span_end:
            busy += 0.0 if span_end is None else span_end - span_start
            span_start, span_end = start, end
        else:
            span_end = max(span_end, end)
    busy += 0.0 if span_end is None else span_end - span_start
    alone = max(wall_s - busy, 0.0)
    durations = sum(end - start for start, end, _ in runs)
    return alone + durations - sum(measured for *_, measured in runs), alone + durations


class ResultsError(RuntimeError):
    """The output directory cannot be used as asked (exists, locked)."""


@dataclass
class Records:
    """Valid records of a results file, and a description of each line that was not one."""

    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def finished_ids(self) -> set[str]:
        """Run ids with a successful record: what ``--resume`` skips."""
        return {r["run_id"] for r in self.records if r.get("status") == "ok"}

    def latest(self) -> list[dict[str, Any]]:
        """The last record of each run id (a resumed failure may be followed by a success)."""
        by_id = {r["run_id"]: r for r in self.records}
        return list(by_id.values())


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a single line and make it durable before returning."""
    line = json.dumps(record, sort_keys=True, default=str, allow_nan=False)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_records(path: Path) -> Records:
    """Read a results file, keeping the valid lines and describing the rest (``path:LINE: why``)."""
    result = Records()
    if not path.exists():
        return result
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                ending = "" if line.endswith("\n") else " (truncated last line: the writer was interrupted)"
                result.problems.append(f"{path}:{number}: not valid JSON{ending}: {error.msg}")
                continue
            if not isinstance(record, dict) or "run_id" not in record or "status" not in record:
                result.problems.append(f"{path}:{number}: not a run record (no run_id/status)")
                continue
            result.records.append(record)
    return result


def repair(path: Path, records: Records) -> None:
    """Rewrite the file with only its valid lines, so that appends start on a clean line."""
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records.records:
            handle.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    backup = path.with_suffix(".jsonl.corrupt")
    os.replace(path, backup)
    os.replace(tmp, path)


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` so two suites never append to the same results file.

    ``flock`` locks vanish with their process, so a suite killed with ``kill -9`` leaves no stale lock.
    """
    import fcntl  # POSIX only; imported here so that reading records works everywhere.

    path = directory / LOCK_NAME
    handle = path.open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        msg = f"{directory} is in use by another proxyano-bench (pid {holder}); wait for it or pick another --output"
        raise ResultsError(msg) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        handle.close()
