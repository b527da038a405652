"""Check a checkpoint before Lightning loads it, so that a wrong file gives one line saying what it is.

Lightning's own errors name neither the file nor the fix: random bytes end in torch's advice to load with
``weights_only=False`` (which runs whatever the file holds: never the answer to a bad file), an empty file
in a bare ``EOFError``, another model's checkpoint in hundreds of lines of missing keys, and our own
checkpoint trained with other settings in a shape mismatch. :func:`read_checkpoint` opens the file safely
(``weights_only=True``, with anomalib's allowlist) and says what is wrong with it; :func:`check_model_class`
tells from the hyper-parameters which model wrote it; :func:`check_weights_fit` compares its weights with a
built model and lists the hyper-parameters that differ. :class:`CheckedCheckpoint` gives
``load_from_checkpoint`` the same checks; ``anomalib test|predict|export|train --ckpt_path`` runs them
through :mod:`proxyano_plugin.anomalib_cli`. Messages come in two styles: ``"cli"`` suggests ``--model``
options, ``"python"`` keyword arguments.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "CheckedCheckpoint",
    "CheckpointError",
    "check_checkpoint",
    "check_model_class",
    "check_weights_fit",
    "read_checkpoint",
]

logger = logging.getLogger(__name__)

Style = Literal["cli", "python"]
# Arguments AnomalibModule keeps out of ``hyper_parameters`` (live modules, not data).
COMPONENT_ARGUMENTS = frozenset({"pre_processor", "post_processor", "evaluator", "visualizer"})
# ``ckpt_path`` values Lightning resolves itself (fit/validate/test), not file names.
SPECIAL_CKPT_PATHS = frozenset({"best", "last", "hpc", "registry"})
_SHOWN = 3  # example keys named in one message


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the file, says what it is and what to do."""


def checkable(path: object) -> bool:
    """Whether ``path`` is a local file name we can check (not a URL, a file object or ``"last"``)."""
    if not isinstance(path, str | os.PathLike):
        return False
    text = os.fspath(path)
    return bool(text) and "://" not in text and text not in SPECIAL_CKPT_PATHS


def read_checkpoint(
    path: str | os.PathLike[str], safe_globals: list[Any] | tuple[Any, ...] = (), weights_only: bool = True
) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU (memory-mapped where torch can), or raise :class:`CheckpointError`.

    Loads with ``weights_only=True`` (unless the caller asked otherwise) and anomalib's allowlist plus
    ``safe_globals``, exactly as anomalib's loaders do, so a file that passes here loads there too.
    """
    from anomalib.utils.serialization import anomalib_safe_globals

    path = Path(path)
    _check_file(path)
    with path.open("rb") as handle:
        head = handle.read(8)
    zipped = head.startswith(b"PK\x03\x04")
    if not zipped and not head.startswith(b"\x80"):  # neither torch.save's zip archive nor a legacy pickle
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: {_what_it_is(path, head)}")
    try:
        with anomalib_safe_globals(extra=list(safe_globals)):
            checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=zipped)
    except Exception as error:  # torch raises many types here (UnpicklingError, RuntimeError, EOFError, ...)
        raise CheckpointError(_unreadable(path, error)) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(_not_lightning(path, checkpoint))
    return checkpoint


def _check_file(path: Path) -> None:
    if path.is_dir():
        found = sorted(path.rglob("*.ckpt"))
        hint = f" ({len(found)} there, e.g. {found[0]})" if found else " (none is there)"
        raise CheckpointError(f"{path} is a folder: pass a checkpoint file, a .ckpt written by training{hint}")
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: check the path (relative paths start in the current folder)")
    if path.stat().st_size == 0:
        msg = (
            f"{path} is empty (0 bytes): its writer was interrupted or the disk was full; use another checkpoint "
            "(e.g. the last one of the run) or train again"
        )
        raise CheckpointError(msg)


def _what_it_is(path: Path, head: bytes) -> str:
    """A guess at what a file that is no checkpoint is, from its suffix and first bytes."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "it looks like an ONNX model (anomalib export writes those); pass the .ckpt written by training"
    if head.startswith(b"<?xml") or suffix in {".xml", ".bin"}:
        return "it looks like an OpenVINO model (anomalib export writes those); pass the .ckpt written by training"
    with path.open("rb") as handle:
        start = handle.read(200)
    try:
        first = start.decode("utf-8").strip().splitlines()[0][:60]
    except (UnicodeDecodeError, IndexError):
        return f"it starts with bytes {head.hex(' ')}, neither a zip archive (torch.save) nor a pickle"
    return f"it is a text file (starting {first!r}); pass the .ckpt written by training"


