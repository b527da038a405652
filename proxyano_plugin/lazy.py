"""Lazy module attributes, so light imports (the proxy registry, the version) never pull in torch or anomalib."""

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(module_name: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """Build a module ``__getattr__`` importing ``exports[name]`` (a module path) on first access."""

    def __getattr__(name: str) -> Any:  # noqa: N807  (module-level __getattr__ protocol)
        if name not in exports:
            msg = f"module {module_name!r} has no attribute {name!r}"
            raise AttributeError(msg)
        module = import_module(module_name)
        value = getattr(import_module(exports[name], module_name), name)
        setattr(module, name, value)
        return value

    return __getattr__
