"""Unit tests of ProxyAno's building blocks: memory, pseudo anomalies, networks, loss."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from proxyano_plugin.models.proxyano.augmentation import FlipJitter, IntensityJitter, TranslationJitter
from proxyano_plugin.models.proxyano.lightning_model import _scoring
from proxyano_plugin.models.proxyano.loss import ProxyAnoLoss
from proxyano_plugin.models.proxyano.memory import MemoryModule, addressing_entropy, hard_shrink_relu
from proxyano_plugin.models.proxyano.pseudo_anomaly import BlobShifter, PatchPaster
from proxyano_plugin.models.proxyano.torch_model import (
    Decoder,
    ProxyAnoModel,
    ProxyExtractionModule,
    Scoring,
    fold_blocks,
    pointwise,
    unfold_blocks,
    unfold_then_conv3x3_kernel,
)

WIDTHS = [8, 16, 32]


def _softmax_weights(rows: int = 64, items: int = 50, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(rows, items, generator=generator), dim=1)


def test_hard_shrinkage_keeps_weights_normalised():
    weights = hard_shrink_relu(_softmax_weights(), threshold=0.02)
    assert torch.all(weights >= 0)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(weights.shape[0]))


def test_sparsity_grows_with_threshold():
    weights = _softmax_weights()
    zeros = [(hard_shrink_relu(weights, threshold) == 0).float().mean().item() for threshold in (0, 0.01, 0.02, 0.05)]
    assert zeros[0] == 0
    assert zeros == sorted(zeros)
    assert zeros[-1] > zeros[1] > 0


def test_hard_shrinkage_matches_memae_continuous_form_in_values_and_gradients():
    threshold, eps = 0.02, 1e-12
    weights = _softmax_weights().requires_grad_()
    upstream = torch.randn(weights.shape, generator=torch.Generator().manual_seed(1))
    (hard_shrink_relu(weights, threshold) * upstream).sum().backward()
    ours = weights.grad.clone()
    weights.grad = None
    memae = torch.relu(weights - threshold) * weights / ((weights - threshold).abs() + eps)
    ((memae / memae.sum(dim=1, keepdim=True)) * upstream).sum().backward()
    torch.testing.assert_close(hard_shrink_relu(weights, threshold), memae / memae.sum(dim=1, keepdim=True))
    torch.testing.assert_close(ours, weights.grad, rtol=1e-4, atol=1e-4)  # equal up to float32 rounding


def test_addressing_entropy_is_zero_for_one_hot_and_log_n_for_uniform():
    items = 16
    one_hot = torch.eye(items)
    uniform = torch.full((4, items), 1 / items)
    assert addressing_entropy(one_hot).item() == pytest.approx(0, abs=1e-6)
    assert addressing_entropy(uniform).item() == pytest.approx(torch.log(torch.tensor(items)).item(), rel=1e-5)


def test_memory_read_out_is_a_convex_combination_of_items():
    torch.manual_seed(0)
    memory = MemoryModule(num_items=10, feature_dim=4, shrink_threshold=0.05)
    features = torch.randn(2, 4, 3, 3)
    read_out, weights = memory(features)
    assert read_out.shape == features.shape
    assert weights.shape == (2 * 3 * 3, 10)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(18))
    expected = (weights @ memory.items).reshape(2, 3, 3, 4).permute(0, 3, 1, 2)
    torch.testing.assert_close(read_out, expected)


@pytest.mark.parametrize("bad", [-1.0, 1.0])
def test_memory_rejects_bad_threshold(bad):
    with pytest.raises(ValueError, match="memory_shrink_threshold"):
        MemoryModule(4, 4, bad)


def test_paste_area_within_bounds_and_target_untouched():
    torch.manual_seed(0)
    images = torch.rand(64, 1, 32, 32)
    proxies = torch.rand(64, 1, 32, 32)
    images_before, proxies_before = images.clone(), proxies.clone()
    paster = PatchPaster(probability=1.0, area_range=(0.05, 0.1), aspect_range=(0.5, 2.0))
    corrupted, mask = paster(proxies, images)
    torch.testing.assert_close(images, images_before)
    torch.testing.assert_close(proxies, proxies_before)
    areas = mask.flatten(1).mean(dim=1)
    # Rounding of the patch sides moves the area a little around the requested range.
    assert torch.all(areas >= 0.04)
    assert torch.all(areas <= 0.12)
    outside = mask.expand_as(proxies) == 0
    torch.testing.assert_close(corrupted[outside], proxies[outside])
    assert not torch.equal(corrupted, proxies)


def test_paste_pixels_come_from_the_same_image():
    torch.manual_seed(1)
    images = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    proxies = torch.full_like(images, -1.0)
    corrupted, mask = PatchPaster(probability=1.0)(proxies, images)
    for index in range(2):
        pasted = corrupted[index][mask[index].bool()]
        assert set(pasted.tolist()) <= set(images[index].flatten().tolist())


def test_paste_probability_zero_is_identity():
    proxies = torch.rand(8, 1, 16, 16)
    corrupted, mask = PatchPaster(probability=0.0)(proxies, torch.rand(8, 1, 16, 16))
    torch.testing.assert_close(corrupted, proxies)
    assert mask.sum() == 0


@pytest.mark.parametrize(("in_channels", "reduced"), [(1, 1), (3, 3)])
def test_model_shapes(in_channels, reduced):
    model = ProxyAnoModel(in_channels, WIDTHS, 20, 0.01, 1.0, 0.05, "l1").eval()
    images = torch.rand(2, 3, 32, 32)
    output = model.reconstruct(images)
    assert output.image.shape == (2, reduced, 32, 32)
    assert output.proxy.shape == (2, reduced, 32, 32)
    assert output.reconstruction.shape == (2, reduced, 32, 32)
    assert output.anomaly_map.shape == (2, 1, 32, 32)
    assert output.pred_score.shape == (2,)
    batch = model(images)
    torch.testing.assert_close(batch.pred_score, output.pred_score)


def test_space_to_depth_runs_the_networks_at_half_resolution_and_keeps_every_pixel():
    model = ProxyAnoModel(1, WIDTHS, 20, 0.01, 1.0, 0.05, "l1", pem_skips="plain", space_to_depth=2).eval()
    seen = []
    model.irm.encoder.blocks[0].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
    images = torch.rand(2, 3, 32, 32)
    output = model.reconstruct(images)
    assert seen == [(2, 4, 16, 16)]  # each 2x2 pixel block folded into 4 channels
    assert output.reconstruction.shape == output.proxy.shape == (2, 1, 32, 32)
    assert output.anomaly_map.shape == (2, 1, 32, 32)
    # Every input pixel reaches the output: changing one pixel changes the prediction.
    changed = images.clone()
    changed[:, :, 5, 7] += 0.5
    assert not torch.equal(model.reconstruct(changed).proxy, output.proxy)


@pytest.mark.parametrize(("channels", "factor"), [(1, 2), (3, 2), (2, 3)])
def test_block_folding_and_unfolding_are_pixel_unshuffle_and_pixel_shuffle(channels, factor):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, channels, 6 * factor, 4 * factor, generator=generator)
    assert torch.equal(fold_blocks(images, factor), torch.nn.functional.pixel_unshuffle(images, factor))
    head = torch.nn.Conv2d(5, channels * factor**2, 1)
    features = torch.randn(2, 5, 6, 4, generator=generator)
    expected = torch.nn.functional.pixel_shuffle(head(features), factor)
    torch.testing.assert_close(unfold_blocks(features, head, factor), expected, rtol=0, atol=1e-6)
    unfold_blocks(features, head, factor).sum().backward()
    assert head.weight.grad.abs().sum() > 0
    assert head.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("out_channels", [1, 3])
def test_pointwise_is_the_one_by_one_convolution(out_channels):
    generator = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(5, out_channels, 1)
    features = torch.randn(2, 5, 6, 4, generator=generator)
    torch.testing.assert_close(pointwise(features, conv), conv(features), rtol=0, atol=1e-6)
    pointwise(features, conv).sum().backward()
    assert conv.weight.grad.abs().sum() > 0
    assert conv.bias.grad.abs().sum() > 0


def test_a_full_resolution_head_ends_the_half_resolution_decoders():
    images = torch.rand(2, 1, 32, 32)
    costs = {}
    for refine_width in (0, 4):
        torch.manual_seed(0)
        model = ProxyAnoModel(
            1, WIDTHS, 20, 0.01, 1.0, 0.05, "l1", pem_skips="plain", space_to_depth=2, refine_width=refine_width
        ).eval()
        with FlopCounterMode(display=False) as counter:
            output = model.reconstruct(images)
        costs[refine_width] = counter.get_total_flops()
        assert output.reconstruction.shape == output.proxy.shape == (2, 1, 32, 32)
    # The head's 3x3 convolution sees 4 unfolded features and the input (the PEM's image, the IRM's proxy).
    assert model.pem.decoder.refine.block[0].in_channels == 5
    assert model.irm.decoder.refine.block[0].in_channels == 5
    per_pixel = 2 * 2 * 9 * 5 * 4  # FLOPs (2 per multiply-add) of the two 3x3 convolutions
    assert costs[4] - costs[0] > 2 * 32 * 32 * per_pixel
    # Neighbouring outputs now differ within one 2x2 block's prediction: a change of one pixel reaches its neighbour.
    changed = images.clone()
    changed[:, :, 6, 6] += 0.5
    difference = (model.reconstruct(changed).proxy - output.proxy).abs()[0, 0]
    assert difference[5, 6] > 0
    assert difference[6, 5] > 0


@pytest.mark.parametrize("factor", [2, 3])
def test_an_unfolding_then_a_3x3_convolution_is_one_transposed_convolution(factor):
    generator = torch.Generator().manual_seed(0)
    unfold_weight = torch.randn(5, 4, factor, factor, generator=generator)
    conv_weight = torch.randn(3, 4, 3, 3, generator=generator)
    features = torch.randn(2, 5, 4, 6, generator=generator)
    expected = torch.nn.functional.conv2d(
        torch.nn.functional.conv_transpose2d(features, unfold_weight, stride=factor), conv_weight, padding=1
    )
    kernel = unfold_then_conv3x3_kernel(unfold_weight, conv_weight)
    fused = torch.nn.functional.conv_transpose2d(features, kernel, stride=factor, padding=1)
    assert fused.shape == expected.shape == (2, 3, 4 * factor, 6 * factor)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)  # the borders included


@pytest.mark.parametrize(("factor", "channels", "input_channels"), [(2, 1, 1), (2, 1, 0), (3, 3, 3)])
def test_the_full_resolution_head_runs_fused_in_eval_mode_with_the_same_numbers(factor, channels, input_channels):
    torch.manual_seed(0)
    decoder = Decoder(WIDTHS, channels, True, factor, "add", 4, input_channels)
    head = decoder.refine
    norm = head.block[1]
    norm.running_mean.uniform_(-0.5, 0.5)  # statistics unlike the initial ones, so folding them is checked
    norm.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
    features = torch.randn(2, WIDTHS[0], 5, 7)
    inputs = torch.rand(2, input_channels, 5 * factor, 7 * factor) if input_channels else None
    decoder.eval()
    unfolded = unfold_blocks(features, decoder.head, factor)
    if inputs is not None:
        unfolded = torch.cat([unfolded, inputs], dim=1)
    expected = torch.sigmoid(pointwise(head.block(unfolded), head.head))  # the layers one by one, eval mode
    fused = head(features, decoder.head, factor, inputs)
    assert fused.shape == (2, channels, 5 * factor, 7 * factor)
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-6)
    # Training runs the layers one by one: BatchNorm normalises with the batch's statistics, not the running ones.
    head.train()
    train_output = head(features, decoder.head, factor, inputs)
    head.block.eval()
    assert not torch.allclose(train_output, expected)


def test_the_full_resolution_head_never_sees_the_image_past_the_memory():
    # With memory-read skips (or none) the image reaches the PEM's output only through the memory: the head must
    # not bring it back at full resolution.
    model = ProxyAnoModel(1, WIDTHS, 20, 0.01, 1.0, 0.05, "l1", pem_skips="memory", space_to_depth=2, refine_width=4)
    assert model.pem.decoder.refine.block[0].in_channels == 4
    assert model.irm.decoder.refine.block[0].in_channels == 5


@pytest.mark.parametrize(("networks", "pem_refined", "irm_refined"), [("pem", True, False), ("irm", False, True)])
def test_the_full_resolution_head_can_end_one_network_only(networks, pem_refined, irm_refined):
    model = ProxyAnoModel(
        1,
        WIDTHS,
        20,
        0.01,
        1.0,
        0.05,
        "l1",
        pem_skips="plain",
        space_to_depth=2,
        refine_width=4,
        refine_networks=networks,
    ).eval()
    assert (model.pem.decoder.refine is not None) == pem_refined
    assert (model.irm.decoder.refine is not None) == irm_refined
    output = model.reconstruct(torch.rand(2, 1, 32, 32))
    assert output.reconstruction.shape == output.proxy.shape == (2, 1, 32, 32)


def test_refine_networks_must_be_known():
    with pytest.raises(ValueError, match="refine_networks must be one of both, pem, irm"):
        ProxyAnoModel(1, WIDTHS, 20, 0.01, 1.0, 0.05, "l1", space_to_depth=2, refine_width=4, refine_networks="all")


@pytest.mark.parametrize(
    ("refine_width", "space_to_depth", "message"),
    [
        (-1, 2, "refine_width must be a non-negative integer"),
        (2.0, 2, "refine_width must be a non-negative integer"),
        (True, 2, "refine_width must be a non-negative integer"),
        (4, 1, "needs space_to_depth > 1"),
    ],
)
def test_refine_width_is_checked(refine_width, space_to_depth, message):
    with pytest.raises(ValueError, match=message):
        ProxyAnoModel(1, WIDTHS, 20, 0.01, 1.0, 0.05, "l1", space_to_depth=space_to_depth, refine_width=refine_width)


@pytest.mark.parametrize("bad", [0, 1.5, True])
def test_space_to_depth_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="space_to_depth must be a positive integer"):
        ProxyAnoModel(1, WIDTHS, 20, 0.01, 1.0, 0.05, "l1", space_to_depth=bad)


def test_added_skips_halve_the_decoders_and_still_pass_detail():
    images = torch.rand(2, 1, 32, 32)
    costs = {}
    for merge in ("concat", "add"):
        torch.manual_seed(0)
        model = ProxyAnoModel(1, WIDTHS, 20, 0.01, 1.0, 0.05, "l1", pem_skips="plain", skip_merge=merge).eval()
        with FlopCounterMode(display=False) as counter:
            output = model.reconstruct(images)
        costs[merge] = counter.get_total_flops()
        assert output.reconstruction.shape == output.proxy.shape == (2, 1, 32, 32)
        changed = images.clone()
        changed[:, :, 5, 7] += 0.5
        assert not torch.equal(model.reconstruct(changed).proxy, output.proxy)
    assert costs["add"] < 0.8 * costs["concat"]


def test_a_1x1_projection_commutes_with_bilinear_upsampling():
    # Why the "add" merge may project on the coarse grid: the result equals projecting after upsampling.
    torch.manual_seed(0)
    projection = torch.nn.Conv2d(16, 8, 1)
    features = torch.randn(2, 16, 4, 4)

    def upsample(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    torch.testing.assert_close(upsample(projection(features)), projection(upsample(features)))


def test_skip_merge_must_be_known():
    with pytest.raises(ValueError, match="skip_merge must be one of concat, add"):
        ProxyAnoModel(1, WIDTHS, 20, 0.01, 1.0, 0.05, "l1", skip_merge="sum")


def test_model_rejects_bad_channels():
    with pytest.raises(ValueError, match="in_channels must be 1"):
        ProxyAnoModel(2, WIDTHS, 20, 0.01, 1.0, 0.05, "l1")
    model = ProxyAnoModel(3, WIDTHS, 20, 0.01, 1.0, 0.05, "l1")
    with pytest.raises(ValueError, match="got images with 4 channels"):
        model.to_model_channels(torch.rand(1, 4, 32, 32))


def test_image_score_is_top_k_mean():
    model = ProxyAnoModel(1, WIDTHS, 0, 0.0, 0.0, 0.25, "l1")
    anomaly_map = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    assert model.image_score(anomaly_map).item() == pytest.approx((15 + 14 + 13 + 12) / 4)


def test_relative_image_score_discounts_error_spread_over_the_head():
    model = ProxyAnoModel(1, WIDTHS, 0, 0.0, 0.0, 1 / 16, "l1", score_relative=True)  # score: the map's maximum
    images = torch.zeros(2, 1, 4, 4)
    images[..., 1:3, 1:3] = 0.8  # a 2x2 head on a black background
    noisy = torch.zeros(1, 1, 4, 4)
    noisy[..., 1:3, 1:3] = 0.4  # error everywhere in the head
    focal = torch.zeros(1, 1, 4, 4)
    focal[..., 1, 1] = 0.4  # the same peak in one head pixel
    maps = torch.cat([noisy, focal])
    torch.testing.assert_close(
        model.image_score(maps, scoring=model.scoring._replace(relative=False)), torch.tensor([0.4, 0.4])
    )
    torch.testing.assert_close(model.image_score(maps, images), torch.tensor([1.0, 4.0]))  # max / head mean
    with pytest.raises(ValueError, match="needs the images"):
        model.image_score(noisy)


def test_smoothing_preserves_constant_maps():
    model = ProxyAnoModel(1, WIDTHS, 0, 0.0, 2.0, 1.0, "l2")
    images = torch.full((1, 1, 16, 16), 0.75)
    error = model.error_map(images, torch.full_like(images, 0.25))
    torch.testing.assert_close(error, torch.full_like(error, 0.25))


def test_gradient_error_ignores_a_uniform_offset_and_outlines_a_region():
    model = ProxyAnoModel(1, WIDTHS, 0, 0.0, 0.0, 1.0, "gradient")
    images = torch.full((1, 1, 16, 16), 0.5)
    assert model.error_map(images + 0.2, images).abs().max() == 0  # a global brightness change: no edge
    region = images.clone()
    region[..., 4:8, 4:8] = 0.9
    error = model.error_map(region, images)[0, 0]
    assert error[5, 5] == error[2, 2] == 0  # flat inside and outside
    torch.testing.assert_close(error[[3, 7], 5], torch.tensor([0.4, 0.4]))  # the border, on both sides


def test_unknown_error_names_the_choices():
    with pytest.raises(ValueError, match="l1, l2, gradient, ssim"):
        ProxyAnoModel(1, WIDTHS, 0, 0.0, 0.0, 1.0, "ssd")


def test_error_blur_cancels_fine_texture_but_keeps_a_blob():
    plain = ProxyAnoModel(1, WIDTHS, 0, 0.0, 0.0, 1.0, "l1")
    blurred = ProxyAnoModel(1, WIDTHS, 0, 0.0, 0.0, 1.0, "l1", error_blur_sigma=2.0)
    reconstruction = torch.full((1, 1, 32, 32), 0.5)
    checkerboard = 0.5 + 0.2 * (torch.arange(32).view(-1, 1) + torch.arange(32)).remainder(2).mul(2).sub(1)
    texture = checkerboard.view(1, 1, 32, 32)  # zero-mean +-0.2 detail the reconstruction lacks
    blob = reconstruction.clone()
    blob[..., 12:20, 12:20] = 0.7  # a +0.2 region: a lesion
    assert plain.error_map(texture, reconstruction).mean() == pytest.approx(0.2)
    assert blurred.error_map(texture, reconstruction).max() < 0.01
    assert blurred.error_map(blob, reconstruction).max() > 0.1


def test_loss_terms_and_total():
    images = torch.rand(2, 1, 8, 8)
    loss = ProxyAnoLoss(entropy_weight=0.5, predicted_proxy_weight=0.25)
    weights = torch.full((4, 4), 0.25)
    terms = loss(images, images, images + 0.1, [weights], images, images + 0.2)
    assert terms["pem"].item() == pytest.approx(0.01, rel=1e-4)
    assert terms["irm"].item() == pytest.approx(0.0)
    assert terms["irm_predicted"].item() == pytest.approx(0.25 * 0.04, rel=1e-4)
    assert terms["entropy"].item() == pytest.approx(0.5 * torch.log(torch.tensor(4.0)).item(), rel=1e-5)
    expected_total = sum(value for name, value in terms.items() if name != "loss")
    assert terms["loss"].item() == pytest.approx(expected_total.item())


def test_the_ssim_term_charges_lost_contrast_that_mse_barely_sees():
    # A reconstruction that flattens a fine +-0.05 texture: MSE 0.0025, but its local structure is gone.
    flat = torch.full((1, 1, 32, 32), 0.5)
    texture = flat + 0.05 * (torch.arange(32).view(-1, 1) + torch.arange(32)).remainder(2).mul(2).sub(1)
    mse_only = ProxyAnoLoss(entropy_weight=0.0, predicted_proxy_weight=0.5)
    with_ssim = ProxyAnoLoss(entropy_weight=0.0, predicted_proxy_weight=0.5, ssim_weight=1.0)
    plain = mse_only(texture, texture, None, [], flat, flat)
    terms = with_ssim(texture, texture, None, [], flat, flat)
    assert plain["irm"].item() == pytest.approx(0.0025, rel=1e-4)
    ssim_term = terms["irm"].item() - plain["irm"].item()
    assert ssim_term > 0.5  # 1 - SSIM of a flattened texture: its contrast term is near 0
    assert terms["irm_predicted"].item() == pytest.approx(0.5 * terms["irm"].item(), rel=1e-5)
    assert with_ssim(texture, texture, None, [], texture, None)["irm"].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("weight", [-0.1, True, "1", float("nan")])
def test_a_bad_ssim_loss_weight_is_refused(weight):
    with pytest.raises(ValueError, match="ssim_loss_weight must be a number >= 0"):
        ProxyAnoLoss(entropy_weight=0.0, predicted_proxy_weight=0.5, ssim_weight=weight)


def test_blobs_shift_one_region_per_image_within_the_area_range():
    torch.manual_seed(0)
    images = torch.zeros(32, 1, 64, 64)
    images[:, :, 8:56, 8:56] = 0.5  # a "head": blob centres must fall on it
    shifter = BlobShifter(probability=1.0, area_range=(0.01, 0.04), shift_range=(0.2, 0.3))
    shifted, masks = shifter(images)
    areas = masks.flatten(1).mean(dim=1)
    assert torch.all(areas > 0.005)
    assert torch.all(areas < 0.07)  # lobes and the soft edge move the area a little around the range
    change = (shifted - images).flatten(1)
    peak = change.abs().amax(dim=1)
    assert torch.all((peak > 0.15) & (peak <= 0.3 + 1e-6))
    inside_head = (masks * (images > 0)).flatten(1).sum(dim=1) / masks.flatten(1).sum(dim=1)
    assert torch.all(inside_head > 0.25)  # centres are drawn on the head, so most of each blob is on it
    far = masks < 1e-3
    torch.testing.assert_close(shifted[far], images[far], atol=1e-3, rtol=0)


def test_blobs_keep_flat_regions_flat_and_probability_zero_is_identity():
    torch.manual_seed(1)
    flat = torch.full((4, 1, 64, 64), 0.4)
    shifted, masks = BlobShifter(probability=1.0, area_range=(0.02, 0.05))(flat)
    for image, mask in zip(shifted, masks, strict=True):
        inside = image[mask > 0.999]
        assert inside.numel() > 10
        assert inside.max() - inside.min() < 1e-3  # one shift per blob: a flat region stays flat
        assert abs(inside.mean().item() - 0.4) >= 0.15 - 1e-3
    unchanged, none = BlobShifter(probability=0.0)(flat)
    torch.testing.assert_close(unchanged, flat)
    assert none.sum() == 0


def test_flattening_blobs_replace_texture_by_one_shifted_level():
    """A flattening blob removes the texture under it (its core becomes its mean plus the shift); a shifting blob
    keeps it; outside both the image is untouched."""
    torch.manual_seed(3)
    images = torch.rand(16, 1, 64, 64) * 0.4 + 0.3  # texture everywhere
    flattened, masks = BlobShifter(probability=1.0, area_range=(0.03, 0.05), flatten_probability=1.0)(images)
    shifted, _ = BlobShifter(probability=1.0, area_range=(0.03, 0.05))(images)
    for image, flat_image, shifted_image, mask in zip(images, flattened, shifted, masks, strict=True):
        core = mask > 0.999
        assert core.sum() > 10
        assert flat_image[core].std() < 1e-3  # one level
        assert shifted_image[core].std() > 0.05  # texture kept
        level_shift = (flat_image[core].mean() - (image * mask).sum() / mask.sum()).abs()
        assert 0.15 - 1e-3 <= level_shift <= 0.5 + 1e-3
        far = mask < 1e-3
        torch.testing.assert_close(flat_image[far], image[far], atol=1e-3, rtol=0)
    half, half_masks = BlobShifter(probability=1.0, area_range=(0.03, 0.05), flatten_probability=0.5)(
        torch.rand(64, 1, 64, 64) * 0.4 + 0.3
    )
    flat_cores = [image[mask > 0.999].std() < 1e-3 for image, mask in zip(half, half_masks, strict=True)]
    assert 16 < sum(flat_cores) < 48  # about half the blobs flatten, the others shift


def test_intensity_jitter_is_one_smooth_transform_per_image_for_image_and_proxy():
    torch.manual_seed(2)
    images = torch.zeros(64, 1, 32, 32)
    images[:, :, 4:28, 4:28] = torch.rand(64, 1, 24, 24) * 0.6 + 0.2
    proxies = images.mean(dim=(2, 3), keepdim=True).expand_as(images) * (images > 0)
    jittered_images, jittered_proxies = IntensityJitter(probability=0.5)(images, proxies)
    assert torch.equal(jittered_images[images == 0], images[images == 0])  # the background stays dark
    assert jittered_images.min() >= 0
    assert jittered_images.max() <= 1
    changed = (jittered_images - images).flatten(1).abs().amax(dim=1) > 1e-6
    assert 16 < changed.sum() < 48  # about half the images, each transformed whole or not at all
    assert torch.equal(jittered_proxies[~changed], proxies[~changed])  # their proxies too
    assert torch.all((jittered_proxies[changed] - proxies[changed]).flatten(1).abs().amax(dim=1) > 1e-6)
    # the same transform for an image and its proxy: a flat proxy region maps as the image pixels under it
    flat = torch.full_like(images, 0.5) * (images > 0)
    torch.manual_seed(3)
    jittered_flat, jittered_again = IntensityJitter(probability=1.0)(flat, flat.clone())
    assert torch.equal(jittered_flat, jittered_again)
    head = jittered_flat[:, :, 4:28, 4:28]
    assert (head[..., 1:] - head[..., :-1]).abs().amax() < 0.05  # a smooth field: neighbours differ little
    assert head.flatten(1).std(dim=1).mean() > 0.005  # but it does shade the head
    assert len({round(value, 4) for value in head[:, 0, 12, 12].tolist()}) > 32  # and differs per image
    unchanged = IntensityJitter(probability=0.0)(images)
    assert unchanged[0] is images
    with pytest.raises(ValueError, match="intensity_jitter"):
        IntensityJitter(probability=1.5)


def test_translation_jitter_shifts_image_and_proxy_together_by_whole_pixels_zero_filled():
    torch.manual_seed(4)
    images = torch.rand(64, 1, 20, 20) + 0.5  # no zero inside: every zero out is fill
    proxies = images * 2
    shifted_images, shifted_proxies = TranslationJitter(probability=0.5, max_shift=0.1)(images, proxies)
    torch.testing.assert_close(shifted_proxies, shifted_images * 2)
    moved = 0
    for image, shifted in zip(images, shifted_images, strict=True):
        rows, cols = torch.nonzero(shifted[0] > 0, as_tuple=True)
        top, left = rows.min().item(), cols.min().item()
        height, width = rows.max().item() - top + 1, cols.max().item() - left + 1
        assert height >= 18  # at most 2 px (10 % of 20) leave the frame per axis
        assert width >= 18
        # the kept block is the image's own pixels, moved whole
        source_top = 0 if top else 20 - height
        source_left = 0 if left else 20 - width
        source = image[0, source_top : source_top + height, source_left : source_left + width]
        assert torch.equal(shifted[0, top : top + height, left : left + width], source)
        moved += (height, width) != (20, 20)
    assert 16 < moved < 48  # about half the images
    assert TranslationJitter(probability=0.0)(images)[0] is images
    with pytest.raises(ValueError, match="translation_jitter"):
        TranslationJitter(probability=-0.1)


def test_flip_jitter_mirrors_image_and_proxy_together_left_right():
    torch.manual_seed(5)
    images = torch.rand(64, 1, 6, 8)
    proxies = torch.rand(64, 3, 6, 8)
    flipped_images, flipped_proxies = FlipJitter(probability=0.5)(images, proxies)
    mirrored = torch.tensor(
        [torch.equal(flipped, image.flip(-1)) for image, flipped in zip(images, flipped_images, strict=True)]
    )
    kept = torch.tensor([torch.equal(flipped, image) for image, flipped in zip(images, flipped_images, strict=True)])
    assert torch.all(mirrored ^ kept)  # each image is either itself or its mirror image, never changed otherwise
    assert 16 < mirrored.sum() < 48  # about half
    torch.testing.assert_close(flipped_proxies[mirrored], proxies[mirrored].flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(flipped_proxies[~mirrored], proxies[~mirrored], rtol=0, atol=0)
    assert FlipJitter(probability=0.0)(images)[0] is images
    with pytest.raises(ValueError, match="flip_jitter"):
        FlipJitter(probability=1.1)


@pytest.mark.parametrize("bad", [{"probability": 2.0}, {"area_range": (0.2, 0.1)}, {"shift_range": (0.0, 0.5)}])
def test_blobs_reject_bad_arguments(bad):
    with pytest.raises(ValueError, match="blob"):
        BlobShifter(**bad)


@pytest.mark.parametrize(("skips", "memories"), [("none", 1), ("plain", 1), ("memory", 3)])
def test_pem_skip_layouts(skips, memories):
    torch.manual_seed(0)
    pem = ProxyExtractionModule(1, WIDTHS, memory_size=10, shrink_threshold=0.0, skips=skips)
    predicted, weights = pem(torch.rand(2, 1, 32, 32))
    assert predicted.shape == (2, 1, 32, 32)
    assert len(weights) == memories
    # every skip level's memory reads one weight row per location of its level
    assert [w.shape[0] for w in weights] == [2 * (32 // 2**level) ** 2 for level in range(3 - memories, 3)]


def test_pem_skips_carry_fine_detail_the_bottleneck_cannot():
    """A 1-pixel change reaches the output through plain skips, not through an 8x coarser bottleneck alone."""
    torch.manual_seed(0)
    images = torch.rand(1, 1, 32, 32)
    poked = images.clone()
    poked[..., 16, 16] += 1.0
    for skips, expect_local in (("plain", True), ("none", False)):
        torch.manual_seed(0)
        pem = ProxyExtractionModule(1, WIDTHS, memory_size=0, shrink_threshold=0.0, skips=skips).eval()
        change = (pem(poked)[0] - pem(images)[0]).abs()[0, 0]
        local = change[14:19, 14:19].max() / change.max()
        assert (local == 1.0) == expect_local


@pytest.mark.parametrize("memory_size", [0, 10])
def test_pem_global_code_reads_one_query_per_image(memory_size):
    torch.manual_seed(0)
    pem = ProxyExtractionModule(1, WIDTHS, memory_size, 0.0, skips="none", code_size=4, image_size=32)
    predicted, weights = pem(torch.rand(3, 1, 32, 32))
    assert predicted.shape == (3, 1, 32, 32)
    assert [w.shape for w in weights] == ([(3, memory_size)] if memory_size else [])
    pem(torch.rand(1, 1, 32, 32))[0].mean().backward()  # an epoch's last batch may hold one image


def test_pem_global_code_passes_no_more_than_its_numbers():
    """The prediction depends on the image only through the code: the Jacobian's rank is at most its size,
    where the spatial bottleneck of the same encoder passes far more."""
    image = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    directions = torch.randn(8, 1, 1, 16, 16, generator=torch.Generator().manual_seed(1))

    def jacobian_rank(**code) -> int:
        torch.manual_seed(0)
        pem = ProxyExtractionModule(1, WIDTHS, 0, 0.0, skips="none", **code).eval()
        # The Jacobian applied to 8 random directions (forward mode): its rank bounds the Jacobian's from below.
        with torch.no_grad():
            changes = [torch.func.jvp(lambda x: pem(x)[0], (image,), (d,))[1].flatten() for d in directions]
        return int(torch.linalg.matrix_rank(torch.stack(changes), rtol=1e-4))

    assert jacobian_rank(code_size=3, image_size=16) <= 3 < jacobian_rank()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"skips": "plain", "code_size": 4, "image_size": 32}, "needs pem_skips='none'"),
        ({"skips": "none", "code_size": 4}, "needs the image_size"),
        ({"skips": "none", "code_size": -1, "image_size": 32}, "non-negative integer"),
    ],
)
def test_pem_global_code_rejects_what_it_cannot_build(arguments, message):
    with pytest.raises(ValueError, match=message):
        ProxyExtractionModule(1, WIDTHS, 10, 0.0, **arguments)


def test_pem_rejects_unknown_skip_layout():
    with pytest.raises(ValueError, match="pem_skips must be one of"):
        ProxyExtractionModule(1, WIDTHS, 10, 0.0, skips="dense")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PatchPaster(probability=1.5), "paste_probability must be in"),
        (lambda: PatchPaster(area_range=(0.2, 0.1)), "paste_area_range must satisfy"),
        (lambda: BlobShifter(probability=-0.1), "blob_probability must be in"),
        (lambda: BlobShifter(area_range=(0.0, 0.1)), "blob_area_range must satisfy"),
        (lambda: BlobShifter(shift_range=(0.5, 1.5)), "blob_shift_range must satisfy"),
        (lambda: BlobShifter(flatten_probability=1.5), "blob_flatten_probability must be in"),
    ],
)
def test_corruption_settings_are_checked_with_the_models_parameter_names(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_scoring_blurs_the_difference_as_the_model_argument_does():
    """``Scoring.error_blur_sigma`` (a score candidate's) gives the map of a model built with that blur."""
    torch.manual_seed(0)
    images, reconstructions = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    plain = ProxyAnoModel(1, WIDTHS, 0, 0.0, 1.0, 0.05, "l1").eval()
    blurred = ProxyAnoModel(1, WIDTHS, 0, 0.0, 1.0, 0.05, "l1", error_blur_sigma=2.0).eval()
    expected = blurred.error_map(images, reconstructions)
    torch.testing.assert_close(plain.error_map(images, reconstructions, Scoring("l1", 1.0, False, 2.0)), expected)
    plain.set_scoring(blurred.scoring)
    torch.testing.assert_close(plain.error_map(images, reconstructions), expected)
    assert not torch.allclose(
        expected, ProxyAnoModel(1, WIDTHS, 0, 0.0, 1.0, 0.05, "l1").error_map(images, reconstructions)
    )


def test_a_candidate_without_a_blur_keeps_the_models():
    """Candidates and checkpoints written before scorings had a blur meant the model's own."""
    assert _scoring({"error": "l1", "map_sigma": 1.0}, 4.0).error_blur_sigma == 4.0
    assert _scoring({"error": "l1", "map_sigma": 1.0, "error_blur_sigma": 0.0}, 4.0).error_blur_sigma == 0.0
    with pytest.raises(ValueError, match="error_blur_sigma must be >= 0"):
        _scoring({"error": "l1", "map_sigma": 1.0, "error_blur_sigma": -1.0})


def test_a_candidates_top_fraction_scores_as_a_model_built_with_it():
    """``topk`` (a score candidate's) averages that fraction of the map; candidates and checkpoints without it keep
    the model's ``score_topk``."""
    anomaly_map = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    model = ProxyAnoModel(1, WIDTHS, 0, 0.0, 0.0, 1 / 16, "l1")
    wide = ProxyAnoModel(1, WIDTHS, 0, 0.0, 0.0, 0.25, "l1")
    candidate = _scoring({"error": "l1", "map_sigma": 0.0, "topk": 0.25}, topk=1 / 16)
    torch.testing.assert_close(model.image_score(anomaly_map, scoring=candidate), wide.image_score(anomaly_map))
    assert model.image_score(anomaly_map).item() == 15
    model.set_scoring(candidate)
    assert model.score_topk == 0.25
    assert model.image_score(anomaly_map).item() == pytest.approx(13.5)
    assert _scoring({"error": "l1", "map_sigma": 1.0}, topk=0.05).topk == 0.05
    for topk in (0.0, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="score_topk must be in"):
            _scoring({"error": "l1", "map_sigma": 1.0, "topk": topk})


def test_ssim_error_ignores_brightness_offsets_that_l1_scores():
    """1 - SSIM is ~0 for a perfect reconstruction and small for a uniform offset (its means term only), while a
    reconstruction with the structure flattened scores far higher; it needs a window."""
    torch.manual_seed(0)
    images = torch.nn.functional.interpolate(torch.rand(2, 1, 8, 8), size=32, mode="bilinear") * 0.5 + 0.25
    model = ProxyAnoModel(1, WIDTHS, 0, 0.0, 0.0, 0.05, "ssim", error_blur_sigma=2.0)
    same = model.error_map(images, images)
    offset = model.error_map(images, images + 0.05)
    flat = model.error_map(images, images.mean(dim=(2, 3), keepdim=True).expand_as(images))
    assert same.abs().max() < 1e-4
    assert offset.mean() < flat.mean() / 5
    with pytest.raises(ValueError, match="set error_blur_sigma > 0"):
        Scoring("ssim", 1.0).check()
