"""Proxy registry: entry points of the group ``proxyano_plugin.proxies`` (name -> factory).

The built-ins register through the same group in this project's ``pyproject.toml``, so a third-party
package adds a proxy exactly as we do (see ``examples/custom_proxy``). Nothing is imported until asked for:
``create_proxy`` imports only the requested entry point; ``available_proxies`` and ``broken_proxies`` import
all of them so that they list only proxies that actually load.

One bad plugin never takes the others down: a plugin registering a built-in's name is ignored (the built-in
wins), a name two plugins register is left out (that name only), and a plugin whose import fails in any way,
``sys.exit()`` included, is listed as broken with the reason. Each case warns (:class:`ProxyLoadWarning`);
asking for such a name raises one error that says why.

For a notebook or a script, :func:`register_proxy` adds a proxy in-process (timm's ``register_model``
pattern). It lives only in that Python process: the ``anomalib`` CLI and ``proxyano-bench`` runs (each a
process of its own) see entry points only.
"""

from __future__ import annotations

import difflib
import inspect
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

from .base import (
    DuplicateProxyError,
    ProxyArgumentError,
    ProxyError,
    ProxyExtractor,
    ProxyLoadError,
    ProxyLoadWarning,
    ProxyValueError,
    UnknownProxyError,
)

__all__ = [
    "BUILT_IN_DISTRIBUTION",
    "ENTRY_POINT_GROUP",
    "available_proxies",
    "broken_proxies",
    "create_proxy",
    "register_proxy",
]

ENTRY_POINT_GROUP = "proxyano_plugin.proxies"
# The distribution whose entry points are the built-ins; they take precedence over any plugin's.
BUILT_IN_DISTRIBUTION = "proxyano-plugin"


Factory = TypeVar("Factory", bound=Callable[..., Any])


@dataclass(frozen=True)
class _InProcess:
    """A proxy added by :func:`register_proxy`, shaped like the entry point the registry otherwise handles."""

    name: str
    factory: Callable[..., Any]
    dist: None = None

    @property
    def value(self) -> str:
        return f"{self.factory.__module__}:{self.factory.__qualname__}"

    def load(self) -> Callable[..., Any]:
        return self.factory


_IN_PROCESS: dict[str, _InProcess] = {}


def register_proxy(name: str) -> Callable[[Factory], Factory]:
    """Class or function decorator registering a proxy factory under ``name`` in this process.

    Raises :class:`DuplicateProxyError` if an installed distribution (a built-in or a plugin) already
    registers ``name``; registering a name again in the same process replaces the earlier factory with a
    :class:`ProxyLoadWarning` (a notebook cell run twice).

    Example::

        @register_proxy("median")
        class MedianProxy(PerImageProxy): ...

        ProxyAno(proxy="median")
    """
    if not isinstance(name, str) or not name:
        msg = f"register_proxy takes a non-empty proxy name, got {name!r}"
        raise TypeError(msg)

    def register(factory: Factory) -> Factory:
        if not callable(factory):
            msg = f"register_proxy({name!r}) decorates a class or function, got {factory!r}"
            raise TypeError(msg)
        installed = _registered().get(name)
        if installed:
            providers = " and ".join(sorted(_provider(entry) for entry in installed))
            msg = f"proxy name {name!r} is already registered by {providers}; pick another name"
            raise DuplicateProxyError(msg)
        if name in _IN_PROCESS:
            warnings.warn(
                f"proxy {name!r} was registered in this process before ({_IN_PROCESS[name].value}); replacing it",
                ProxyLoadWarning,
                stacklevel=2,
            )
        _IN_PROCESS[name] = _InProcess(name, factory)
        return factory

    return register


def available_proxies() -> dict[str, str]:
    """Name -> provider ("distribution version") of every registered proxy that can be used.

    The others are left out with a :class:`ProxyLoadWarning` each (:func:`broken_proxies` lists them with
    the reason), and a plugin overridden by a built-in of the same name is warned about.
    """
    found, broken, notes = _survey()
    for note in notes:
        warnings.warn(note, ProxyLoadWarning, stacklevel=2)
    for reason in broken.values():
        warnings.warn(f"{reason}; leaving it out", ProxyLoadWarning, stacklevel=2)
    return found


def broken_proxies() -> dict[str, str]:
    """Name -> reason of every registered name that cannot be used: its import fails (whatever it raises),
    its target is not callable, or two plugins register it. No warnings: this is the listing of them."""
    return _survey()[1]


def create_proxy(name: str, **kwargs: Any) -> ProxyExtractor:
    """Build the registered proxy ``name`` with ``kwargs``, importing only that proxy's module.

    Raises (all :class:`ProxyError`, one line each) :class:`UnknownProxyError` (listing the available
    names), :class:`DuplicateProxyError` (naming both plugins), :class:`ProxyLoadError` (import failed or
    the factory did not return a :class:`ProxyExtractor`), :class:`ProxyArgumentError` (a keyword the
    factory does not accept, naming the accepted ones) or :class:`ProxyValueError` (a value the factory
    refused). A plugin registering a built-in's name only warns: the built-in is built.
    """
    registration = _names().get(name)
    if registration is None:
        raise UnknownProxyError(_unknown_message(name))
    for note in registration.notes(name):
        warnings.warn(note, ProxyLoadWarning, stacklevel=2)
    entry = registration.usable(name)
    factory = _load(name, entry)
    _check_arguments(name, factory, kwargs)
    try:
        proxy = factory(**kwargs)
    except ValueError as error:
        if isinstance(error, ProxyError):
            raise
        msg = f"proxy {name!r}: {_one_line(str(error))}"
        raise ProxyValueError(msg) from error
    if not isinstance(proxy, ProxyExtractor):
        msg = (
            f"proxy {name!r} ({_provider(entry)}) built a {type(proxy).__name__}, which is not a ProxyExtractor "
            "(needs name, cache_key and __call__)"
        )
        raise ProxyLoadError(msg)
    return proxy


