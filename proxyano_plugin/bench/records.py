"""The results file: one JSON record per line, appended durably, read back tolerantly.

A run's record is written (flushed and fsynced) the moment the run ends, so a killed suite loses at most
the run in flight. Reading keeps every valid line and reports the others by line number, because the last
line of a file whose writer was killed mid-write is expected to be truncated.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

RECORDS_NAME = "records.jsonl"
SESSIONS_NAME = "sessions.jsonl"
LOCK_NAME = ".lock"
LOCK_HOLDER_NAME = ".lock.pid"
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
    """The output directory cannot be used as asked (exists, locked, not writable, full)."""


_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
# What a results directory holds, biggest first in practice, and what deleting it costs.
_FREEABLE = (
    ("runs", "checkpoints of unfinished runs; deleting them restarts those runs"),
    ("examples", "gallery images of the report"),
    ("logs", "the runs' logs"),
)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _folder_size(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:
            continue
    return total


def disk_full_hint(directory: Path) -> str:
    """How much is free where ``directory`` lives, and which of its own folders could be freed."""
    try:
        free = f"{_megabytes(shutil.disk_usage(directory).free)} free there"
    except OSError:
        free = "free space unknown"
    own = [(name, _folder_size(directory / name), why) for name, why in _FREEABLE if (directory / name).is_dir()]
    listed = "; ".join(f"{directory / name}/ holds {_megabytes(size)} ({why})" for name, size, why in own if size)
    return f"{free}; free space on that disk (other files on it first{'; ' + listed if listed else ''})"


def write_failed(path: Path, error: OSError, then: str) -> ResultsError:
    """A :class:`ResultsError` for a failed write of ``path``: a full disk says what to free, ``then`` what next."""
    if error.errno in _FULL:
        msg = f"no space left to write {path}: {disk_full_hint(path.parent)}; then {then}"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        msg = f"cannot write {path} ({error.strerror}): make {path.parent} writable, then {then}"
    else:
        msg = f"cannot write {path} ({error.strerror or error}): then {then}"
    return ResultsError(msg)


def check_writable(directory: Path, fix: str) -> None:
    """Refuse at once a ``directory`` this process cannot create files in (read-only mode bits or mount).

    A trial file is created and deleted: ``os.access`` misjudges root, ACLs and read-only mounts. ``fix``
    ends the message (what to do instead).
    """
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".writable-"):
            pass
    except OSError as error:
        if error.errno in _FULL:
            msg = f"{directory} has no space left: {disk_full_hint(directory)}"
        else:
            msg = f"{directory} is not writable ({error.strerror or error}): {fix}"
        raise ResultsError(msg) from None


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


def _write_all(descriptor: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a write may take only part of it)."""
    written = 0
    while written < len(data):
        written += os.write(descriptor, data[written:])


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a single line and make it durable before returning.

    A write that fails part-way (a full disk) is cut back off, so the file keeps whole lines only, and
    raised as a :class:`ResultsError` that says what to free.
    """
    data = (json.dumps(record, sort_keys=True, default=str, allow_nan=False) + "\n").encode("utf-8")
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as error:
        raise write_failed(path, error, "run the same command again") from None
    try:
        start = os.fstat(descriptor).st_size
        try:
            _write_all(descriptor, data)
            os.fsync(descriptor)
        except OSError as error:
            # Shrinking needs no space; should it fail anyway, readers skip a cut-off last line (and run_suite
            # repairs the file).
            with suppress(OSError):
                os.ftruncate(descriptor, start)
            raise write_failed(path, error, "continue with --resume (the file holds whole records only)") from None
    finally:
        os.close(descriptor)


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
                why = f"not valid JSON: {error.msg}" if line.endswith("\n") else "cut off (its writer was interrupted)"
                result.problems.append(f"{path}:{number}: {why}")
                continue
            if not isinstance(record, dict) or "run_id" not in record or "status" not in record:
                result.problems.append(f"{path}:{number}: not a run record (no run_id/status)")
                continue
            result.records.append(record)
    return result


def repair(path: Path, records: Records) -> None:
    """Rewrite the file with only its valid lines, so that appends start on a clean line."""
    tmp = path.with_suffix(".jsonl.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            for record in records.records:
                handle.write(json.dumps(record, sort_keys=True, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        tmp.unlink(missing_ok=True)  # the original is untouched
        raise write_failed(tmp, error, "run the same command again") from None
    backup = path.with_suffix(".jsonl.corrupt")
    os.replace(path, backup)
    os.replace(tmp, path)


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` so two suites never append to the same results file.

    An OS lock (``filelock``: ``flock`` on POSIX, ``msvcrt`` on Windows) vanishes with its process, so a suite
    killed with ``kill -9`` leaves no stale lock. The holder's pid goes into a file beside it, for the message
    a second suite gets.
    """
    lock = FileLock(directory / LOCK_NAME, timeout=0)
    holder_file = directory / LOCK_HOLDER_NAME
    try:
        lock.acquire()
    except Timeout:
        holder = holder_file.read_text(encoding="utf-8").strip() if holder_file.exists() else "unknown"
        msg = f"{directory} is in use by another proxyano-bench (pid {holder}); wait for it or pick another --output"
        raise ResultsError(msg) from None
    except OSError as error:
        raise write_failed(directory / LOCK_NAME, error, "run the same command again") from None
    try:
        holder_file.write_text(str(os.getpid()), encoding="utf-8")
        yield
    finally:
        lock.release()
