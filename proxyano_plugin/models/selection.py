"""Label-free epoch selection: keep the weights of the epoch that scored best on a synthetic-lesion validation set.

Reconstruction models on brain MRI reach their best detection early and then lose it as they learn to
reproduce everything, lesions included. A validation set built from training normals with painted lesions
(``val_split_mode="lesions"`` of ``SplitCSV`` or ``BrainMRIDemo``) can see that without touching the test
split; this keeps the best epoch's weights in memory (the networks are small) and puts them back when
training ends, so testing, the saved checkpoint and export all use them.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.functional.classification import binary_auroc


class BestEpoch:
    """Accumulates one validation epoch's raw scores and keeps the best epoch's ``state_dict``.

    The selection score is the mean of image AUROC and (where masks exist) pixel AUROC on raw model outputs,
    before anomalib's post-processor, whose normalisation would tie scores outside the validation range.
    """

    def __init__(self) -> None:
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.best_metrics: dict[str, float] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.reset()

    def reset(self) -> None:
        self.scores: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.maps: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []

    def update(
        self, scores: torch.Tensor, labels: torch.Tensor, maps: torch.Tensor | None, masks: torch.Tensor | None
    ) -> None:
        self.scores.append(scores.detach().float().flatten().cpu())
        self.labels.append(labels.detach().int().flatten().cpu())
        if maps is not None and masks is not None:
            self.maps.append(maps.detach().float().reshape(masks.shape).cpu())
            self.masks.append(masks.detach().int().cpu())

    def compute(self) -> dict[str, float]:
        """``image_auroc``, ``pixel_auroc`` (where defined) and ``selection``, their mean; empty if undefined."""
        if not self.scores:
            return {}
        labels = torch.cat(self.labels)
        if labels.min() == labels.max():
            return {}
        metrics = {"image_auroc": binary_auroc(torch.cat(self.scores), labels).item()}
        if self.masks and int(torch.cat(self.masks).sum()) > 0:
            metrics["pixel_auroc"] = binary_auroc(
                torch.cat(self.maps).flatten(), torch.cat(self.masks).flatten()
            ).item()
        metrics["selection"] = sum(metrics.values()) / len(metrics)
        return metrics

    def consider(self, metrics: dict[str, float], epoch: int, model: nn.Module) -> bool:
        """Keep ``model``'s weights if ``metrics["selection"]`` is the best so far; return whether it was."""
        score = metrics["selection"]
        if self.best_score is not None and score <= self.best_score:
            return False
        self.best_score, self.best_epoch, self.best_metrics = score, epoch, dict(metrics)
        self.best_state = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
        return True

    def restore(self, model: nn.Module) -> int | None:
        """Load the best epoch's weights into ``model``; return that epoch (``None`` if none was kept)."""
        if self.best_state is None:
            return None
        model.load_state_dict(self.best_state)  # copies the values: the kept state stays untouched
        return self.best_epoch

    def state_dict(self) -> dict[str, object]:
        """The selection so far, for a training checkpoint (plain data: loads with ``weights_only=True``)."""
        return {
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Continue a selection from :meth:`state_dict` (a resumed fit keeps its best epoch so far)."""
        self.best_score = state["best_score"]  # type: ignore[assignment]
        self.best_epoch = state["best_epoch"]  # type: ignore[assignment]
        self.best_metrics = state["best_metrics"]  # type: ignore[assignment]
        self.best_state = state["best_state"]  # type: ignore[assignment]
