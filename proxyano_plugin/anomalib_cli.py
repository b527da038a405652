"""What the plugin adds to ``anomalib``'s own command line: a proxy error as one line, not 170.

jsonargparse builds the model inside the ``AnomalibModule | None`` union of ``--model``. Its union branch
catches any ``Exception`` raised by ``ProxyAno.__init__`` and re-raises ``ValueError: Does not validate
against any of the Union subtypes``, with our message indented in the middle and the cause chained to the
``NoneType`` branch's error instead; anomalib's rich traceback then prints two tracebacks around it.
Errors at parse time (a mistyped ``int``, or a typed ``proxy`` argument) are wrapped the same way, so
validating earlier would not help. An instantiator registered on anomalib's parser (public jsonargparse API)
builds ProxyAno itself and turns a :class:`~proxyano_plugin.proxies.ProxyError` (the user's input, never a
bug) into ``error: ProxyAno: <message>`` on stderr and exit code 2, as for jsonargparse's own usage errors.

:func:`install` is called by :mod:`proxyano_plugin.autoload` when the running program is ``anomalib``.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, TypeVar

from proxyano_plugin.proxies import ProxyError

__all__ = ["EXIT_USAGE", "build_or_exit", "install"]

EXIT_USAGE = 2
_T = TypeVar("_T")
_MARK = "_proxyano_reports_proxy_errors"


def build_or_exit(class_type: type[_T], *args: Any, **kwargs: Any) -> _T:
    """``class_type(*args, **kwargs)``; a :class:`ProxyError` ends the program with its one line instead.

    ``SystemExit`` is a ``BaseException``, which jsonargparse's union handling lets through unwrapped.
    """
    try:
        return class_type(*args, **kwargs)
    except ProxyError as error:
        print(f"error: {class_type.__name__}: {error}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USAGE) from error


def install() -> bool:
    """Register :func:`build_or_exit` for ProxyAno (and subclasses) on every ``AnomalibCLI`` parser.

    Idempotent. Returns False (and changes nothing) where anomalib's CLI or jsonargparse lacks the hooks,
    so that an incompatible version keeps its long traceback rather than breaking.
    """
    try:
        from anomalib.cli.cli import AnomalibCLI
    except ImportError:
        return False
    hook = getattr(AnomalibCLI, "before_instantiate_classes", None)
    if hook is None:
        return False
    if getattr(hook, _MARK, False):
        return True

    from proxyano_plugin.models.proxyano import ProxyAno

    @functools.wraps(hook)
    def before_instantiate_classes(self: AnomalibCLI) -> None:
        add_instantiator = getattr(self.parser, "add_instantiator", None)
        if add_instantiator is not None:
            add_instantiator(build_or_exit, ProxyAno, subclasses=True)
        hook(self)

    setattr(before_instantiate_classes, _MARK, True)
    AnomalibCLI.before_instantiate_classes = before_instantiate_classes
    return True
