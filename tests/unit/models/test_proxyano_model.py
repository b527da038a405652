"""ProxyAno as a Lightning/anomalib module: training steps, determinism, errors, checkpoints."""

from itertools import pairwise

import lightning
import pytest
import torch
from anomalib.data import ImageBatch
from testing_utils import save_checkpoint

from proxyano_plugin import ProxyAno

TINY = {"image_size": 32, "widths": [8, 16, 32], "memory_size": 50, "memory_shrink_threshold": 0.01}


def _batch(size: int = 8, seed: int = 0) -> ImageBatch:
    """Smooth blobs replicated to 3 channels, as anomalib delivers grayscale images."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(size, 1, 4, 4, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    return ImageBatch(image=images.expand(-1, 3, -1, -1).contiguous(), image_path=[f"img{i}.png" for i in range(size)])


def _train(model: ProxyAno, batch: ImageBatch, steps: int) -> list[float]:
    optimizer = model.configure_optimizers()
    model.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model.training_step(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_a_few_steps_reduce_the_loss():
    lightning.seed_everything(0)
    # Without the random blobs the loss of one fixed batch must fall steadily.
    model = ProxyAno(**TINY, proxy="blur", image_blob_probability=0.0, proxy_blob_probability=0.0, learning_rate=1e-2)
    losses = _train(model, _batch(), steps=15)
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize(("skip_merge", "refine_width"), [("concat", 0), ("add", 0), ("concat", 4)])
def test_a_few_steps_reduce_the_loss_at_half_internal_resolution(skip_merge, refine_width):
    lightning.seed_everything(0)
    model = ProxyAno(
        **TINY,
        space_to_depth=2,
        skip_merge=skip_merge,
        refine_width=refine_width,
        proxy="blur",
        image_blob_probability=0.0,
        proxy_blob_probability=0.0,
        learning_rate=1e-2,
    )
    losses = _train(model, _batch(), steps=25)
    assert losses[-1] < 0.7 * losses[0]


def test_an_ssim_loss_weight_trains_and_changes_the_irm_terms_only():
    lightning.seed_everything(0)
    options = {**TINY, "proxy": "blur", "image_blob_probability": 0.0, "proxy_blob_probability": 0.0}
    images = ProxyAno(**options).model.to_model_channels(_batch().image)
    terms = {}
    for weight in (0.0, 1.0):
        lightning.seed_everything(0)
        model = ProxyAno(**options, ssim_loss_weight=weight, paste_probability=0.0)
        terms[weight] = model.training_losses(images)
    torch.testing.assert_close(terms[1.0]["pem"], terms[0.0]["pem"])  # same seed, same networks
    assert terms[1.0]["irm"] > terms[0.0]["irm"]
    assert terms[1.0]["irm_predicted"] > terms[0.0]["irm_predicted"]
    lightning.seed_everything(0)
    model = ProxyAno(**options, ssim_loss_weight=1.0, learning_rate=1e-2)
    losses = _train(model, _batch(), steps=15)
    assert losses[-1] < 0.7 * losses[0]


def test_training_is_deterministic_for_a_seed():
    runs = []
    for _ in range(2):
        lightning.seed_everything(3)
        model = ProxyAno(**TINY, proxy="superpixel", intensity_jitter=0.5, translation_jitter=0.5, flip_jitter=0.5)
        _train(model, _batch(), steps=3)
        runs.append(torch.cat([parameter.detach().flatten() for parameter in model.model.parameters()]))
    torch.testing.assert_close(runs[0], runs[1])


@pytest.mark.parametrize("jitter", [{}, {"intensity_jitter": 1.0, "translation_jitter": 1.0, "flip_jitter": 1.0}])
def test_superpixel_proxies_are_cached_across_epochs(jitter):
    """Jitter acts after the cache: jittered images still reuse their unjittered image's proxy."""
    model = ProxyAno(**TINY, proxy="superpixel", **jitter)
    batch = _batch()
    _train(model, batch, steps=2)
    assert model.proxy_extractor.misses == 8
    assert model.proxy_extractor.hits == 8
    assert model.proxy_extractor.max_items == 10_000


def test_training_without_the_proxy_cache_is_the_same_training():
    runs = []
    for cache_items in (10_000, 0):
        lightning.seed_everything(3)
        model = ProxyAno(**TINY, proxy="superpixel", proxy_cache_items=cache_items)
        _train(model, _batch(), steps=2)
        runs.append(torch.cat([parameter.detach().flatten() for parameter in model.model.parameters()]))
    assert len(model.proxy_extractor) == 0
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("in_channels", [1, 3])
def test_eval_forward_gives_scores_and_maps(in_channels):
    model = ProxyAno(**TINY, in_channels=in_channels).eval()
    with torch.no_grad():
        output = model.model(_batch(4).image)
    assert output.pred_score.shape == (4,)
    assert output.anomaly_map.shape == (4, 1, 32, 32)


def test_reconstruct_from_image_is_a_repair_network_without_pem():
    lightning.seed_everything(0)
    model = ProxyAno(**TINY, proxy="identity", reconstruct_from="image", proxy_blob_probability=0.0, learning_rate=1e-2)
    assert model.model.pem is None
    batch = _batch()
    assert set(model.training_losses(model.model.to_model_channels(batch.image))) == {"irm", "loss"}
    losses = _train(model, batch, steps=15)
    assert losses[-1] < 0.8 * losses[0]
    model.eval()
    with torch.no_grad():
        parts = model.model.reconstruct(batch.image)
    torch.testing.assert_close(parts.proxy, parts.image)  # the IRM saw the raw image
    torch.testing.assert_close(parts.reconstruction, model.model.irm(parts.image))


