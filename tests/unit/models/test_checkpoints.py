"""A wrong ``--ckpt_path`` or ``load_from_checkpoint`` file: one line naming it, what it is and what to pass.

In-process only (``AnomalibCLI(..., run=False)`` with the plugin's hooks installed runs everything up to the
subcommand); test_cli.py runs the real ``anomalib`` script once for the same checks.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import torch
from testing_utils import save_checkpoint

from proxyano_plugin.models.autoencoder import Autoencoder
from proxyano_plugin.models.checkpoints import CheckpointError, check_checkpoint, check_weights_fit
from proxyano_plugin.models.fanogan import FAnoGAN
from proxyano_plugin.models.patchcore import PatchcoreLite0
from proxyano_plugin.models.proxyano import ProxyAno

TINY = {"image_size": 32, "widths": [8, 16, 32], "memory_size": 50}
TINY_CLI = ["--model.image_size", "32", "--model.widths", "[8, 16, 32]", "--model.memory_size", "50"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny ProxyAno checkpoint, one trained with memory_size 100, an Autoencoder's and an f-AnoGAN's."""
    folder = tmp_path_factory.mktemp("checkpoints")
    made = {
        "proxyano": ProxyAno(**TINY),
        "proxyano_m100": ProxyAno(**{**TINY, "memory_size": 100}),
        "autoencoder": Autoencoder(image_size=32),
        "fanogan": FAnoGAN(image_size=64, dim=8, latent_dim=16),
    }
    paths = {}
    for name, model in made.items():
        paths[name] = folder / f"{name}.ckpt"
        save_checkpoint(model, paths[name])
    return paths


def no_unsafe_advice(message: str) -> str:
    """Loading with weights_only=False runs whatever the file holds: never the fix for a bad file."""
    assert "weights_only" not in message
    assert "\n" not in message
    return message


def bad_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.ckpt"
    if kind == "random":
        path.write_bytes(bytes(range(7, 250)) * 20)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("model:\n  class_path: ProxyAno\n")
    elif kind == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:2000])
    elif kind == "pickled_object":
        torch.save({"model": Fraction(1, 3)}, path)  # an object, as a torch export holds the model
    elif kind == "state_dict":
        torch.save({"weight": torch.zeros(2), "bias": torch.zeros(2)}, path)
    elif kind == "folder":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("random", "is not a PyTorch checkpoint: it starts with bytes 07 08 09 0a 0b 0c 0d 0e, neither a zip archive"),
        ("empty", "is empty (0 bytes): its writer was interrupted or the disk was full"),
        ("text", "is not a PyTorch checkpoint: it is a text file (starting 'model:')"),
        ("truncated", "is incomplete (cut off while being written?): use another checkpoint or train again"),
        ("pickled_object", "is not a training checkpoint: it holds pickled Python objects (first: fractions.Fraction)"),
        ("state_dict", "holds a bare state_dict (2 tensors, e.g. 'weight'), not a Lightning checkpoint"),
        ("folder", "is a folder: pass a checkpoint file, a .ckpt written by training (none is there)"),
        ("missing", "does not exist: check the path"),
    ],
)
def test_files_that_are_no_checkpoint_are_named_and_described(tmp_path: Path, kind: str, expected: str) -> None:
    path = bad_file(tmp_path, kind)
    with pytest.raises(CheckpointError) as raised:
        ProxyAno.load_from_checkpoint(path)
    message = no_unsafe_advice(str(raised.value))
    assert message.startswith(f"{path} {expected}"), message


@pytest.mark.parametrize(
    ("model_class", "written_by", "expected"),
    [
        (
            ProxyAno,
            "autoencoder",
            "is a checkpoint of Autoencoder (image_size=32, the other hyper-parameters at their defaults), not of "
            "ProxyAno: load it with Autoencoder.load_from_checkpoint",
        ),
        (Autoencoder, "proxyano", "is a checkpoint of ProxyAno ("),
        (FAnoGAN, "autoencoder", "is a checkpoint of Autoencoder (image_size=32"),
        (Autoencoder, "fanogan", "is a checkpoint of FAnoGAN (dim=8, latent_dim=16,"),
    ],
)
def test_another_models_checkpoint_names_that_model(
    checkpoints: dict[str, Path], model_class: type, written_by: str, expected: str
) -> None:
    """Not 300 lines of missing keys: which model wrote it, with its non-default hyper-parameters."""
    with pytest.raises(CheckpointError) as raised:
        model_class.load_from_checkpoint(checkpoints[written_by])
    assert no_unsafe_advice(str(raised.value)).startswith(f"{checkpoints[written_by]} {expected}")


def test_patchcore_checkpoints_are_told_apart(tmp_path: Path) -> None:
    """anomalib's Patchcore and PatchcoreLite0 take nearly the same arguments; the stored ones decide."""
    patchcore = tmp_path / "patchcore.ckpt"
    stored = {"backbone": "wide_resnet50_2", "layers": ["layer2", "layer3"], "pre_trained": True}
    stored |= {"coreset_sampling_ratio": 0.1, "num_neighbors": 9, "precision": "float32"}  # all anomalib stores
    torch.save({"state_dict": {}, "hyper_parameters": stored}, patchcore)
    lite0 = tmp_path / "lite0.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"image_size": 128, "coreset_sampler": "low_memory"}}, lite0)

    with pytest.raises(CheckpointError) as raised:
        check_checkpoint(patchcore, PatchcoreLite0)
    assert str(raised.value) == (
        f"{patchcore} is a checkpoint of Patchcore (default hyper-parameters), not of PatchcoreLite0: "
        "load it with Patchcore.load_from_checkpoint"
    )
    with pytest.raises(CheckpointError) as raised:
        check_checkpoint(lite0, ProxyAno, "cli")
    assert str(raised.value).endswith("not of ProxyAno: pass --model PatchcoreLite0 --model.image_size 128")


