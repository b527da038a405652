"""ProxyAno as an anomalib model.

Zhou et al., "Proxy-bridged Image Reconstruction Network for Anomaly Detection in Medical Images",
IEEE TMI 2021 (arXiv 2110.01761). See README.md in this folder for every choice the paper leaves open.
"""

import copy
import logging
from collections.abc import Sequence
from itertools import chain
from typing import Any

import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT, OptimizerLRSchedulerConfig
from torch.nn import functional as F  # noqa: N812

from proxyano_plugin.models.base import OneClassReconstruction
from proxyano_plugin.models.selection import BestEpoch
from proxyano_plugin.proxies import CachedProxy, create_proxy

from .augmentation import FlipJitter, IntensityJitter, TranslationJitter
from .loss import ProxyAnoLoss
from .pseudo_anomaly import BlobShifter, PatchPaster
from .torch_model import ProxyAnoModel, Scoring, check_space_to_depth

__all__ = ["ProxyAno"]

logger = logging.getLogger(__name__)
# Where a checkpoint keeps the label-free epoch selection (best epoch, its scores and weights).
SELECTION_KEY = "proxyano_epoch_selection"
# How the model scores (pixel error, map smoothing): chosen on validation when score_candidates are given.
SCORING_KEY = "proxyano_scoring"

CPU_WIDTHS = (8, 16, 32, 64)
LR_SCHEDULES = ("constant", "cosine")
AVERAGED_BATCHNORM = ("average", "copy")
# The cosine schedule ends at this fraction of the learning rate, not 0: the last epochs still learn a little.
COSINE_FLOOR = 0.01
# The network arguments a teacher (distill_from) may change: its architecture, not what it is trained on or scored by.
TEACHER_ARGUMENTS = (
    "widths",
    "memory_size",
    "memory_shrink_threshold",
    "pem_skips",
    "pem_code_size",
    "space_to_depth",
    "skip_merge",
    "refine_width",
    "refine_networks",
)


