"""Every shipped model config (``configs/model/*.yaml``) builds its model.

An overlay (a ``model`` without ``class_path``) is composed onto ``proxyano.yaml``, as the command in its header
does; its trainer settings must be Trainer arguments. A renamed or mistyped argument then fails here, not in a
user's first ``anomalib train``; so does an option that a config's header command documents and no class takes.
"""

from __future__ import annotations

import importlib
import inspect
import re
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
    model_class = _class(config["model"]["class_path"])

    model = model_class(**config["model"].get("init_args", {}))

    assert isinstance(model, model_class)
    assert set(config.get("trainer", {})) <= set(inspect.signature(Trainer.__init__).parameters)


def _class(name: str) -> type:
    """A dotted class path, or a short data class name as the CLI resolves it (anomalib's, then the plugin's)."""
    module, _, class_name = name.rpartition(".")
    if module:
        return getattr(importlib.import_module(module), class_name)
    for package in ("anomalib.data", "proxyano_plugin.data"):
        found = getattr(importlib.import_module(package), class_name, None)
        if found is not None:
            return found
    msg = f"no data class {name!r}"
    raise LookupError(msg)


def _parameters(cls: type) -> set[str]:
    """``__init__`` parameters of ``cls`` and of its bases while they pass ``**kwargs`` on."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters
        names |= {name for name in parameters if name != "self"}
        if not any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
            break
    return names


@pytest.mark.parametrize("name", sorted(path.name for path in MODEL_CONFIGS.glob("*.yaml")))
def test_the_options_a_config_header_documents_exist(name: str) -> None:
    """Every ``--model.X``, ``--data.X`` and ``--trainer.X`` in a config's header comment is an argument of its class.

    The data class is the one the header names (``--data <class>``) or its data config's ``class_path``.
    """
    header = "\n".join(line for line in (MODEL_CONFIGS / name).read_text().splitlines() if line.startswith("#"))
    model_class = _class(_composed(name)["model"]["class_path"])
    named_data = re.search(r"--data ([\w.]+)", header)
    data_config = re.search(r"--config configs/data/([\w.]+\.yaml)", header)
    if named_data:
        data_class = _class(named_data.group(1))
    elif data_config:
        data_class = _class(
            yaml.safe_load((REPO / "configs" / "data" / data_config.group(1)).read_text())["data"]["class_path"]
        )
    else:
        data_class = None
    allowed = {"model": _parameters(model_class), "trainer": _parameters(Trainer)}
    for group, option in re.findall(r"--(model|data|trainer)\.(\w+)", header):
        if group == "data":
            assert data_class is not None, f"{name}: --data.{option} without a data class in the header"
            assert option in _parameters(data_class), f"{name}: --data.{option} is not a {data_class.__name__} argument"
        else:
            assert option in allowed[group], f"{name}: --{group}.{option} is not an argument of its {group}"


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
