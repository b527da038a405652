"""f-AnoGAN as an anomalib model: both training stages in one module, with manual optimisation.

Schlegl et al., "f-AnoGAN: Fast unsupervised anomaly detection with generative adversarial networks",
Medical Image Analysis 54 (2019). See README.md in this folder for what follows the original code.
"""

import logging
import math
import sys

import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT

from proxyano_plugin.models.base import OneClassReconstruction

from .loss import critic_loss, generator_loss, izif_loss
from .torch_model import FAnoGANModel, check_image_size

__all__ = ["FAnoGAN"]

# check_val_every_n_epoch while the GAN trains: no epoch reaches it.
_NO_VALIDATION = sys.maxsize

logger = logging.getLogger(__name__)


class FAnoGAN(OneClassReconstruction, AnomalibModule):
    """f-AnoGAN: a WGAN-GP trained on normal images, then an izi_f encoder that inverts its generator.

    Each training batch is one optimisation step of the current stage: a critic step in stage 1 (plus a
    generator step after every ``critic_iterations`` critic steps), an encoder step in stage 2. Training
    stops itself once both stages are done, so ``--trainer.max_epochs`` only needs to be large enough
    (``-1`` is fine); a value too small for the requested stage lengths is refused when training starts.
    Keep ``check_val_every_n_epoch`` at 1: the validation run after the last step sets anomalib's thresholds.

    All arguments are plain data so checkpoints load with ``weights_only=True``.

    Args:
        in_channels: 1 for grayscale (the original) or 3 for RGB.
        image_size: 64 (the original) or 128; the pre-processor resizes to it.
        dim: Base width ``DIM`` of the networks (original: 64). 16 or less is what a CPU can train.
        latent_dim: Size of z (original: 128).
        latent_prior: Prior of z for the GAN: ``"uniform"`` on [-1, 1] (the range of the encoder's tanh) or
            ``"normal"`` (the original code's default sampling).
        gan_iterations: Generator updates in stage 1 (each preceded by ``critic_iterations`` critic updates).
        critic_iterations: Critic updates per generator update (original: 5).
        gradient_penalty_weight: WGAN-GP lambda (original: 10).
        gan_learning_rate: Adam learning rate of generator and critic (original: 1e-4).
        gan_betas: Adam betas of generator and critic (original: (0, 0.9)).
        encoder_iterations: Encoder updates in stage 2 (original: 50,000).
        encoder_learning_rate: RMSProp learning rate of the encoder (original: 5e-5).
        kappa: Weight of the critic-feature term in the encoder loss and the score (original: 1.0).
    """

    nonfinite_loss_advice = (
        "training stopped. Lower --model.gan_learning_rate / --model.encoder_learning_rate or check the input "
        "intensities"
    )

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 64,
        dim: int = 64,
        latent_dim: int = 128,
        latent_prior: str = "uniform",
        gan_iterations: int = 20000,
        critic_iterations: int = 5,
        gradient_penalty_weight: float = 10.0,
        gan_learning_rate: float = 1e-4,
        gan_betas: tuple[float, float] = (0.0, 0.9),
        encoder_iterations: int = 50000,
        encoder_learning_rate: float = 5e-5,
        kappa: float = 1.0,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        check_image_size(image_size)
        for name, value in (("gan_iterations", gan_iterations), ("critic_iterations", critic_iterations)):
            if value < 1:
                msg = f"FAnoGAN {name} must be at least 1, got {value}"
                raise ValueError(msg)
        if encoder_iterations < 0:
            msg = f"FAnoGAN encoder_iterations must be at least 0, got {encoder_iterations}"
            raise ValueError(msg)
        super().__init__(pre_processor, post_processor, evaluator, visualizer, image_size=image_size)
        self.automatic_optimization = False
        self.model = FAnoGANModel(in_channels, image_size, dim, latent_dim, latent_prior, kappa)
        self.gan_iterations = gan_iterations
        self.critic_iterations = critic_iterations
        self.gradient_penalty_weight = gradient_penalty_weight
        self.gan_learning_rate = gan_learning_rate
        self.gan_betas = (float(gan_betas[0]), float(gan_betas[1]))
        self.encoder_iterations = encoder_iterations
        self.encoder_learning_rate = encoder_learning_rate
        # Progress lives in buffers so a checkpoint (or --ckpt_path resume) knows which stage it is in.
        self.critic_steps: torch.Tensor
        self.encoder_steps: torch.Tensor
        self.register_buffer("critic_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("encoder_steps", torch.zeros((), dtype=torch.long))
        self._validation_interval: int | None = None

    @property
    def generator_steps(self) -> int:
        """Generator updates done so far."""
        return int(self.critic_steps) // self.critic_iterations

    @property
    def gan_finished(self) -> bool:
        return self.generator_steps >= self.gan_iterations

    @property
    def training_finished(self) -> bool:
        return self.gan_finished and int(self.encoder_steps) >= self.encoder_iterations

    def on_train_start(self) -> None:
        """Fail now, not after hours, if the trainer's limits cannot fit both stages."""
        remaining_critic = max(self.gan_iterations * self.critic_iterations - int(self.critic_steps), 0)
        remaining_generator = max(self.gan_iterations - self.generator_steps, 0)
        remaining_encoder = max(self.encoder_iterations - int(self.encoder_steps), 0)
        remaining_batches = remaining_critic + remaining_encoder
        trainer = self.trainer
        batches_per_epoch = trainer.num_training_batches
        if trainer.max_epochs is not None and trainer.max_epochs >= 0 and math.isfinite(batches_per_epoch):
            available = (trainer.max_epochs - self.current_epoch) * int(batches_per_epoch)
            if available < remaining_batches:
                epochs = self.current_epoch + math.ceil(remaining_batches / max(int(batches_per_epoch), 1))
                msg = (
                    f"FAnoGAN needs {remaining_batches} more training batches ({remaining_critic} critic steps for "
                    f"{self.gan_iterations} generator iterations + {remaining_encoder} encoder steps), i.e. "
                    f"--trainer.max_epochs >= {epochs} at {batches_per_epoch} batches per epoch, but max_epochs is "
                    f"{trainer.max_epochs}; raise it (or use -1: training stops itself) or lower "
                    "--model.gan_iterations / --model.encoder_iterations"
                )
                raise ValueError(msg)
        if trainer.check_val_every_n_epoch not in (None, 1):
            logger.warning(
                "FAnoGAN stops itself when both stages are done, in whatever epoch that is; with "
                "check_val_every_n_epoch=%d the validation that sets anomalib's thresholds may not run after it",
                trainer.check_val_every_n_epoch,
            )
        # Every optimizer.step() counts as a Lightning step under manual optimisation.
        remaining_steps = remaining_batches + remaining_generator
        if trainer.max_steps >= 0 and trainer.max_steps - trainer.global_step < remaining_steps:
            msg = (
                f"FAnoGAN needs {remaining_steps} more optimizer steps (critic + generator + encoder), but "
                f"--trainer.max_steps is {trainer.max_steps}; raise it (or use -1) or lower --model.gan_iterations / "
                "--model.encoder_iterations"
            )
            raise ValueError(msg)

    def on_train_epoch_start(self) -> None:
        self._validate_only_with_an_encoder()

    def _validate_only_with_an_encoder(self) -> None:
        """Validation scores ``x`` against ``G(E(x))``: during the GAN stage the encoder is untrained, so those
        scores say nothing, and on a CPU they cost about a tenth of the run. Lightning reads
        ``check_val_every_n_epoch`` after each batch: off during the GAN stage, the trainer's own after it."""
        trainer = self.trainer
        if not self.gan_finished and trainer.check_val_every_n_epoch != _NO_VALIDATION:
            self._validation_interval = trainer.check_val_every_n_epoch
            trainer.check_val_every_n_epoch = _NO_VALIDATION
        elif self.gan_finished and trainer.check_val_every_n_epoch == _NO_VALIDATION:
            trainer.check_val_every_n_epoch = self._validation_interval

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """One step of the current stage; stops the trainer when both stages are done."""
        del args, kwargs
        if self.training_finished:
            self.trainer.should_stop = True
            return None
        self.check_finite_images(batch)
        images = self.model.to_model_space(batch.image)
        loss = self._gan_step(images) if not self.gan_finished else self._encoder_step(images)
        if self.training_finished:
            logger.info("FAnoGAN: both stages done (%d encoder steps); stopping training.", int(self.encoder_steps))
            self.trainer.should_stop = True
        return loss

    def _gan_step(self, images: torch.Tensor) -> torch.Tensor:
        """One WGAN-GP critic update, and a generator update after every ``critic_iterations`` of them."""
        optimizer_generator, optimizer_critic, _ = self.optimizers()
        generator, critic = self.model.generator, self.model.critic
        generator.train()
        critic.train()
        with torch.no_grad():
            fake = generator(self.model.sample_latent(images.shape[0], images.device))
        critic_terms = critic_loss(critic, images, fake, self.gradient_penalty_weight)
        self.check_finite_loss(critic_terms.loss, "WGAN-GP critic loss")
        optimizer_critic.zero_grad()
        self.manual_backward(critic_terms.loss)
        optimizer_critic.step()
        self.critic_steps += 1
        self.log_dict(
            {
                "train_critic_loss": critic_terms.loss.detach(),
                "train_wasserstein_gap": critic_terms.wasserstein_gap,
                "train_gradient_penalty": critic_terms.gradient_penalty,
            },
            prog_bar=True,
            on_step=False,
            on_epoch=True,
            batch_size=images.shape[0],
        )
        if int(self.critic_steps) % self.critic_iterations == 0:
            self.toggle_optimizer(optimizer_generator)
            loss = generator_loss(critic, generator(self.model.sample_latent(images.shape[0], images.device)))
            self.check_finite_loss(loss, "WGAN generator loss")
            optimizer_generator.zero_grad()
            self.manual_backward(loss)
            optimizer_generator.step()
            self.untoggle_optimizer(optimizer_generator)
            self.log("train_generator_loss", loss.detach(), on_step=False, on_epoch=True, batch_size=images.shape[0])
            if self.gan_finished:
                logger.info(
                    "FAnoGAN: GAN stage done after %d generator iterations; training the encoder.", self.gan_iterations
                )
                self._validate_only_with_an_encoder()
        return critic_terms.loss.detach()

    def _encoder_step(self, images: torch.Tensor) -> torch.Tensor:
        """One izi_f update of the encoder; generator and critic stay frozen (eval mode, no gradients)."""
        _, _, optimizer_encoder = self.optimizers()
        for frozen in (self.model.generator, self.model.critic):
            frozen.eval()
            frozen.requires_grad_(False)
        self.model.encoder.train()
        reconstructions = self.model.generator(self.model.encoder(images))
        loss, image_term, feature_term = izif_loss(self.model.critic, images, reconstructions, self.model.kappa)
        self.check_finite_loss(loss, "izi_f encoder loss")
        optimizer_encoder.zero_grad()
        self.manual_backward(loss)
        optimizer_encoder.step()
        self.encoder_steps += 1
        self.log_dict(
            {"train_encoder_loss": loss.detach(), "train_image_term": image_term, "train_feature_term": feature_term},
            prog_bar=True,
            on_step=False,
            on_epoch=True,
            batch_size=images.shape[0],
        )
        return loss.detach()

    def training_progress(self) -> str:
        """Stage counts, not epochs: an epoch mixes critic, generator and encoder steps."""
        return (
            f"after {self.generator_steps} generator iterations "
            f"({int(self.critic_steps)} critic steps, {int(self.encoder_steps)} encoder steps)"
        )

    def on_train_end(self) -> None:
        """Say loudly when training ended before both stages were done (e.g. interrupted or max_time)."""
        if self.trainer.check_val_every_n_epoch == _NO_VALIDATION:
            self.trainer.check_val_every_n_epoch = self._validation_interval
        if not self.training_finished:
            logger.warning(
                "FAnoGAN: training ended after %d of %d generator iterations and %d of %d encoder steps; "
                "its scores are not those of a fully trained f-AnoGAN",
                min(self.generator_steps, self.gan_iterations),
                self.gan_iterations,
                int(self.encoder_steps),
                self.encoder_iterations,
            )

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam (0, 0.9) for generator and critic, RMSProp for the encoder, as in the original code.

        RMSProp uses TensorFlow 1's defaults, which the original ran with: decay 0.9 and epsilon 1e-10 inside
        the square root (about 1e-5 outside it, where PyTorch adds it).
        """
        return [
            torch.optim.Adam(self.model.generator.parameters(), lr=self.gan_learning_rate, betas=self.gan_betas),
            torch.optim.Adam(self.model.critic.parameters(), lr=self.gan_learning_rate, betas=self.gan_betas),
            torch.optim.RMSprop(self.model.encoder.parameters(), lr=self.encoder_learning_rate, alpha=0.9, eps=1e-5),
        ]