class ProxyAno(OneClassReconstruction, AnomalibModule):
    """Proxy-bridged image reconstruction for anomaly detection, trained on normal images only.

    The Proxy Extraction Module (encoder -> MemAE memory -> decoder) predicts the image's proxy
    (by default its superpixel mean image); the Image Reconstruction Module (a U-Net) maps the proxy
    back to the image. During training the IRM also sees pseudo-abnormal proxies (image patches pasted
    on them) and must still output the normal image. The anomaly map is the (smoothed) reconstruction
    error, and the image score a top-k mean of that map.

    All arguments are plain data so checkpoints load with ``weights_only=True``.

    Args:
        in_channels: 1 for grayscale (MRI, OCT) or 3 for RGB (fundus).
        image_size: Square input size the pre-processor resizes to; a multiple of ``2 ** (len(widths) - 1)``.
        widths: Encoder widths per level for both networks (defaults to ``[8, 16, 32, 64]``, sized for
            CPUs; the paper-scale preset uses ``[64, 128, 256, 512, 512]``).
        memory_size: Memory items in the PEM bottleneck (MemAE default 2000); 0 removes the memory.
        memory_shrink_threshold: Hard-shrinkage threshold of the addressing weights (MemAE: 0.0025).
        entropy_weight: Weight of the addressing-entropy loss (MemAE: 0.0002).
        proxy: Name of a registered proxy extractor (``proxyano_plugin.proxies.available_proxies()``).
        proxy_kwargs: Keyword arguments of that proxy extractor.
        proxy_cache_dir: Optional folder for an on-disk proxy cache shared across runs (unbounded: for fixed
            training sets, not augmented ones).
        proxy_cache_items: Training proxies kept in memory, the least recently used dropped first, so that a
            training set computes each image's proxy once instead of every epoch. 0 keeps none: without
            ``proxy_cache_dir`` the proxy then runs on the training device with no host copy or hashing,
            the right choice with random training augmentations (no image repeats, nothing would hit).
            The default, 10,000, holds every training set benchmarked here several times over (lgg_flair:
            1,327 slices) and caps the cache at 160 MB for 64 px grayscale proxies (16 KB each; 2.5 GB at
            256 px). A training set larger than the cache recomputes most proxies every epoch (a shuffled
            order defeats LRU): raise the limit or add ``proxy_cache_dir``.
        paste_probability: Chance that a training proxy gets a pasted image patch.
        paste_area_range: Pasted patch area as a fraction of the image.
        paste_aspect_range: Pasted patch aspect-ratio range.
        predicted_proxy_weight: Weight of the IRM loss on the PEM's predicted proxies (0 trains the IRM
            on extracted proxies only, as two fully separate stages would).
        ssim_loss_weight: Weight of 1 - SSIM (3 px window) added to the IRM's MSE in both its loss terms; 0 (the
            default, the paper's reconstruction loss) trains on MSE only. For scoring with ``error: ssim``.
        map_sigma: Gaussian smoothing of the error map, in pixels at ``image_size``; 0 disables it.
        error_blur_sigma: Gaussian blur of the image and its reconstruction before their difference, in
            pixels at ``image_size``; 0 (default, the paper) compares them pixel by pixel. Cancels texture
            the proxy cannot carry (see README: brain_tumor_mri).
        score_topk: Image score = mean of the top fraction of map values (1.0 = mean error).
        score_relative: Divide the image score by the anomaly map's mean over the head (pixels above 0.05): an
            image whose reconstruction error is high everywhere (noise, an unusual scan) does not score high for
            that alone; a lesion raises the top of the map, not its mean.
        error: ``"l1"`` or ``"l2"`` pixel error, or ``"gradient"``: |grad(x - x_hat)|, the edges the
            reconstruction adds or misses (see ``ProxyAnoModel``).
        learning_rate: Adam learning rate for both networks.
        lr_schedule: ``"constant"`` (the rate above throughout) or ``"cosine"`` (decayed along a half cosine to
            1 % of it by the last epoch, ``trainer.max_epochs``): late epochs then take small steps, so the
            validation scores of neighbouring epochs agree and the selected epoch is not a lucky swing.
        pem_skips: Where detail passes the PEM: ``"none"`` (one memory bottleneck), ``"plain"`` (U-Net
            skips around the memory) or ``"memory"`` (a memory on every skip level).
        pem_code_size: 0 (the default: the PEM's bottleneck is its coarsest feature map) or the size of one
            global code, fully connected, that the PEM squeezes each image into (the plain Autoencoder's
            bottleneck; the memory then reads that code). Needs ``pem_skips="none"``.
        proxy_blob_probability: Chance that a training proxy gets an SI-native pseudo lesion: a blob whose
            intensity is shifted (flat regions stay flat), besides the pasted patches.
        image_blob_probability: Chance that the PEM's training input gets a lesion-like blob (textured,
            intensity-shifted) while its target stays the clean image's proxy.
        blob_area_range: Blob area as a fraction of the image area (both blob kinds).
        blob_shift_range: Magnitude range of the blobs' intensity shift (sign random).
        blob_flatten_probability: Chance that a blob (either kind) replaces the region under it by one level, its
            mean there plus the shift, instead of shifting it: painted and homogeneous lesions have no texture.
            0 (default): every blob keeps the texture under it.
        intensity_jitter: Chance that a training image (and its proxy) gets a random gamma, gain and smooth
            bias field (``augmentation.IntensityJitter``), so that a new subject's or site's intensity scale is
            reconstructed as well as the training subjects'. 0 (default) trains on the images as they are.
        translation_jitter: Chance that a training image (and its proxy) is shifted by up to 10 % of its size,
            zero-filled (``augmentation.TranslationJitter``), so that a head reaching the image border is not
            reconstructed with the dark rim the networks otherwise learn there. 0 (default): no shift.
        flip_jitter: Chance that a training image (and its proxy) is mirrored left-right
            (``augmentation.FlipJitter``): for sets whose normal scans face either way, where a mirrored normal
            is another normal. 0 (default): no mirroring.
        error_sign: ``"both"`` (the paper: |x - x_hat|), ``"brighter"`` (only pixels brighter than their
            reconstruction score: hyperintense lesions such as gliomas on FLAIR) or ``"darker"``.
        select_epoch: On a label-free validation set (``val_split_mode="lesions"`` of ``SplitCSV`` or
            ``BrainMRIDemo``: training-distribution normals with painted lesions), keep the weights of the
            epoch with the best mean of image and pixel validation AUROC and restore them when training
            ends. Ignored with any other validation set, which may hold test images.
        select_from_epoch: The first epoch (0-based) ``select_epoch`` may keep; earlier epochs are validated and
            logged but never kept. An untrained network reconstructs a dark, centred head and can win on pixel
            AUROC by that centre prior alone (the 30-epoch global-code rows of brain-lesions kept epoch 0 or 1);
            0 (default) considers every epoch. If no validation epoch reaches it, the last epoch's weights stay.
        score_candidates: Scorings (``{error: ..., map_sigma: ...}`` each, optionally ``relative``, and
            ``error_blur_sigma`` and ``topk``, which default to the model's) that the label-free validation
            chooses among, jointly with the epoch (``select_epoch``): every validation epoch scores the same
            reconstructions with each, and the best (epoch, scoring) pair is kept; testing, the checkpoint and
            export then use that scoring. ``error``, ``map_sigma``, ``score_relative`` and ``score_topk`` are the
            scoring until then, and the only one without candidates (the default) or without a label-free
            validation set. The logged ``val_*`` curves stay theirs; ``val_selection_candidate{i}`` logs each
            candidate's.
        space_to_depth: Both networks fold ``f x f`` pixel blocks into channels (``fold_blocks``) on the way
            in and unfold them on the way out: they run at ``1/f`` of ``image_size`` with ``f**2`` times fewer
            FLOPs and see every input pixel. 1 (default) runs them at full resolution.
        refine_width: With ``space_to_depth`` > 1, both decoders end in one 3x3 convolution of this width at full
            resolution over their unfolded features and their input (the PEM's image, the IRM's proxy), so each
            pixel's output sees its neighbours (``9 * (refine_width + 1) * refine_width`` multiply-adds per pixel
            and network). 0 (default): the half-resolution head predicts each pixel block directly.
        refine_networks: Which decoders end in the ``refine_width`` layer: ``"both"`` (default), ``"pem"`` or
            ``"irm"`` (the network whose output is scored); one network pays half the layer's cost.
        weight_averaging: Decay of an exponential moving average of the weights, updated after every step
            (0.995: about the last 200 steps; warmed up over the first steps); validation, the kept epoch,
            testing and export then use the averaged networks, which move less from epoch to epoch than the
            trained ones. 0 (default): off.
        distill_from: Train a teacher beside this network and distil it into this one: the teacher is this model's
            network with these architecture arguments changed (``TEACHER_ARGUMENTS``; e.g. ``{space_to_depth: 1,
            memory_size: 2000}`` for a half-resolution network), trained on the same batches, pseudo anomalies
            and losses, and this network's predicted proxy and reconstruction are also asked to match the
            teacher's (detached). Only this network is validated, tested, exported and timed: the teacher costs
            training time, never inference time. None (default): no teacher.
        distillation_weight: Weight of the two distillation terms (mean squared differences) against the
            network's own losses.
        averaged_batchnorm: ``"average"`` (default): BatchNorm statistics are averaged like the weights they
            normalise; ``"copy"``: the trained networks' (on the demo's validation 85.3 against 86.8 for averaged
            ones without the warm-up, 3 seeds).
        skip_merge: How the decoders join their U-Net skips: ``"concat"`` (default, U-Net) or ``"add"`` (the
            coarser features mapped to the level's width by a 1x1 convolution and added to the skip: half the
            decoders' multiply-adds).
        reconstruct_from: ``"predicted_proxy"`` (default, the paper) or ``"image"``: no PEM; the IRM is
            trained to repair pasted patches on the raw image and scores the raw image (a CutPaste-style
            repair network, an ablation of the proxy bridge). ``"image"`` needs ``proxy="identity"``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 64,
        widths: list[int] | None = None,
        memory_size: int = 2000,
        memory_shrink_threshold: float = 0.0025,
        entropy_weight: float = 0.0002,
        proxy: str = "superpixel",
        proxy_kwargs: dict[str, Any] | None = None,
        proxy_cache_dir: str | None = None,
        proxy_cache_items: int = 10_000,
        paste_probability: float = 0.5,
        paste_area_range: tuple[float, float] = (0.02, 0.15),
        paste_aspect_range: tuple[float, float] = (0.3, 3.3),
        predicted_proxy_weight: float = 0.5,
        ssim_loss_weight: float = 0.0,
        map_sigma: float = 1.0,
        score_topk: float = 0.01,
        score_relative: bool = False,
        error: str = "l1",
        learning_rate: float = 1e-3,
        lr_schedule: str = "constant",
        reconstruct_from: str = "predicted_proxy",
        error_blur_sigma: float = 0.0,
        pem_skips: str = "plain",
        pem_code_size: int = 0,
        proxy_blob_probability: float = 0.5,
        image_blob_probability: float = 1.0,
        blob_area_range: tuple[float, float] = (0.005, 0.05),
        blob_shift_range: tuple[float, float] = (0.15, 0.5),
        blob_flatten_probability: float = 0.0,
        intensity_jitter: float = 0.0,
        translation_jitter: float = 0.0,
        flip_jitter: float = 0.0,
        select_epoch: bool = True,
        select_from_epoch: int = 0,
        score_candidates: list[dict[str, Any]] | None = None,
        error_sign: str = "both",
        space_to_depth: int = 1,
        skip_merge: str = "concat",
        refine_width: int = 0,
        refine_networks: str = "both",
        weight_averaging: float = 0.0,
        averaged_batchnorm: str = "average",
        distill_from: dict[str, Any] | None = None,
        distillation_weight: float = 1.0,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        widths = list(widths or CPU_WIDTHS)
        _check_image_size(image_size, widths, space_to_depth)
        if reconstruct_from == "image" and proxy != "identity":
            msg = (
                "reconstruct_from='image' feeds the IRM the raw image at test time, so it must also train on "
                f"the raw image: set proxy='identity' (got proxy={proxy!r})"
            )
            raise ValueError(msg)
        if isinstance(proxy_cache_items, bool) or not isinstance(proxy_cache_items, int) or proxy_cache_items < 0:
            msg = f"proxy_cache_items must be a non-negative integer (0: no cache), got {proxy_cache_items!r}"
            raise ValueError(msg)
        if lr_schedule not in LR_SCHEDULES:
            msg = f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}"
            raise ValueError(msg)
        if isinstance(weight_averaging, bool) or not 0 <= weight_averaging < 1:
            msg = f"weight_averaging must be an EMA decay in [0, 1) (0: off), got {weight_averaging!r}"
            raise ValueError(msg)
        if isinstance(select_from_epoch, bool) or not isinstance(select_from_epoch, int) or select_from_epoch < 0:
            msg = f"select_from_epoch must be a non-negative integer (0: every epoch), got {select_from_epoch!r}"
            raise ValueError(msg)
        if averaged_batchnorm not in AVERAGED_BATCHNORM:
            msg = f"averaged_batchnorm must be one of {', '.join(AVERAGED_BATCHNORM)}, got {averaged_batchnorm!r}"
            raise ValueError(msg)
        if isinstance(distillation_weight, bool) or not distillation_weight >= 0:
            msg = f"distillation_weight must be >= 0, got {distillation_weight!r}"
            raise ValueError(msg)
        super().__init__(pre_processor, post_processor, evaluator, visualizer, image_size=image_size)
        network = {
            "in_channels": in_channels,
            "widths": widths,
            "memory_size": memory_size,
            "memory_shrink_threshold": memory_shrink_threshold,
            "map_sigma": map_sigma,
            "score_topk": score_topk,
            "score_relative": score_relative,
            "error": error,
            "reconstruct_from": reconstruct_from,
            "error_blur_sigma": error_blur_sigma,
            "pem_skips": pem_skips,
            "pem_code_size": pem_code_size,
            "image_size": image_size,
            "error_sign": error_sign,
            "space_to_depth": space_to_depth,
            "skip_merge": skip_merge,
            "refine_width": refine_width,
            "refine_networks": refine_networks,
        }
        self.model = ProxyAnoModel(**network)
        # The teacher of distill_from: trained with the model, never used at inference; the optimiser sees it.
        self.teacher = None if distill_from is None else ProxyAnoModel(**_teacher_network(network, distill_from))
        self.distillation_weight = distillation_weight
        self.proxy_extractor = CachedProxy(
            create_proxy(proxy, **(proxy_kwargs or {})), cache_dir=proxy_cache_dir, max_items=proxy_cache_items
        )
        self.paster = PatchPaster(paste_probability, tuple(paste_area_range), tuple(paste_aspect_range))
        blob_options = {
            "area_range": tuple(blob_area_range),
            "shift_range": tuple(blob_shift_range),
            "flatten_probability": blob_flatten_probability,
        }
        self.proxy_blobs = BlobShifter(proxy_blob_probability, **blob_options)
        self.image_blobs = BlobShifter(image_blob_probability, **blob_options)
        self.intensity_jitter = IntensityJitter(intensity_jitter)
        self.translation_jitter = TranslationJitter(translation_jitter)
        self.flip_jitter = FlipJitter(flip_jitter)
        self.loss = ProxyAnoLoss(entropy_weight, predicted_proxy_weight, ssim_loss_weight)
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.select_epoch = select_epoch
        self.select_from_epoch = select_from_epoch
        self.score_candidates = [
            _scoring(candidate, error_blur_sigma, score_topk) for candidate in score_candidates or []
        ]
        # The exponential moving average of the networks' weights (and BatchNorm statistics), kept beside the
        # trained ones; validation and everything after training use it. A submodule, so that checkpoints (and
        # a resumed fit) carry it; the optimiser sees only ``self.model``.
        self.weight_averaging = weight_averaging
        self.averaged_batchnorm = averaged_batchnorm
        self.averaged = None
        if weight_averaging > 0:  # only then: checkpoints of models without it keep their keys
            self.averaged = copy.deepcopy(self.model).requires_grad_(False)
            self.register_buffer("averaged_updates", torch.zeros((), dtype=torch.long))
        # One validation epoch's raw scores per candidate, and the scoring of the best epoch so far.
        self.candidate_readings = [BestEpoch() for _ in self.score_candidates]
        self.selected_scoring: Scoring | None = None

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """One joint step of both networks (the IRM sees only detached PEM outputs)."""
        del args, kwargs
        self.check_finite_images(batch)
        images = self.model.to_model_channels(batch.image)
        terms = self.training_losses(images)
        self.check_finite_loss(terms["loss"], terms=terms)
        self.log_dict(
            {f"train_{name}": value for name, value in terms.items()},
            on_step=False,
            on_epoch=True,
            batch_size=images.shape[0],
        )
        return terms["loss"]

    def on_train_batch_end(self, outputs: STEP_OUTPUT, batch: Any, batch_idx: int) -> None:
        """Move the averaged weights towards the trained ones after every optimiser step.

        The decay warms up as ``min(weight_averaging, (1 + t) / (10 + t))`` after ``t`` updates: without it the
        average kept its initial BatchNorm statistics (variance 1 against ~0.1 trained) for hundreds of steps,
        every layer's output shrank and the averaged networks decoded a constant for the first 20-30 epochs
        (2026-12-04, model README). ``averaged_batchnorm`` says whether BatchNorm statistics are averaged with
        the weights they belong to (``"average"``) or copied from the trained networks (``"copy"``).
        """
        del outputs, batch, batch_idx
        if self.averaged is None:
            return
        updates = int(self.averaged_updates)
        decay = min(self.weight_averaging, (1 + updates) / (10 + updates))
        with torch.no_grad():
            trained = self.model.state_dict()
            parameters = {name for name, _ in self.averaged.named_parameters()}
            for name, value in self.averaged.state_dict().items():
                averaged = name in parameters or self.averaged_batchnorm == "average"
                if averaged and value.is_floating_point():
                    value.lerp_(trained[name], 1 - decay)
                else:
                    value.copy_(trained[name])
        self.averaged_updates += 1

    def swap_averaged(self) -> None:
        """Exchange the trained and the averaged networks (validation during a fit scores the averaged ones)."""
        if self.averaged is None or self._trainer is None or self.trainer.state.fn != TrainerFn.FITTING:
            return
        self.model, self.averaged = self.averaged, self.model
        self.model.set_scoring(self.averaged.scoring)

    def training_losses(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss terms for a batch already in the model's channels (also used by benchmarks/proxyano_sweep.py).

        With a teacher (``distill_from``) it trains on the same corrupted inputs; ``teacher`` is its loss and
        ``distillation`` the weighted distance of this network's outputs to its (detached) ones.
        """
        images, proxies = self.flip_jitter(images, self.proxy_extractor(images))
        images, proxies = self.intensity_jitter(*self.translation_jitter(images, proxies))
        corrupted, _ = self.paster(proxies, images)
        corrupted, _ = self.proxy_blobs(corrupted, images)
        # The PEM sees lesion-like blobs in the image and must still predict the clean image's proxy.
        pem_inputs = self.image_blobs(images)[0] if self.model.pem is not None else None
        terms, outputs = self.network_losses(self.model, images, proxies, corrupted, pem_inputs)
        if self.teacher is None:
            return terms
        teacher_terms, teacher_outputs = self.network_losses(self.teacher, images, proxies, corrupted, pem_inputs)
        distances = [
            F.mse_loss(output, teacher.detach()) for output, teacher in zip(outputs, teacher_outputs, strict=True)
        ]
        terms["distillation"] = self.distillation_weight * torch.stack(distances).sum()
        terms["teacher"] = teacher_terms["loss"]
        terms["loss"] = terms["loss"] + terms["distillation"] + terms["teacher"]
        return terms

    def network_losses(
        self,
        network: ProxyAnoModel,
        images: torch.Tensor,
        proxies: torch.Tensor,
        corrupted: torch.Tensor,
        pem_inputs: torch.Tensor | None,
    ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
        """One network's loss terms and what a student distils from it: the predicted proxy (with a PEM) and
        the reconstruction the network scores at test time (from the predicted proxy where it is trained on it).
        """
        if network.pem is None:  # reconstruct_from="image": the IRM alone, repairing the raw image
            reconstructions = network.irm(corrupted)
            return self.loss(images, proxies, None, [], reconstructions, None), (reconstructions,)
        predicted, memory_weights = network.pem(pem_inputs)
        with_predicted = self.loss.predicted_proxy_weight > 0
        irm_inputs = torch.cat([corrupted, predicted.detach()]) if with_predicted else corrupted
        reconstructions = network.irm(irm_inputs)
        from_extracted, from_predicted = reconstructions.chunk(2) if with_predicted else (reconstructions, None)
        terms = self.loss(images, proxies, predicted, memory_weights, from_extracted, from_predicted)
        return terms, (predicted, from_extracted if from_predicted is None else from_predicted)

    def selects_scoring(self) -> bool:
        return bool(self.score_candidates) and self.select_epoch and self.label_free_validation()

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """As every model here; with ``score_candidates``, also score the reconstructions with each of them."""
        if not self.selects_scoring():
            return super().validation_step(batch, *args, **kwargs)
        self.check_finite_images(batch)
        output = self.model.reconstruct(batch.image)
        batch = batch.update(pred_score=output.pred_score, anomaly_map=output.anomaly_map)
        self.best_epoch.update(batch.pred_score, batch.gt_label, batch.anomaly_map, batch.gt_mask)
        for reading, scoring in zip(self.candidate_readings, self.score_candidates, strict=True):
            anomaly_map = self.model.error_map(output.image, output.reconstruction, scoring)
            scores = self.model.image_score(anomaly_map, output.image, scoring)
            reading.update(scores, batch.gt_label, anomaly_map, batch.gt_mask)
        return batch

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self.swap_averaged()
        for reading in self.candidate_readings:
            reading.reset()

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()  # the epoch selection keeps the weights validated: the averaged ones
        self.swap_averaged()

    def on_label_free_validation(self, metrics: dict[str, float]) -> None:
        """Keep this epoch's weights (and best scoring) if it is the best so far on the label-free validation set."""
        if not self.select_epoch:
            return
        scoring = None
        if self.selects_scoring():
            readings = [reading.compute() for reading in self.candidate_readings]
            for index, reading in enumerate(readings):
                if "selection" in reading:
                    self.log(f"val_selection_candidate{index}", reading["selection"])
            best = max(range(len(readings)), key=lambda index: readings[index].get("selection", float("-inf")))
            if readings[best]:
                metrics, scoring = readings[best], self.score_candidates[best]
        if self.current_epoch < self.select_from_epoch:
            return
        if self.best_epoch.consider(metrics, self.current_epoch, self.model):
            self.selected_scoring = scoring
            chosen = "" if scoring is None else f" scored by {scoring}"
            epoch = self.current_epoch
            logger.info("ProxyAno: epoch %d%s is the best on validation so far (%s)", epoch, chosen, metrics)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the epoch selection and the scoring in the checkpoint (a resumed fit selects the same epoch)."""
        selected = None if self.selected_scoring is None else self.selected_scoring._asdict()
        checkpoint[SELECTION_KEY] = self.best_epoch.state_dict() | {"scoring": selected}
        checkpoint[SCORING_KEY] = self.model.scoring._asdict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if SELECTION_KEY in checkpoint:
            self.best_epoch.load_state_dict(checkpoint[SELECTION_KEY])
            selected = checkpoint[SELECTION_KEY].get("scoring")
            self.selected_scoring = (
                None if selected is None else _scoring(selected, self.model.error_blur_sigma, self.model.score_topk)
            )
        if SCORING_KEY in checkpoint:
            self.model.set_scoring(
                _scoring(checkpoint[SCORING_KEY], self.model.error_blur_sigma, self.model.score_topk)
            )

    def on_train_end(self) -> None:
        """Put back the best validation epoch's weights and scoring; save them where the last checkpoint went.

        Without a kept epoch, the averaged weights (``weight_averaging``) replace the last trained ones.
        """
        epoch = self.best_epoch.restore(self.model)
        if epoch is None:
            if self.averaged is not None:
                self.model.load_state_dict(self.averaged.state_dict())
            return
        if self.selected_scoring is not None:
            self.model.set_scoring(self.selected_scoring)
        logger.info(
            "ProxyAno: restored the weights of epoch %d (best label-free validation score), scoring %s",
            epoch,
            self.model.scoring,
        )
        callback = self.trainer.checkpoint_callback
        path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        if path:
            self.trainer.save_checkpoint(path)

    def optimizer(self) -> torch.optim.Optimizer:
        """One Adam for both networks and the teacher's (also used by benchmarks/proxyano_sweep.py)."""
        teacher = () if self.teacher is None else self.teacher.parameters()
        return torch.optim.Adam(chain(self.model.parameters(), teacher), lr=self.learning_rate)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig | torch.optim.Optimizer:
        optimizer = self.optimizer()
        if self.lr_schedule == "constant":
            return optimizer
        epochs = self.trainer.max_epochs
        if epochs is None or epochs < 1:
            msg = f"lr_schedule={self.lr_schedule!r} decays over trainer.max_epochs; set it (got {epochs})"
            raise ValueError(msg)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.lr_scheduler(optimizer, epochs)}}

    def lr_scheduler(self, optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
        """The per-epoch schedule of ``lr_schedule`` over ``epochs`` (also used by benchmarks/proxyano_sweep.py)."""
        if self.lr_schedule == "constant":
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs, eta_min=COSINE_FLOOR * self.learning_rate)