def test_nan_input_names_the_file():
    model = ProxyAno(**TINY, proxy="identity")
    batch = _batch(3)
    batch.image[1, :, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf values: img1\.png"):
        model.training_step(batch)


def test_nan_loss_stops_training_with_a_clear_message():
    model = ProxyAno(**TINY, proxy="identity")
    with torch.no_grad():
        model.model.irm.decoder.head.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="training loss is not finite"):
        model.training_step(_batch(2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_channels": 2}, "in_channels must be 1"),
        ({"image_size": 30}, "image_size must be a positive multiple of 4"),
        ({"image_size": 36, "space_to_depth": 2}, "multiple of 8 for 3 levels and space_to_depth=2"),
        ({"space_to_depth": 0}, "space_to_depth must be a positive integer"),
        ({"skip_merge": "sum"}, "skip_merge must be one of concat, add"),
        ({"refine_width": 4}, "needs space_to_depth > 1"),
        ({"refine_networks": "all"}, "refine_networks must be one of both, pem, irm"),
        ({"proxy": "no-such-proxy"}, "no-such-proxy"),
        ({"score_topk": 0.0}, "score_topk"),
        ({"reconstruct_from": "image"}, "set proxy='identity'"),
        ({"reconstruct_from": "pem", "proxy": "identity"}, "reconstruct_from must be one of"),
        ({"proxy_cache_items": None}, "proxy_cache_items must be a non-negative integer"),
        ({"lr_schedule": "step"}, "lr_schedule must be one of constant, cosine"),
        ({"intensity_jitter": 1.5}, "intensity_jitter must be a probability"),
        ({"translation_jitter": -1.0}, "translation_jitter must be a probability"),
        ({"flip_jitter": 2.0}, "flip_jitter must be a probability"),
        ({"distill_from": {}}, "distill_from changes some of widths"),
        ({"distill_from": {"error": "l2"}}, "the teacher's architecture"),
        ({"distill_from": {"space_to_depth": 16}}, "multiple of 64 for 3 levels and space_to_depth=16"),
        ({"distill_from": {"space_to_depth": 1}, "distillation_weight": -1.0}, "distillation_weight must be >= 0"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ProxyAno(**{**TINY, **kwargs})


def test_a_teacher_trains_beside_the_network_and_only_the_network_scores(tmp_path):
    """``distill_from``: the teacher (here at full resolution) learns from its own losses, the half-resolution
    network also from the teacher's outputs; inference, the harness's ``model.model`` and checkpoints' scores are
    the network's alone."""
    lightning.seed_everything(0)
    model = ProxyAno(
        **TINY,
        space_to_depth=2,
        distill_from={"space_to_depth": 1, "memory_size": 100},
        proxy="blur",
        learning_rate=1e-2,
    )
    assert model.teacher.pem.encoder.space_to_depth == 1
    assert model.model.pem.encoder.space_to_depth == 2
    teacher_before = [parameter.detach().clone() for parameter in model.teacher.parameters()]
    terms = model.training_losses(model.model.to_model_channels(_batch().image))
    assert {"distillation", "teacher"} <= set(terms)
    torch.testing.assert_close(
        terms["loss"], sum(value for name, value in terms.items() if name not in {"loss", "entropy"}) + terms["entropy"]
    )
    losses = _train(model, _batch(), steps=15)
    assert losses[-1] < 0.7 * losses[0]
    moved = [
        not torch.equal(before, after) for before, after in zip(teacher_before, model.teacher.parameters(), strict=True)
    ]
    assert all(moved)  # the optimiser trains the teacher too
    model.eval()
    images = _batch(4, seed=1).image
    with torch.no_grad():
        torch.testing.assert_close(model(images).pred_score, model.model(images).pred_score)
    path = tmp_path / "distilled.ckpt"
    save_checkpoint(model, path)
    restored = ProxyAno.load_from_checkpoint(path, weights_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(images).pred_score, model(images).pred_score)


def test_cosine_schedule_decays_to_its_floor_by_the_last_epoch():
    model = ProxyAno(**TINY, lr_schedule="cosine", learning_rate=1e-3)
    optimizer = model.optimizer()
    schedule = model.lr_scheduler(optimizer, 4)
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        schedule.step()
    assert rates[0] == pytest.approx(1e-3)
    assert all(later < earlier for earlier, later in pairwise(rates))  # the floor is reached at the end
    assert rates[4] == pytest.approx(1e-5)  # after the last of 4 epochs: 1 % of the rate


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    lightning.seed_everything(0)
    model = ProxyAno(**TINY, proxy="blur", proxy_kwargs={"sigma": 2.0})
    _train(model, _batch(), steps=2)
    model.eval()
    path = tmp_path / "proxyano.ckpt"
    save_checkpoint(model, path)
    restored = ProxyAno.load_from_checkpoint(path, weights_only=True).eval()
    assert restored.hparams["proxy_kwargs"] == {"sigma": 2.0}
    images = _batch(4, seed=1).image
    with torch.no_grad():
        torch.testing.assert_close(restored(images).pred_score, model(images).pred_score)


def test_get_model_resolves_the_bare_name_after_import():
    from anomalib.models import get_model

    model = get_model("ProxyAno", **TINY)
    assert isinstance(model, ProxyAno)
