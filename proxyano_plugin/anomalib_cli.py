"""What the plugin adds to ``anomalib``'s own command line: an argument or checkpoint error as one line, not 170.

jsonargparse builds the model inside the ``AnomalibModule | None`` union of ``--model``. Its union branch
catches any ``Exception`` raised by ``ProxyAno.__init__`` and re-raises ``ValueError: Does not validate
against any of the Union subtypes``, with our message indented in the middle and the cause chained to the
``NoneType`` branch's error instead; anomalib's rich traceback then prints two tracebacks around it.
Errors at parse time (a mistyped ``int``, or a typed ``proxy`` argument) are wrapped the same way, so
validating earlier would not help. An instantiator registered on anomalib's parser (public jsonargparse API)
builds the plugin's models itself and turns the ``ValueError`` of their argument checks (a
:class:`~proxyano_plugin.proxies.ProxyError` among them: the user's input, never a bug) into
``error: <Model>: <message>`` on stderr and exit code 2, as for jsonargparse's own usage errors.

A ``--ckpt_path`` given with one of this package's models is checked the same way (see
:mod:`proxyano_plugin.models.checkpoints`): the file before anything is built (exists, is a checkpoint,
was written by this model class, else which one and the ``--model`` to pass), and once the model is built,
before Lightning loads into it, that its weights fit (else the ``--model.*`` options that differ). ``export``
builds its model from the checkpoint's own hyper-parameters, so only the file is checked there.

:func:`install` is called by :mod:`proxyano_plugin.autoload` when the running program is ``anomalib``.
"""

from __future__ import annotations

import functools
import importlib
import sys
from typing import Any, NoReturn, TypeVar

from proxyano_plugin.proxies import ProxyError

__all__ = ["EXIT_USAGE", "build_or_exit", "check_ckpt_path", "check_loaded_model", "install"]

EXIT_USAGE = 2
_T = TypeVar("_T")
_MARK = "_proxyano_reports_proxy_errors"
# Subcommands that load ``ckpt_path`` into the model built from the command line (export rebuilds it).
_LOADS_INTO_BUILT_MODEL = frozenset({"fit", "validate", "test", "train", "predict"})
_CHECKPOINT = "_proxyano_checkpoint"


def build_or_exit(class_type: type[_T], *args: Any, **kwargs: Any) -> _T:
    """``class_type(*args, **kwargs)``; a ``ValueError`` or :class:`ProxyError` ends the program with its line.

    The plugin's models check their arguments in ``__init__`` and raise ``ValueError`` (a
    :class:`ProxyError` among them) naming the argument and what to pass: the user's input, never a bug, so
    no traceback. ``SystemExit`` is a ``BaseException``, which jsonargparse's union handling lets through
    unwrapped. Other exceptions keep their type and traceback.
    """
    try:
        return class_type(*args, **kwargs)
    except (ProxyError, ValueError) as error:
        print(f"error: {class_type.__name__}: {error}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USAGE) from error


def _exit(model_name: str, error: Exception) -> NoReturn:
    print(f"error: {model_name}: {error}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USAGE) from error


def _our_model_class(config: Any) -> type | None:
    """The class ``--model`` names when it is one of this package's models (or a subclass), else None."""
    from proxyano_plugin.models.autoencoder import Autoencoder
    from proxyano_plugin.models.fanogan import FAnoGAN
    from proxyano_plugin.models.patchcore import PatchcoreLite0
    from proxyano_plugin.models.proxyano import ProxyAno

    class_path = getattr(config, "class_path", None) if config is not None else None
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None  # jsonargparse reports it
    ours = (ProxyAno, Autoencoder, FAnoGAN, PatchcoreLite0)
    return cls if isinstance(cls, type) and issubclass(cls, ours) else None


def check_ckpt_path(subcommand: str, config: Any) -> tuple[str, dict[str, Any]] | None:
    """Check ``config.ckpt_path`` for this package's ``--model``; exit with one line if it cannot serve.

    Returns ``(path, checkpoint)`` for :func:`check_loaded_model` where the subcommand loads the weights into
    the model built from the command line; ``None`` where there is nothing more to check.
    """
    from proxyano_plugin.models.checkpoints import CheckpointError, check_checkpoint, checkable

    path = config.get("ckpt_path") if hasattr(config, "get") else None
    model_class = _our_model_class(config.get("model")) if checkable(path) else None
    if model_class is None:
        return None
    try:
        checkpoint = check_checkpoint(path, model_class, "cli")
    except CheckpointError as error:
        _exit(model_class.__name__, error)
    return (str(path), checkpoint) if subcommand in _LOADS_INTO_BUILT_MODEL else None


def check_loaded_model(model: Any, path: str, checkpoint: dict[str, Any]) -> None:
    """Exit with one line if the checkpoint's weights do not fit the built ``model``; warn if settings differ."""
    from proxyano_plugin.models.checkpoints import CheckpointError, check_weights_fit, warn_differing

    name = type(model).__name__
    try:
        differing = check_weights_fit(path, checkpoint, model, dict(model.hparams), "cli")
    except CheckpointError as error:
        _exit(name, error)
    warn_differing(path, name, differing, "cli")


def install() -> bool:
    """Register :func:`build_or_exit` for ProxyAno (and subclasses) on every ``AnomalibCLI`` parser, and the
    ``--ckpt_path`` checks of :func:`check_ckpt_path` and :func:`check_loaded_model`.

    Idempotent. Returns False (and changes nothing) where anomalib's CLI or jsonargparse lacks the hooks,
    so that an incompatible version keeps its long traceback rather than breaking.
    """
    try:
        from anomalib.cli.cli import AnomalibCLI
    except ImportError:
        return False
    hook = getattr(AnomalibCLI, "before_instantiate_classes", None)
    instantiate = getattr(AnomalibCLI, "instantiate_classes", None)
    if hook is None or instantiate is None:
        return False
    if getattr(hook, _MARK, False):
        return True

    from proxyano_plugin.models.autoencoder import Autoencoder
    from proxyano_plugin.models.fanogan import FAnoGAN
    from proxyano_plugin.models.patchcore import PatchcoreLite0
    from proxyano_plugin.models.proxyano import ProxyAno

    @functools.wraps(hook)
    def before_instantiate_classes(self: AnomalibCLI) -> None:
        add_instantiator = getattr(self.parser, "add_instantiator", None)
        if add_instantiator is not None:
            for model_class in (ProxyAno, Autoencoder, FAnoGAN, PatchcoreLite0):
                add_instantiator(build_or_exit, model_class, subclasses=True)
        hook(self)
        subcommand = self.config.get("subcommand")
        if subcommand is not None:
            setattr(self, _CHECKPOINT, check_ckpt_path(subcommand, self.config.get(subcommand)))

    @functools.wraps(instantiate)
    def instantiate_classes(self: AnomalibCLI) -> None:
        instantiate(self)
        pending = getattr(self, _CHECKPOINT, None)
        model = getattr(self, "model", None)
        if pending is not None and model is not None:
            check_loaded_model(model, *pending)
        setattr(self, _CHECKPOINT, None)  # the checkpoint's tensors are not kept alive for the whole run

    setattr(before_instantiate_classes, _MARK, True)
    AnomalibCLI.before_instantiate_classes = before_instantiate_classes
    AnomalibCLI.instantiate_classes = instantiate_classes
    return True
