"""Test-set metrics with anomalib's own metric classes, computed on the model's raw scores.

Why not the model's default ``Evaluator``: it sees scores after anomalib's post-processor, which min-max
normalises them with statistics of the validation set and clamps them to [0, 1]. Every test score beyond
the validation range becomes a tie at 0 or 1, which changes threshold-free metrics. And anomalib's AUROC and
AUPR (torchmetrics curves) pass scores outside [0, 1] through a sigmoid, which rounds raw scores above
about 15 to exactly 1.0 in float32: ties again. So the :class:`Collector` takes the raw predictions before
the post-processor runs (trainer callbacks run before the model's), and :func:`compute_metrics` maps them
into [0, 1] with one affine min-max over the whole test set (rank-preserving, so every metric below is
unchanged by it) before handing them to anomalib's ``AUROC``, ``AUPR``, ``F1Max`` and ``AUPRO``.

``pixel_dice_oracle`` is anomalib's ``F1Max`` over all test pixels: the Dice coefficient of the whole test
set at the best threshold, a threshold chosen with the ground truth (an oracle, hence the name).
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from proxyano_plugin.bench.per_image import ImageRow

IMAGE_METRICS = ("image_auroc", "image_aupr", "image_f1max")
PIXEL_METRICS = ("pixel_auroc", "pixel_aupro", "pixel_aupr", "pixel_dice_oracle")
METRICS = IMAGE_METRICS + PIXEL_METRICS


class Collector(Callback):
    """Keep the raw test predictions, a few examples for the gallery, and images for the timing.

    Pass it in the trainer's callbacks: those run before the model's own (post-processor included).
    """

    def __init__(self, examples: int, timing_batch: int) -> None:
        self.examples = examples
        self.timing_batch = timing_batch
        self.scores: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.maps: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        # Image paths of the scored images and of the mapped ones: DDP's sampler repeats a few images to
        # give every rank as many; the paths let the gathered test set drop the repeats.
        self.paths: list[str] = []
        self.map_paths: list[str] = []
        self.example_items: list[dict[str, torch.Tensor]] = []
        self.timing_images: list[torch.Tensor] = []
        self.metrics: dict[str, float | None] = {}
        self.metrics_s = 0.0  # part of the test time: sorting every test pixel, four times, costs seconds
        self.counts: dict[str, int] = {}
        # One row per test image (after the test epoch): what per_image/<run_id>.csv holds.
        self.per_image: list[ImageRow] = []

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        del trainer, pl_module, batch_idx, dataloader_idx
        result = outputs if getattr(outputs, "pred_score", None) is not None else batch
        if result.pred_score is None:
            msg = f"{type(result).__name__} of the test step has no pred_score; the model produced no image scores"
            raise RuntimeError(msg)
        scores = result.pred_score.detach().float().reshape(-1).cpu()
        labels = result.gt_label.detach().reshape(-1).int().cpu()
        self.scores.append(scores)
        self.labels.append(labels)
        paths = _paths(result, len(scores), len(self.paths))
        self.paths.extend(paths)
        maps = _maps(result.anomaly_map)
        if maps is not None and result.gt_mask is not None:
            if result.gt_mask.numel() != maps.numel():
                msg = f"anomaly_map {tuple(maps.shape)} and gt_mask {tuple(result.gt_mask.shape)} differ in size"
                raise RuntimeError(msg)
            self.maps.append(maps)
            self.masks.append(result.gt_mask.detach().reshape(maps.shape).int().cpu())
            self.map_paths.extend(paths)
        images = result.image.detach()
        if len(self.timing_images) < self.timing_batch:
            self.timing_images.extend(images[: self.timing_batch - len(self.timing_images)].cpu())
        self._keep_examples(images, maps, result.gt_mask, labels, scores)

    def _keep_examples(
        self,
        images: torch.Tensor,
        maps: torch.Tensor | None,
        masks: torch.Tensor | None,
        labels: torch.Tensor,
        scores: torch.Tensor,
    ) -> None:
        """Keep the first anomalous images (half the gallery, rounded up) and the first normal ones."""
        if len(self.example_items) >= self.examples:
            return
        wanted = {1: (self.examples + 1) // 2, 0: self.examples // 2}
        for index, label in enumerate(labels.tolist()):
            have = sum(int(item["gt_label"]) == label for item in self.example_items)
            if have >= wanted.get(label, 0):
                continue
            item = {"image": images[index].cpu(), "gt_label": labels[index], "pred_score": scores[index]}
            if maps is not None:
                item["anomaly_map"] = maps[index]
            if masks is not None:
                item["gt_mask"] = masks[index].reshape(images.shape[-2:]).cpu()
            self.example_items.append(item)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        del pl_module
        if trainer.world_size > 1:
            self._gather()
        if not self.scores:
            msg = "the test set is empty: check the datamodule's test split"
            raise RuntimeError(msg)
        keep = _first_occurrences(self.paths)
        scores, labels = torch.cat(self.scores)[keep], torch.cat(self.labels)[keep]
        paths = [path for path, kept in zip(self.paths, keep.tolist(), strict=True) if kept]
        maps = masks = None
        mask_pixels: dict[str, int] = {}
        if self.maps:
            keep = _first_occurrences(self.map_paths)
            maps, masks = torch.cat(self.maps)[keep], torch.cat(self.masks)[keep]
            map_paths = [path for path, kept in zip(self.map_paths, keep.tolist(), strict=True) if kept]
            mask_pixels = dict(zip(map_paths, (masks > 0).flatten(1).sum(1).tolist(), strict=True))
        self.per_image = [
            ImageRow(path, label, score, mask_pixels.get(path))
            for path, label, score in zip(paths, labels.tolist(), scores.tolist(), strict=True)
        ]
        self.counts = {
            "test_images": len(scores),
            "test_anomalous": int(labels.sum()),
            "test_with_masks": 0 if masks is None else len(masks),
        }
        start = time.perf_counter()
        self.metrics = compute_metrics(scores, labels, maps, masks)
        self.metrics_s = time.perf_counter() - start

    def _gather(self) -> None:
        """Under DDP every rank saw part of the test set; metrics need all of it."""
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        state = (self.scores, self.labels, self.maps, self.masks, self.paths, self.map_paths)
        torch.distributed.all_gather_object(gathered, state)
        self.scores, self.labels, self.maps, self.masks, self.paths, self.map_paths = (
            [item for part in gathered for item in part[field]] for field in range(len(state))
        )


def _paths(result: Any, count: int, offset: int) -> list[str]:
    """The batch's image paths, or unique placeholders when the batch has none (then nothing is dropped)."""
    paths = getattr(result, "image_path", None)
    if isinstance(paths, list | tuple) and len(paths) == count:
        return [str(path) for path in paths]
    return [f"#{offset + index}" for index in range(count)]


