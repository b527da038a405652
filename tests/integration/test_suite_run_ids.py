"""Run ids of the shipped suites are frozen: records in benchmarks/results are found by them.

A run id hashes everything that determines a run's numbers. If a change to suite loading (defaults, types,
normalisation of a value) changed one by accident, ``--resume`` would silently train every recorded run again
and reports would show the old and the new run side by side. This test pins every id of every shipped suite,
loaded from a fixed working directory and fixed data paths.

After an intended change (a new row in a suite, a new suite), regenerate the snapshot and commit it::

    python tests/integration/test_suite_run_ids.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from proxyano_plugin.bench.suite import load_suite, shipped_suites

SNAPSHOT = Path(__file__).parents[1] / "data" / "suite_run_ids.json"
# Where relative dataset paths resolve and what the data variables point to, on any machine.
FIXED_CWD = "/"
FIXED_ENV = {"PROXYANO_SHARED_DATA": "/data/shared"}
UNSET_ENV = (
    "PROXYANO_BRATS",
    "PROXYANO_FUNDUS",
    "PROXYANO_OCT",
    "PROXYANO_LESIONS_DATA",
    "PROXYANO_LESIONS_LARGE_DATA",
)

REGENERATE = "if intended (a new row, a new suite), run `python tests/integration/test_suite_run_ids.py` and commit"


def current_run_ids() -> dict[str, dict[str, str]]:
    """``{suite: {run name: run id}}`` for every shipped suite (caller fixes cwd and environment)."""
    return {name: {run.name: run.run_id for run in load_suite(name).runs} for name in shipped_suites()}


@pytest.fixture
def fixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXED_CWD)
    for name in UNSET_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in FIXED_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("fixed_environment")
def test_shipped_suite_run_ids_are_unchanged() -> None:
    expected = json.loads(SNAPSHOT.read_text())
    current = current_run_ids()
    changed = {
        f"{suite}: {run}": f"{expected.get(suite, {}).get(run)} -> {run_id}"
        for suite, runs in current.items()
        for run, run_id in runs.items()
        if expected.get(suite, {}).get(run) != run_id
    }
    gone = [f"{suite}: {run}" for suite, runs in expected.items() for run in runs if run not in current.get(suite, {})]
    assert not changed, f"run ids changed: {changed}; {REGENERATE}"
    assert not gone, f"runs no longer in their suite: {gone}; {REGENERATE}"


if __name__ == "__main__":
    os.chdir(FIXED_CWD)
    for variable in UNSET_ENV:
        os.environ.pop(variable, None)
    os.environ.update(FIXED_ENV)
    SNAPSHOT.write_text(json.dumps(current_run_ids(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}", file=sys.stderr)
