"""Fixtures shared by several test modules."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def example_proxy_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/custom_proxy pip-installed into a folder of its own (put it on PYTHONPATH to use it)."""
    site = tmp_path_factory.mktemp("example_proxy_site")
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target"]
    subprocess.run([*install, str(site), str(REPO / "examples" / "custom_proxy")], check=True, capture_output=True)
    return site