@dataclass(frozen=True)
class _Registration:
    """What one name resolves to: a built-in (plugins of the same name ignored), a single plugin, or two or
    more plugins (then nothing: which one a user meant is unknowable)."""

    entry: EntryPoint | _InProcess | None
    built_in: bool = False
    # Plugins not used: overridden by the built-in, or (entry None) clashing with each other.
    others: tuple[EntryPoint, ...] = ()

    def usable(self, name: str) -> EntryPoint | _InProcess:
        """The entry point to load, or :class:`DuplicateProxyError` naming the plugins that clash."""
        if self.entry is None:
            providers = " and ".join(sorted(f"{_provider(entry)} ({entry.value})" for entry in self.others))
            msg = f"proxy name {name!r} is registered by {providers}; uninstall one of them"
            raise DuplicateProxyError(msg)
        return self.entry

    def notes(self, name: str) -> list[str]:
        """Warnings for plugins that a built-in of the same name overrides."""
        if self.entry is None or not self.built_in:
            return []
        return [
            f"proxy {name!r} of {_provider(entry)} ({entry.value}) is ignored: {name!r} is a built-in proxy of "
            f"{_provider(self.entry)}, which takes precedence; rename that plugin's entry point"
            for entry in self.others
        ]


def _survey() -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Import every registered proxy: (name -> provider of the usable ones, name -> why not, warnings)."""
    found: dict[str, str] = {}
    broken: dict[str, str] = {}
    notes: list[str] = []
    for name, registration in sorted(_names().items()):
        notes.extend(registration.notes(name))
        try:
            entry = registration.usable(name)
            _load(name, entry)
        except (DuplicateProxyError, ProxyLoadError) as error:
            broken[name] = str(error)
            continue
        found[name] = _provider(entry)
    return found, broken, notes


def _names() -> dict[str, _Registration]:
    """Every registered name, resolved: built-ins first, then a plugin's name if no other plugin has it."""
    names = {}
    for name, candidates in _registered().items():
        built_ins = [entry for entry in candidates if _is_built_in(entry)]
        plugins = tuple(entry for entry in candidates if not _is_built_in(entry))
        if built_ins:  # two copies of proxyano-plugin on the path: the first is the one ``import`` finds
            names[name] = _Registration(built_ins[0], built_in=True, others=plugins)
        elif len(plugins) == 1:
            names[name] = _Registration(plugins[0])
        else:
            names[name] = _Registration(None, others=plugins)
    for name, entry in _IN_PROCESS.items():
        names.setdefault(name, _Registration(entry))  # an installed name wins (it was not there at registration)
    return names


def _registered() -> dict[str, list[EntryPoint]]:
    """Entry points by name; one distribution seen twice on the path (same target) counts once."""
    by_name: dict[str, list[EntryPoint]] = {}
    for entry in _entry_points():
        same = by_name.setdefault(entry.name, [])
        if not any(other.value == entry.value and _provider(other) == _provider(entry) for other in same):
            same.append(entry)
    return by_name


def _entry_points() -> list[EntryPoint]:
    """The group's entry points, in path order (a seam for tests)."""
    return list(entry_points(group=ENTRY_POINT_GROUP))


def _is_built_in(entry: EntryPoint) -> bool:
    dist = entry.dist
    return dist is not None and re.sub(r"[-_.]+", "-", dist.name).lower() == BUILT_IN_DISTRIBUTION


def _provider(entry: EntryPoint | _InProcess) -> str:
    if isinstance(entry, _InProcess):
        return "register_proxy in this process"
    dist = entry.dist
    return f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"


def _load(name: str, entry: EntryPoint | _InProcess) -> Any:
    try:
        factory = entry.load()
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # a plugin's import may do anything, sys.exit() too: report it, never stop
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        msg = f"proxy {name!r} from {_provider(entry)} failed to import ({entry.value}): {_one_line(reason)}"
        raise ProxyLoadError(msg) from error
    if not callable(factory):
        msg = f"proxy {name!r} from {_provider(entry)} points at {entry.value}, which is not callable"
        raise ProxyLoadError(msg)
    return factory


def _unknown_message(name: str) -> str:
    """``unknown proxy 'x'``, a close match if any, and what can be used instead (imports every proxy)."""
    found, broken, _ = _survey()
    close = difflib.get_close_matches(name, list(found), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    known = ", ".join(found) or "none (is proxyano-plugin installed?)"
    unusable = f"; broken: {', '.join(broken)} (see proxyano_plugin.proxies.broken_proxies())" if broken else ""
    return f"unknown proxy {name!r}{hint}; available: {known}{unusable}"


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
        named = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), accepted, n=1)
            named.append(f"{key} (did you mean {close[0]!r}?)" if close else str(key))
        accepts = ", ".join(accepted) or "none"
        msg = f"proxy {name!r} got unexpected argument(s) {', '.join(named)}; it accepts: {accepts}"
        raise ProxyArgumentError(msg)


def _one_line(text: str) -> str:
    return " ".join(text.split())
