"""Fixtures shared by several test modules."""

import subprocess
import sys
from pathlib import Path

import pytest
from testing_utils import REPO, write_patients_tree


@pytest.fixture(scope="session")
def example_proxy_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/custom_proxy pip-installed into a folder of its own (put it on PYTHONPATH to use it)."""
    site = tmp_path_factory.mktemp("example_proxy_site")
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target"]
    subprocess.run([*install, str(site), str(REPO / "examples" / "custom_proxy")], check=True, capture_output=True)
    return site


@pytest.fixture
def patients_tree(tmp_path: Path) -> Path:
    """A SplitCSV tree of 8 patients with a patient column (see ``testing_utils.write_patients_tree``)."""
    return write_patients_tree(tmp_path)