def test_other_settings_name_the_arguments_to_drop(checkpoints: dict[str, Path]) -> None:
    """A bare size mismatch becomes the hyper-parameter that differs."""
    with pytest.raises(CheckpointError) as raised:
        ProxyAno.load_from_checkpoint(checkpoints["proxyano"], memory_size=100)
    assert str(raised.value) == (
        f"{checkpoints['proxyano']} was trained with memory_size=50; its weights do not fit a ProxyAno built with "
        "memory_size=100 (size mismatch: model.pem.memories.0.items is [50, 32] in the checkpoint, [100, 32] in "
        "the model): drop those arguments"
    )
    restored = ProxyAno.load_from_checkpoint(checkpoints["proxyano"], map_sigma=2.0)  # fits: accepted
    assert restored.hparams.map_sigma == 2.0


def test_weights_that_do_not_fit_a_built_model_name_the_options(checkpoints: dict[str, Path]) -> None:
    path = checkpoints["proxyano_m100"]
    checkpoint = check_checkpoint(path, ProxyAno, "cli")
    model = ProxyAno(**TINY, map_sigma=2.0)
    with pytest.raises(CheckpointError) as raised:
        check_weights_fit(path, checkpoint, model, dict(model.hparams), "cli")
    assert str(raised.value) == (
        f"{path} was trained with memory_size=100, map_sigma=1.0 and does not fit this ProxyAno (size mismatch: "
        "model.pem.memories.0.items is [100, 32] in the checkpoint, [50, 32] in the model): "
        "pass --model.memory_size 100 --model.map_sigma 1.0"
    )
    fitting = ProxyAno(**{**TINY, "memory_size": 100}, map_sigma=2.0)
    assert check_weights_fit(path, checkpoint, fitting, dict(fitting.hparams)) == {"map_sigma": 1.0}


# ------------------------------------------------------------------------------------- anomalib's CLI


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Any:
    """anomalib's CLI class with the plugin's hooks, restored afterwards (install() patches the class)."""
    from anomalib.cli.cli import AnomalibCLI

    from proxyano_plugin.anomalib_cli import install

    for name in ("before_instantiate_classes", "instantiate_classes"):
        monkeypatch.setattr(AnomalibCLI, name, getattr(AnomalibCLI, name))
    assert install()
    return AnomalibCLI


def run_cli(cli: Any, *args: str) -> Any:
    return cli(list(args), run=False)


@pytest.mark.parametrize(
    ("subcommand", "written_by", "last_line"),
    [
        ("predict", "autoencoder", "is a checkpoint of Autoencoder (image_size=32, the other hyper-parameters at "
         "their defaults), not of ProxyAno: pass --model Autoencoder --model.image_size 32"),
        ("export", "random", "is not a PyTorch checkpoint: it starts with bytes"),
        ("predict", "empty", "is empty (0 bytes)"),
        ("predict", "proxyano_m100", "was trained with memory_size=100 and does not fit this ProxyAno (size "
         "mismatch: model.pem.memories.0.items is [100, 32] in the checkpoint, [50, 32] in the model): "
         "pass --model.memory_size 100"),
    ],
)  # fmt: skip
def test_cli_ends_with_one_line_and_exit_code_2(
    cli: Any,
    checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    subcommand: str,
    written_by: str,
    last_line: str,
) -> None:
    path = checkpoints.get(written_by) or bad_file(tmp_path, written_by)
    where = ["--data", str(tmp_path)] if subcommand == "predict" else ["--export_type", "torch"]
    with pytest.raises(SystemExit) as exited:
        run_cli(cli, subcommand, "--model", "ProxyAno", *TINY_CLI, "--ckpt_path", str(path), *where,
                "--default_root_dir", str(tmp_path / "results"))  # fmt: skip
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert no_unsafe_advice(err.splitlines()[-1]).startswith(f"error: ProxyAno: {path} {last_line}")


def test_cli_accepts_a_fitting_checkpoint_and_warns_of_other_settings(
    cli: Any, checkpoints: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A test-time ``map_sigma`` is allowed (the weights fit); the log says what the checkpoint had."""
    path = checkpoints["proxyano"]
    with caplog.at_level(logging.WARNING, logger="proxyano_plugin.models.checkpoints"):
        built = run_cli(cli, "predict", "--model", "ProxyAno", *TINY_CLI, "--model.map_sigma", "2.0",
                        "--ckpt_path", str(path), "--data", str(tmp_path),
                        "--default_root_dir", str(tmp_path / "results"))  # fmt: skip
    assert isinstance(built.model, ProxyAno)
    assert f"{path} was trained with other settings than this model's" in caplog.text
    assert "--model.map_sigma 1.0" in caplog.text


def test_cli_leaves_other_models_and_special_paths_alone(cli: Any, tmp_path: Path) -> None:
    """anomalib's own models keep anomalib's behaviour; ``--ckpt_path last`` is Lightning's to resolve."""
    from proxyano_plugin.anomalib_cli import check_ckpt_path

    assert check_ckpt_path("test", {"ckpt_path": str(tmp_path / "x.ckpt"), "model": None}) is None
    model = type("Config", (), {"class_path": "anomalib.models.Padim"})()
    assert check_ckpt_path("test", {"ckpt_path": str(tmp_path / "x.ckpt"), "model": model}) is None
    ours = type("Config", (), {"class_path": "proxyano_plugin.models.proxyano.ProxyAno"})()
    assert check_ckpt_path("fit", {"ckpt_path": "last", "model": ours}) is None
    assert not os.path.exists(tmp_path / "results")
