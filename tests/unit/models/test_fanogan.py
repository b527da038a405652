"""f-AnoGAN: architecture, both training stages, stage switching, errors."""

import lightning
import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.pre_processing import PreProcessor
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import Resize

from proxyano_plugin.models.fanogan import FAnoGAN
from proxyano_plugin.models.fanogan.loss import critic_loss, izif_loss
from proxyano_plugin.models.fanogan.torch_model import FAnoGANModel

TINY = {"dim": 4, "latent_dim": 16}


def _images(size: int = 8, image_size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth random images replicated to 3 channels, as anomalib delivers grayscale files."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(size, 1, 4, 4, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=image_size, mode="bilinear", align_corners=False)
    return images.expand(-1, 3, -1, -1).contiguous()


def _fit(model: FAnoGAN, batches: int = 4, max_epochs: int = -1, callbacks: list | None = None) -> lightning.Trainer:
    """Train on ``batches`` fixed batches of 4 images per epoch, without validation."""
    data = [ImageBatch(image=_images(4, seed=index)) for index in range(batches)]
    trainer = lightning.Trainer(
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
    )
    trainer.fit(model, train_dataloaders=DataLoader(data, batch_size=None))
    return trainer


@pytest.mark.parametrize(("image_size", "in_channels"), [(64, 1), (128, 3)])
def test_networks_produce_the_documented_shapes(image_size, in_channels):
    model = FAnoGANModel(in_channels=in_channels, image_size=image_size, **TINY).eval()
    z = model.sample_latent(2, torch.device("cpu"))
    assert z.abs().max() <= 1
    fake = model.generator(z)
    assert fake.shape == (2, in_channels, image_size, image_size)
    assert fake.abs().max() <= 1
    assert model.critic(fake).shape == (2,)
    assert model.critic.features(fake).shape == (2, 8 * TINY["dim"] * 4 * 4)
    assert model.encoder(fake).abs().max() <= 1
    output = model(_images(2, image_size))
    assert output.pred_score.shape == (2,)
    assert output.anomaly_map.shape == (2, 1, image_size, image_size)


def test_default_widths_follow_the_original_code():
    model = FAnoGANModel()
    assert model.generator.project.out_features == 8 * 64 * 4 * 4
    assert [block.conv2.out_channels for block in model.critic.trunk.blocks] == [128, 256, 512, 512]
    assert isinstance(model.critic.trunk.blocks[0].norm1, torch.nn.GroupNorm)  # LayerNorm in the critic
    assert isinstance(model.encoder.trunk.blocks[0].norm1, torch.nn.BatchNorm2d)


@pytest.mark.parametrize("image_size", [32, 96, 256])
def test_unsupported_image_sizes_are_refused_naming_the_allowed_ones(image_size):
    with pytest.raises(ValueError, match=rf"supports image_size 64 or 128 \(square\), got {image_size}"):
        FAnoGAN(image_size=image_size)


def test_a_pre_processor_of_another_size_is_refused_when_built():
    with pytest.raises(ValueError, match=r"FAnoGAN\(image_size=64\) got a pre-processor producing 100x100 images"):
        FAnoGAN(**TINY, pre_processor=PreProcessor(transform=Resize([100, 100])))


def test_images_of_another_size_are_refused_by_the_network():
    with pytest.raises(ValueError, match="built for 64x64 images, got 32x32"):
        FAnoGANModel(**TINY)(_images(2, image_size=32))


def test_unknown_latent_prior_is_refused():
    with pytest.raises(ValueError, match="latent_prior must be one of uniform, normal"):
        FAnoGANModel(latent_prior="cauchy")


def test_critic_steps_open_a_wasserstein_gap():
    torch.manual_seed(0)
    model = FAnoGANModel(**TINY)
    real = model.to_model_space(_images(8))
    optimizer = torch.optim.Adam(model.critic.parameters(), lr=1e-3, betas=(0.0, 0.9))
    gaps = []
    for _ in range(10):
        with torch.no_grad():
            fake = model.generator(model.sample_latent(8, real.device))
        terms = critic_loss(model.critic, real, fake, penalty_weight=10.0)
        optimizer.zero_grad()
        terms.loss.backward()
        optimizer.step()
        gaps.append(terms.wasserstein_gap.item())
    assert gaps[-1] > gaps[0] + 0.1


def test_encoder_steps_learn_to_invert_the_frozen_generator():
    torch.manual_seed(0)
    model = FAnoGANModel(**TINY)
    model.generator.eval().requires_grad_(False)
    model.critic.eval().requires_grad_(False)
    with torch.no_grad():  # images the generator can produce, so a perfect encoder exists
        images = model.generator(model.sample_latent(8, torch.device("cpu")))
    optimizer = torch.optim.Adam(model.encoder.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss, _, _ = izif_loss(model.critic, images, model.generator(model.encoder(images)), kappa=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_stages_run_in_order_and_stage_two_leaves_generator_and_critic_untouched():
    lightning.seed_everything(0)
    model = FAnoGAN(**TINY, gan_iterations=2, critic_iterations=2, encoder_iterations=3)
    snapshots = {}

    class SnapshotAtStageSwitch(lightning.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if pl_module.gan_finished and not snapshots:
                snapshots.update({name: p.detach().clone() for name, p in pl_module.model.named_parameters()})

    trainer = _fit(model, batches=4, callbacks=[SnapshotAtStageSwitch()])
    assert int(model.critic_steps) == 4
    assert model.generator_steps == 2
    assert int(model.encoder_steps) == 3
    assert model.training_finished
    assert trainer.current_epoch <= 2  # stopped itself; max_epochs was -1
    after = dict(model.model.named_parameters())
    for name, before in snapshots.items():
        if name.startswith(("generator.", "critic.")):
            torch.testing.assert_close(after[name], before, msg=f"{name} changed in stage 2")
    assert any(not torch.equal(after[name], snapshots[name]) for name in snapshots if name.startswith("encoder."))


def test_too_few_epochs_for_the_stages_are_refused_before_training():
    model = FAnoGAN(**TINY, gan_iterations=2, critic_iterations=2, encoder_iterations=3)
    with pytest.raises(ValueError, match=r"needs 7 more training batches .* --trainer.max_epochs >= 2"):
        _fit(model, batches=4, max_epochs=1)
    assert int(model.critic_steps) == 0


def test_nan_loss_in_the_gan_stage_stops_training_with_a_clear_message():
    model = FAnoGAN(**TINY, gan_iterations=2, critic_iterations=2, encoder_iterations=0)
    with torch.no_grad():
        model.model.critic.head.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"WGAN-GP critic loss is nan after 0 generator iterations"):
        _fit(model, batches=2)


def test_trainer_arguments_leave_the_epoch_count_to_the_user():
    assert "max_epochs" not in FAnoGAN(**TINY).trainer_arguments


def test_validation_waits_for_the_encoder_and_the_trainer_setting_comes_back():
    """Scores of an untrained encoder say nothing: no validation during the GAN stage, every epoch after."""
    lightning.seed_everything(0)
    model = FAnoGAN(**TINY, gan_iterations=2, critic_iterations=2, encoder_iterations=8)
    validated = []

    class RecordValidation(lightning.Callback):
        def on_validation_epoch_start(self, trainer, pl_module):
            if not trainer.sanity_checking:
                validated.append((trainer.current_epoch, int(pl_module.critic_steps), int(pl_module.encoder_steps)))

    train = [ImageBatch(image=_images(4, seed=index)) for index in range(3)]
    validation = [ImageBatch(image=_images(4, seed=9), gt_label=torch.tensor([0, 0, 1, 1]))]
    trainer = lightning.Trainer(
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[RecordValidation()],
    )
    trainer.fit(model, DataLoader(train, batch_size=None), DataLoader(validation, batch_size=None))
    # 4 critic steps fill epoch 0 and one batch of epoch 1; the encoder's 8 steps end in epoch 3.
    assert validated == [(1, 4, 2), (2, 4, 5), (3, 4, 8)]
    assert trainer.check_val_every_n_epoch == 1
