"""Every shipped model config (``configs/model/*.yaml``) builds its model.

An overlay (a ``model`` without ``class_path``) is composed onto ``proxyano.yaml``, as the command in its header
does; its trainer settings must be Trainer arguments. A renamed or mistyped argument then fails here, not in a
user's first ``anomalib train``.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest
import yaml
from lightning.pytorch import Trainer
from testing_utils import REPO

MODEL_CONFIGS = REPO / "configs" / "model"
BASE = "proxyano.yaml"


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((MODEL_CONFIGS / name).read_text())


def _composed(name: str) -> dict[str, Any]:
    config = _load(name)
    if "class_path" in config["model"]:
        return config
    base = _load(BASE)
    base["model"]["init_args"] |= config["model"].get("init_args", {})
    base["trainer"] = {**base.get("trainer", {}), **config.get("trainer", {})}
    return base


@pytest.mark.parametrize("name", sorted(path.name for path in MODEL_CONFIGS.glob("*.yaml")))
def test_shipped_model_config_builds_its_model(name: str) -> None:
    config = _composed(name)
    module, _, class_name = config["model"]["class_path"].rpartition(".")
    model_class = getattr(importlib.import_module(module), class_name)

    model = model_class(**config["model"].get("init_args", {}))

    assert isinstance(model, model_class)
    assert set(config.get("trainer", {})) <= set(inspect.signature(Trainer.__init__).parameters)


def test_the_large_lesion_overlay_is_the_global_code_row() -> None:
    """The benchmark row it stands for (brain-lesions `ProxyAno-code16-long-averaged-wide-flip-twin-validation`)."""
    config = _composed("proxyano_large_lesions.yaml")
    arguments = config["model"]["init_args"]
    assert (arguments["pem_skips"], arguments["pem_code_size"], arguments["memory_size"]) == ("none", 16, 0)
    assert arguments["weight_averaging"] == 0.995
    assert arguments["widths"] == [16, 32, 64, 128]
    assert arguments["flip_jitter"] == 0.5  # kept by the twin-validation rule (76.7 against 76.0 + 0.5)
    assert arguments["proxy_kwargs"] == {"n_segments": 1000}  # kept from the model config
    assert {"error": "ssim", "map_sigma": 1.0, "error_blur_sigma": 3.0} in arguments["score_candidates"]
    assert (config["trainer"]["max_epochs"], config["trainer"]["check_val_every_n_epoch"]) == (200, 10)
