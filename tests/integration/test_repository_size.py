"""The tracked tree stays small enough to travel: a lent GPU machine takes the working tree only up to 64 MiB.

Benchmark results are committed with their galleries; each session adds some. This fails before the tree reaches
the limit, with the largest folders named, so that the next device session is not refused at its first call.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter

import pytest
from testing_utils import REPO

DEVICE_TREE_LIMIT = 64 * 2**20
HEADROOM = 6 * 2**20  # the wheels and data a device session carries beside the tree


def test_tracked_files_leave_room_under_the_device_tree_limit() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    sizes: Counter[str] = Counter()
    for name in filter(None, listed.decode().split("\0")):
        path = REPO / name
        if path.is_file():
            sizes["/".join(name.split("/")[:3])] += path.stat().st_size
    total = sum(sizes.values())
    largest = ", ".join(f"{folder} {size / 2**20:.1f} MiB" for folder, size in sizes.most_common(5))
    assert total <= DEVICE_TREE_LIMIT - HEADROOM, f"tracked files: {total / 2**20:.1f} MiB; largest: {largest}"
