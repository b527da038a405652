"""The example third-party package (examples/custom_proxy) installs and registers its ``median`` proxy."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_example_package_registers_a_working_median_proxy(example_proxy_site: Path) -> None:
    code = """
import cv2, numpy as np, torch
from proxyano_plugin.proxies import available_proxies, create_proxy
print(available_proxies()["median"])
proxy = create_proxy("median", size=3)
images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
result = proxy(images)
image_8bit = np.rint(images[1].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
expected = torch.from_numpy(cv2.medianBlur(image_8bit, 3) / 255.0).permute(2, 0, 1).float()
assert result.shape == images.shape and torch.allclose(result[1], expected), "median differs from OpenCV"
print(proxy.cache_key)
"""
    env = {**os.environ, "PYTHONPATH": str(example_proxy_site)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == ["proxyano-median-proxy 0.1.0", "median(size=3)"]