def _unreadable(path: Path, error: Exception) -> str:
    """Why torch could not load ``path``, without torch's advice to load it with ``weights_only=False``."""
    text = str(error)
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsafe:
        return (
            f"{path} is not a training checkpoint: it holds pickled Python objects (first: {unsafe.group(1)}), "
            "not only tensors and plain data as Lightning checkpoints of these models do (an exported "
            "--export_type torch model?); pass the .ckpt written by training, and never load such a file "
            "unless you trust whoever wrote it"
        )
    if "central directory" in text or isinstance(error, EOFError):
        return f"{path} is incomplete (cut off while being written?): use another checkpoint or train again"
    if "data.pkl" in text or "archive" in text:
        return f"{path} is a zip archive but not one written by torch.save: pass the .ckpt written by training"
    detail = re.search(r"WeightsUnpickler error: (.+)", text)
    why = detail.group(1).strip() if detail else (text.strip().splitlines() or [type(error).__name__])[0]
    return f"{path} is damaged or no PyTorch checkpoint ({type(error).__name__}: {why}): use another checkpoint"


def _not_lightning(path: Path, content: object) -> str:
    if isinstance(content, Mapping) and content and all(isinstance(v, torch.Tensor) for v in content.values()):
        example = next(iter(content))
        return (
            f"{path} holds a bare state_dict ({len(content)} tensors, e.g. {example!r}), not a Lightning checkpoint "
            "with hyper-parameters: build the model with its training arguments and call "
            "model.load_state_dict(torch.load(path))"
        )
    keys = ", ".join(map(str, list(content)[:6])) if isinstance(content, Mapping) else type(content).__name__
    return f"{path} is not a Lightning checkpoint (no 'state_dict'; it holds: {keys or 'nothing'})"


# ------------------------------------------------------------------------------------------------ classes


