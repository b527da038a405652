"""The MedIAnomaly autoencoder baseline: shapes, training, errors, pre-processing."""

import lightning
import pytest
import torch
from anomalib.data import ImageBatch
from torchvision.transforms.v2 import Normalize

from proxyano_plugin.models.autoencoder import Autoencoder
from proxyano_plugin.models.image_errors import HEAD_LEVEL, gaussian_blur, gaussian_kernel, ssim_error

TINY = {"image_size": 32, "base_width": 4, "hidden_size": 32, "latent_size": 8}


def _batch(size: int = 8, image_size: int = 32, seed: int = 0) -> ImageBatch:
    """Smooth random images replicated to 3 channels, as anomalib delivers grayscale files."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(size, 1, 4, 4, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=image_size, mode="bilinear", align_corners=False)
    return ImageBatch(image=images.expand(-1, 3, -1, -1).contiguous())


@pytest.mark.parametrize("in_channels", [1, 3])
def test_eval_forward_gives_scores_and_maps(in_channels):
    model = Autoencoder(**TINY, in_channels=in_channels).eval()
    with torch.no_grad():
        output = model.model(_batch(4).image)
    assert output.pred_score.shape == (4,)
    assert output.anomaly_map.shape == (4, 1, 32, 32)
    torch.testing.assert_close(output.pred_score, output.anomaly_map.mean(dim=(1, 2, 3)))


def test_default_architecture_is_the_medianomaly_one():
    model = Autoencoder().model
    convs = [module for module in model.encoder.modules() if isinstance(module, torch.nn.Conv2d)]
    assert [conv.out_channels for conv in convs] == [16, 32, 64, 64]
    assert all(conv.kernel_size == (4, 4) and conv.stride == (2, 2) for conv in convs)
    assert model.bottleneck_in[-1].out_features == 16
    assert model.bottleneck_in[0].out_features == 1024


def test_a_few_steps_reduce_the_loss():
    lightning.seed_everything(0)
    model = Autoencoder(**TINY)
    optimizer = model.configure_optimizers()
    batch = _batch()
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = model.training_step(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_ssim_error_scores_one_minus_ssim_of_the_zero_one_images():
    """``error="ssim"`` maps 1 - SSIM of image and reconstruction in [0, 1] (ProxyAno's function), same weights."""
    lightning.seed_everything(0)
    l2 = Autoencoder(**TINY).eval()
    ssim = Autoencoder(**TINY, error="ssim", ssim_sigma=2.0).eval()
    ssim.load_state_dict(l2.state_dict())  # the window is not a weight: checkpoints of either load into the other
    images = _batch(4).image
    with torch.no_grad():
        model_images, reconstructions = l2.model.reconstruct(images)
        output = ssim.model(images)
    expected = ssim_error((model_images + 1) / 2, (reconstructions + 1) / 2, gaussian_kernel(2.0))
    torch.testing.assert_close(output.anomaly_map, expected)
    torch.testing.assert_close(output.pred_score, expected.mean(dim=(1, 2, 3)))
    assert not torch.allclose(output.anomaly_map, l2.model(images).anomaly_map)


def test_smoothed_top_k_scoring_is_proxyanos():
    """``map_sigma`` and ``score_topk`` score the map as ProxyAno does: a smoothed map, the mean of its top pixels."""
    lightning.seed_everything(0)
    plain = Autoencoder(**TINY, error="ssim").eval()
    scored = Autoencoder(**TINY, error="ssim", map_sigma=1.0, score_topk=0.01).eval()
    scored.load_state_dict(plain.state_dict())
    images = _batch(4).image
    with torch.no_grad():
        raw, output = plain.model(images).anomaly_map, scored.model(images)
    smoothed = gaussian_blur(raw, gaussian_kernel(1.0))
    torch.testing.assert_close(output.anomaly_map, smoothed)
    top = smoothed.flatten(1).sort(dim=1, descending=True).values[:, :10].mean(dim=1)  # 1 % of 1,024 pixels
    torch.testing.assert_close(output.pred_score, top)


def test_l1_relative_scoring_is_proxyanos():
    """``error="l1"`` is the absolute residual on the [0, 1] scale; ``score_relative`` divides the top-k score by the
    map's mean over the head, as ProxyAno's chosen lgg scoring (l1, sigma 1, top 1 %, relative)."""
    lightning.seed_everything(0)
    scored = Autoencoder(**TINY, error="l1", map_sigma=1.0, score_topk=0.01, score_relative=True).eval()
    images = _batch(4).image
    with torch.no_grad():
        model_images, reconstructions = scored.model.reconstruct(images)
        output = scored.model(images)
    residual = ((model_images + 1) / 2 - (reconstructions + 1) / 2).abs()
    expected_map = gaussian_blur(residual, gaussian_kernel(1.0))
    torch.testing.assert_close(output.anomaly_map, expected_map)
    head = (images.mean(dim=1) > HEAD_LEVEL).flatten(1).float()
    reference = (expected_map.flatten(1) * head).sum(1) / head.sum(1)
    top = expected_map.flatten(1).sort(dim=1, descending=True).values[:, :10].mean(dim=1)
    torch.testing.assert_close(output.pred_score, top / reference)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"error": "l3"}, "error must be one of l2, l1, ssim, got 'l3'"),
        ({"error": "ssim", "ssim_sigma": 0}, "> 0, got 0"),
        ({"map_sigma": -1.0}, "map_sigma must be >= 0"),
        ({"score_topk": 0.0}, r"score_topk must be in \(0, 1\]"),
        ({"score_topk": True}, r"score_topk must be in \(0, 1\]"),
        ({"score_relative": 1}, "score_relative is true or false"),
    ],
)
def test_unknown_errors_and_empty_windows_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        Autoencoder(**TINY, **arguments)


def test_image_size_must_be_a_multiple_of_16():
    with pytest.raises(ValueError, match="multiple of 16, got 40"):
        Autoencoder(image_size=40)


def test_nan_loss_stops_training_with_a_clear_message():
    model = Autoencoder(**TINY)
    with torch.no_grad():
        model.model.bottleneck_out[-1].bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="Autoencoder: training loss is nan"):
        model.training_step(_batch())


def test_pre_processor_only_resizes_to_image_size():
    model = Autoencoder(image_size=48)
    transform = model.pre_processor.transform
    assert not any(isinstance(step, Normalize) for step in transform.transforms)
    assert tuple(model.input_size) == (48, 48)


def test_trainer_arguments_leave_the_epoch_count_to_the_user():
    assert "max_epochs" not in Autoencoder(**TINY).trainer_arguments


def test_gallery_shows_the_reconstruction_on_the_input_scale():
    """The benchmark gallery draws intermediates on the input's [0, 1] scale; the network's own is [-1, 1]."""
    from proxyano_plugin.bench.worker import intermediates

    model = Autoencoder(**TINY).eval()
    images = _batch(2).image
    with torch.no_grad():
        drawn = intermediates(model, images)
        raw = model.model.reconstruct(images).reconstructions
    torch.testing.assert_close(drawn["reconstruction"], (raw + 1) / 2)