def _scoring(candidate: dict[str, Any], error_blur_sigma: float = 0.0, topk: float = 0.01) -> Scoring:
    """A checked :class:`Scoring` from ``{error, map_sigma[, relative, error_blur_sigma, topk]}`` (a score candidate
    or a checkpoint's); one without ``error_blur_sigma`` or ``topk`` keeps the model's (the arguments), as
    candidates and checkpoints did before scorings had them.
    """
    if not isinstance(candidate, dict) or not {"error", "map_sigma"} <= set(candidate) <= set(Scoring._fields):
        msg = (
            "a score candidate is a mapping of error, map_sigma and optionally relative, error_blur_sigma and topk, "
            f"got {candidate!r}"
        )
        raise ValueError(msg)
    if not isinstance(candidate.get("relative", False), bool):
        msg = f"a score candidate's relative is true or false, got {candidate['relative']!r}"
        raise ValueError(msg)
    scoring = Scoring(
        str(candidate["error"]),
        float(candidate["map_sigma"]),
        candidate.get("relative", False),
        float(candidate.get("error_blur_sigma", error_blur_sigma)),
        candidate.get("topk", topk),
    )
    scoring.check()
    return scoring


def _check_image_size(image_size: int, widths: Sequence[int], space_to_depth: int) -> None:
    stride = 2 ** (len(widths) - 1) * check_space_to_depth(space_to_depth)
    if image_size < stride or image_size % stride:
        msg = (
            f"image_size must be a positive multiple of {stride} for {len(widths)} levels and "
            f"space_to_depth={space_to_depth}, got {image_size}"
        )
        raise ValueError(msg)


def _teacher_network(network: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The teacher's network arguments: ``network`` with ``changes`` (``distill_from``), checked."""
    if not isinstance(changes, dict) or not changes or not set(changes) <= set(TEACHER_ARGUMENTS):
        msg = (
            f"distill_from changes some of {', '.join(TEACHER_ARGUMENTS)} (the teacher's architecture), got {changes!r}"
        )
        raise ValueError(msg)
    teacher = network | changes
    _check_image_size(teacher["image_size"], teacher["widths"], teacher["space_to_depth"])
    return teacher