def _first_occurrences(paths: list[str]) -> torch.Tensor:
    seen: set[str] = set()
    keep = []
    for path in paths:
        keep.append(path not in seen)
        seen.add(path)
    return torch.tensor(keep, dtype=torch.bool)


def _maps(anomaly_map: torch.Tensor | None) -> torch.Tensor | None:
    """Anomaly maps as ``[N, H, W]`` float on the CPU."""
    if anomaly_map is None:
        return None
    maps = anomaly_map.detach().float().cpu()
    return maps.reshape(-1, *maps.shape[-2:])


def _unit_range(values: torch.Tensor) -> torch.Tensor:
    """One affine map of all values into [0, 1]: ranks (and so every metric here) are unchanged."""
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else torch.zeros_like(values)


def compute_metrics(
    scores: torch.Tensor,
    labels: torch.Tensor,
    maps: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
) -> dict[str, float | None]:
    """Image metrics, and pixel metrics where masks exist, with anomalib's metric classes.

    A metric that is undefined for the data (one class only, no masks) is ``None``, never a made-up number.
    """
    from anomalib.metrics import AUPR, AUPRO, AUROC, F1Max

    results: dict[str, float | None] = dict.fromkeys(METRICS)
    if not torch.isfinite(scores).all():
        msg = "the model produced non-finite anomaly scores (nan or inf)"
        raise ValueError(msg)
    if 0 < int(labels.sum()) < len(labels):
        batch = SimpleNamespace(pred_score=_unit_range(scores), gt_label=labels)
        for key, metric in zip(IMAGE_METRICS, (AUROC, AUPR, F1Max), strict=True):
            results[key] = _value(metric(fields=["pred_score", "gt_label"]), batch)
    if maps is not None and masks is not None and int(masks.sum()) > 0:
        if not torch.isfinite(maps).all():
            msg = "the model produced non-finite anomaly maps (nan or inf)"
            raise ValueError(msg)
        batch = SimpleNamespace(anomaly_map=_unit_range(maps), gt_mask=masks)
        fields = ["anomaly_map", "gt_mask"]
        for key, metric in zip(PIXEL_METRICS, (AUROC, AUPRO, AUPR, F1Max), strict=True):
            results[key] = _value(metric(fields=fields), batch)
    return results


def _value(metric: Any, batch: SimpleNamespace) -> float:
    metric.update(batch)
    return float(metric.compute())