def hyper_parameters(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments a checkpoint was written with (Lightning's own ``_``-keys left out)."""
    stored = checkpoint.get("hyper_parameters") or {}
    return {key: value for key, value in dict(stored).items() if not str(key).startswith("_")}


def init_defaults(cls: type) -> dict[str, Any]:
    """Constructor arguments of ``cls`` that a checkpoint records, with their defaults (``inspect._empty``)."""
    try:
        parameters = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):
        return {}
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {
        p.name: p.default
        for p in parameters
        if p.name != "self" and p.kind not in kinds and p.name not in COMPONENT_ARGUMENTS
    }


def _model_classes() -> Iterator[type]:
    """Every imported ``AnomalibModule`` subclass: anomalib's models, this package's and any user's."""
    from anomalib.models import AnomalibModule

    import proxyano_plugin.models.autoencoder
    import proxyano_plugin.models.fanogan
    import proxyano_plugin.models.patchcore
    import proxyano_plugin.models.proxyano  # noqa: F401

    seen: set[type] = set()
    stack = [AnomalibModule]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                stack.append(sub)
                yield sub


def writer_of(hparams: Mapping[str, Any], checkpoint: Mapping[str, Any] | None = None) -> type | None:
    """The model class whose constructor takes every stored hyper-parameter and the fewest others."""
    class_path = (checkpoint or {}).get("hyper_parameters", {}).get("_class_path")
    if isinstance(class_path, str) and "." in class_path:
        module, _, name = class_path.rpartition(".")
        for cls in _model_classes():
            if cls.__module__ == module and cls.__name__ == name:
                return cls
    if not hparams:
        return None
    names = set(hparams)
    best: tuple[int, str, type] | None = None
    for cls in _model_classes():
        accepted = set(init_defaults(cls))
        if names <= accepted:
            candidate = (len(accepted - names), f"{cls.__module__}.{cls.__qualname__}", cls)
            best = candidate if best is None or candidate[:2] < best[:2] else best
    return best[2] if best else None


def check_model_class(
    path: str | os.PathLike[str], checkpoint: Mapping[str, Any], model_class: type, style: Style = "python"
) -> None:
    """Refuse a checkpoint whose hyper-parameters ``model_class`` does not take, naming the model that wrote it."""
    hparams = hyper_parameters(checkpoint)
    accepted = init_defaults(model_class)
    foreign = sorted(set(hparams) - set(accepted))
    if not hparams or not foreign:
        return
    writer = writer_of(hparams, checkpoint)
    name = model_class.__name__
    if writer is None:
        shown = ", ".join(f"{key}={hparams[key]!r}" for key in foreign[:_SHOWN])
        more = f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN else ""
        msg = (
            f"{path} holds hyper-parameters {name} does not take ({shown}{more}): it was written by another model, "
            f"or by another version of {name}"
        )
        raise CheckpointError(msg)
    changed = {key: value for key, value in hparams.items() if _differs(value, init_defaults(writer).get(key))}
    settings = ", ".join(f"{key}={value!r}" for key, value in changed.items())
    settings = f"{settings}, the other hyper-parameters at their defaults" if settings else "default hyper-parameters"
    if style == "cli":
        fix = "pass " + " ".join(["--model", _cli_name(writer), *_cli_options(changed)])
    else:
        fix = f"load it with {writer.__name__}.load_from_checkpoint"
    raise CheckpointError(f"{path} is a checkpoint of {writer.__name__} ({settings}), not of {name}: {fix}")


def _cli_name(cls: type) -> str:
    """How ``--model`` names ``cls``: the bare name for anomalib's and this package's models, else the full path."""
    bare = cls.__module__.startswith(("anomalib.", "proxyano_plugin."))
    return cls.__name__ if bare else f"{cls.__module__}.{cls.__qualname__}"


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists, so that a YAML-parsed list equals the tuple a default holds."""
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _differs(a: Any, b: Any) -> bool:
    return _plain(a) != _plain(b)


def _cli_value(value: Any) -> str:
    plain = _plain(value)
    text = json.dumps(plain) if isinstance(plain, list | dict) or plain is None else str(plain)
    return shlex.quote(text)


def _cli_options(values: Mapping[str, Any]) -> list[str]:
    return [f"--model.{key} {_cli_value(value)}" for key, value in values.items()]


def _python_arguments(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in values.items())


# ------------------------------------------------------------------------------------------------ weights


def _dynamic_buffers(model: nn.Module) -> set[str]:
    """State keys that anomalib resizes on load (``DynamicBufferMixin``, e.g. PatchCore's memory bank)."""
    from anomalib.models.components.base import DynamicBufferMixin

    keys = set()
    for prefix, module in model.named_modules():
        if isinstance(module, DynamicBufferMixin):
            keys |= {f"{prefix}.{name}" if prefix else name for name in module._buffers}
    return keys


def weight_problems(model: nn.Module, state_dict: Mapping[str, Any], strict: bool = True) -> list[str]:
    """What keeps ``state_dict`` from loading into ``model``: missing, unexpected and differently shaped tensors."""
    own = model.state_dict()
    resized = _dynamic_buffers(model)
    shapes = [
        f"{key} is {list(value.shape)} in the checkpoint, {list(own[key].shape)} in the model"
        for key, value in state_dict.items()
        if key in own and key not in resized and hasattr(value, "shape") and value.shape != own[key].shape
    ]
    problems = [f"size mismatch: {'; '.join(shapes[:_SHOWN])}"] if shapes else []
    if strict:
        missing = [key for key in own if key not in state_dict]
        unexpected = [key for key in state_dict if key not in own]
        for what, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                problems.append(f"{len(keys)} {what} key(s), e.g. {', '.join(keys[:_SHOWN])}")
    return problems


def _torch_mismatch(text: str) -> str:
    """torch's first size mismatch in the words of :func:`weight_problems`, or its last line."""
    found = re.search(r"size mismatch for (\S+): .*?torch.Size\((\[.*?\])\).*?torch.Size\((\[.*?\])\)", text)
    if found:
        return f"size mismatch: {found.group(1)} is {found.group(2)} in the checkpoint, {found.group(3)} in the model"
    return text.strip().splitlines()[-1].strip()


def check_weights_fit(
    path: str | os.PathLike[str],
    checkpoint: Mapping[str, Any],
    model: nn.Module,
    hparams: Mapping[str, Any],
    style: Style = "cli",
) -> dict[str, Any]:
    """Refuse weights that do not fit ``model`` (built with ``hparams``), listing the settings to change.

    Returns the stored hyper-parameters that differ from ``hparams`` when the weights fit anyway (e.g. a
    ``map_sigma`` given at test time), for the caller to warn about.
    """
    stored = hyper_parameters(checkpoint)
    differing = {key: value for key, value in stored.items() if key in hparams and _differs(value, hparams[key])}
    problems = weight_problems(model, checkpoint["state_dict"], strict=getattr(model, "strict_loading", True))
    if not problems:
        return differing
    name = type(model).__name__
    was = ", ".join(f"{key}={value!r}" for key, value in differing.items())
    if not differing:
        msg = (
            f"{path} does not fit this {name} ({'; '.join(problems)}) although its hyper-parameters match: it was "
            f"written by another version of {name}; retrain, or use the version that wrote it"
        )
    elif style == "cli":
        msg = (
            f"{path} was trained with {was} and does not fit this {name} ({problems[0]}): "
            f"pass {' '.join(_cli_options(differing))}"
        )
    else:
        msg = (
            f"{path} was trained with {was} and does not fit a {name} built with "
            f"{_python_arguments({key: hparams[key] for key in differing})} ({problems[0]}): drop those arguments"
        )
    raise CheckpointError(msg)


def check_checkpoint(
    path: str | os.PathLike[str], model_class: type, style: Style = "python", weights_only: bool = True
) -> dict[str, Any]:
    """Read ``path`` and check it holds a ``model_class`` checkpoint; return it (:class:`CheckpointError` if not)."""
    safe = getattr(model_class, "checkpoint_safe_globals", lambda: ())()
    checkpoint = read_checkpoint(path, safe, weights_only=weights_only)
    check_model_class(path, checkpoint, model_class, style)
    return checkpoint


def warn_differing(path: str | os.PathLike[str], name: str, differing: Mapping[str, Any], style: Style) -> None:
    """Say which stored hyper-parameters the built model does not share (the weights fit, the results differ)."""
    if not differing:
        return
    fix = " ".join(_cli_options(differing)) if style == "cli" else _python_arguments(differing)
    logger.warning(
        "%s: %s was trained with other settings than this model's (its weights fit); to use the checkpoint's: %s",
        name,
        path,
        fix,
    )


class CheckedCheckpoint:
    """Mixin (listed before ``AnomalibModule``): ``load_from_checkpoint`` checks the file first.

    A wrong file raises :class:`CheckpointError` naming it and what it is; arguments that make the weights
    not fit (``memory_size=...`` for a checkpoint trained with another) are named instead of a bare size
    mismatch.
    """

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        weights_only: bool = True,
        **kwargs: Any,
    ) -> Any:
        checkpoint = None
        if checkable(checkpoint_path):
            checkpoint = check_checkpoint(checkpoint_path, cls, "python", weights_only=weights_only is not False)
        try:
            return super().load_from_checkpoint(  # type: ignore[misc]
                checkpoint_path,
                map_location=map_location,
                hparams_file=hparams_file,
                strict=strict,
                weights_only=weights_only,
                **kwargs,
            )
        except RuntimeError as error:
            if checkpoint is None or "Error(s) in loading state_dict" not in str(error):
                raise
            stored = hyper_parameters(checkpoint)
            differing = {key: value for key, value in kwargs.items() if key in stored and _differs(value, stored[key])}
            if not differing:
                raise
            was = ", ".join(f"{key}={stored[key]!r}" for key in differing)
            detail = _torch_mismatch(str(error))
            msg = (
                f"{checkpoint_path} was trained with {was}; its weights do not fit a {cls.__name__} built with "
                f"{_python_arguments(differing)} ({detail}): drop those arguments"
            )
            raise CheckpointError(msg) from None
