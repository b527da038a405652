"""Proxy registry: entry points of the group ``proxyano_plugin.proxies`` (name -> factory).

The built-ins register through the same group in this project's ``pyproject.toml``, so a third-party
package adds a proxy exactly as we do (see ``examples/custom_proxy``). Nothing is imported until asked for:
``create_proxy`` imports only the requested entry point; ``available_proxies`` imports all of them so that
it lists only proxies that actually load.
"""

from __future__ import annotations

import inspect
import warnings
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .base import (
    DuplicateProxyError,
    ProxyArgumentError,
    ProxyExtractor,
    ProxyLoadError,
    ProxyLoadWarning,
    UnknownProxyError,
)

__all__ = ["ENTRY_POINT_GROUP", "available_proxies", "create_proxy"]

ENTRY_POINT_GROUP = "proxyano_plugin.proxies"


def available_proxies() -> dict[str, str]:
    """Name -> provider ("distribution version") of every registered proxy that imports.

    A proxy that fails to import is left out with a :class:`ProxyLoadWarning` naming it. Raises
    :class:`DuplicateProxyError` if two distributions register the same name.
    """
    found = {}
    for name, candidates in sorted(_registered().items()):
        entry = _single(name, candidates)
        try:
            _load(name, entry)
        except ProxyLoadError as error:
            warnings.warn(f"{error}; skipping it", ProxyLoadWarning, stacklevel=2)
            continue
        found[name] = _provider(entry)
    return found


def create_proxy(name: str, **kwargs: Any) -> ProxyExtractor:
    """Build the registered proxy ``name`` with ``kwargs``, importing only that proxy's module.

    Raises :class:`UnknownProxyError` (listing the registered names), :class:`DuplicateProxyError`,
    :class:`ProxyLoadError` (import failed or the factory did not return a :class:`ProxyExtractor`), or
    :class:`ProxyArgumentError` (a keyword the factory does not accept, naming the accepted ones).
    """
    registered = _registered()
    if name not in registered:
        known = ", ".join(sorted(registered)) or "none (is proxyano-plugin installed?)"
        msg = f"unknown proxy {name!r}; available: {known}"
        raise UnknownProxyError(msg)
    entry = _single(name, registered[name])
    factory = _load(name, entry)
    _check_arguments(name, factory, kwargs)
    proxy = factory(**kwargs)
    if not isinstance(proxy, ProxyExtractor):
        msg = (
            f"proxy {name!r} ({_provider(entry)}) built a {type(proxy).__name__}, which is not a ProxyExtractor "
            "(needs name, cache_key and __call__)"
        )
        raise ProxyLoadError(msg)
    return proxy


def _registered() -> dict[str, list[EntryPoint]]:
    """Entry points by name; one distribution seen twice on the path (same target) counts once."""
    by_name: dict[str, list[EntryPoint]] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        same = by_name.setdefault(entry.name, [])
        if not any(other.value == entry.value and _provider(other) == _provider(entry) for other in same):
            same.append(entry)
    return by_name


def _single(name: str, candidates: list[EntryPoint]) -> EntryPoint:
    if len(candidates) > 1:
        providers = " and ".join(sorted(f"{_provider(entry)} ({entry.value})" for entry in candidates))
        msg = f"proxy name {name!r} is registered by {providers}; uninstall one of them"
        raise DuplicateProxyError(msg)
    return candidates[0]


def _provider(entry: EntryPoint) -> str:
    dist = entry.dist
    return f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"


def _load(name: str, entry: EntryPoint) -> Any:
    try:
        factory = entry.load()
    except Exception as error:  # any import-time failure of a plugin is reported, not fatal
        reason = " ".join(f"{type(error).__name__}: {error}".split())  # one line, whatever the error says
        msg = f"proxy {name!r} from {_provider(entry)} failed to import ({entry.value}): {reason}"
        raise ProxyLoadError(msg) from error
    if not callable(factory):
        msg = f"proxy {name!r} from {_provider(entry)} points at {entry.value}, which is not callable"
        raise ProxyLoadError(msg)
    return factory


def _check_arguments(name: str, factory: Any, kwargs: dict[str, Any]) -> None:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no introspectable signature: let the call itself complain
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [p for p, spec in parameters.items() if spec.kind in (spec.POSITIONAL_OR_KEYWORD, spec.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        accepts = ", ".join(accepted) or "none"
        msg = f"proxy {name!r} got unexpected argument(s) {', '.join(unknown)}; it accepts: {accepts}"
        raise ProxyArgumentError(msg)
