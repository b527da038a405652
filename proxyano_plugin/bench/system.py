"""What machine and software produced a number: recorded with every run, shown in the report header."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "anomalib", "lightning", "proxyano-plugin")


@cache
def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@cache
def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


@cache
def git_commit() -> str | None:
    """The commit of the checkout the plugin is imported from (``+dirty`` with local changes), if any."""
    git = shutil.which("git")
    if git is None:
        return None
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            [git, "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [git, "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def visible_gpus() -> list[str]:
    """Indices of the NVIDIA GPUs this process may use, found without initialising CUDA.

    The parent must not initialise CUDA: it forks the runs, and CUDA does not survive a fork. ``nvidia-smi``
    runs in its own process; ``CUDA_VISIBLE_DEVICES``, when set, restricts the list.
    """
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    restrict = os.environ.get("CUDA_VISIBLE_DEVICES")
    if restrict is not None:
        return [d.strip() for d in restrict.split(",") if d.strip()]
    return [line.strip() for line in out.splitlines() if line.strip()]
