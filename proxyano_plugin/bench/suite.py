"""Load a benchmark suite (YAML): find it, apply ``--set`` overrides, then validate and expand it into runs.

The schema is :mod:`~proxyano_plugin.bench.spec`, the checks :mod:`~proxyano_plugin.bench.validation`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from proxyano_plugin.bench.spec import Suite, SuiteError
from proxyano_plugin.bench.validation import expand_env, validate_suite

SUITES_DIR = Path(__file__).parent / "suites"


def shipped_suites() -> list[str]:
    """Names of the suites that ship inside the package."""
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def find_suite(name_or_path: str) -> Path:
    """A suite file from a path or a shipped suite's name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = SUITES_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    msg = f"suite {name_or_path!r} is neither a file nor a shipped suite ({', '.join(shipped_suites())})"
    raise SuiteError(msg)


def load_suite(name_or_path: str, overrides: list[str] | None = None) -> Suite:
    """Read, override (``--set key=value``), expand environment variables, validate and expand a suite."""
    return validate_suite(read_suite(name_or_path, overrides))


def resolved_config(raw: dict[str, Any]) -> str:
    """The suite as it runs (overrides applied, environment variables expanded) as YAML: ``--print-config``."""
    return yaml.safe_dump(expand_env(raw), sort_keys=False, allow_unicode=True)


def read_suite(name_or_path: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """A suite's raw mapping with the ``--set`` overrides applied (not yet validated)."""
    path = find_suite(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        msg = f"{path}: not valid YAML ({error})"
        raise SuiteError(msg) from error
    if not isinstance(raw, dict):
        msg = f"{path}: a suite is a YAML mapping, got {type(raw).__name__}"
        raise SuiteError(msg)
    for override in overrides or []:
        apply_override(raw, override)
    raw.setdefault("name", path.stem)
    return raw


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply ``a.b.c=VALUE`` (VALUE parsed as YAML); list items are addressed by ``name`` or index."""
    key, sep, value = override.partition("=")
    if not sep or not key:
        msg = f"--set {override!r}: expected KEY=VALUE, e.g. datasets.brats.folder.root=/data/brats"
        raise SuiteError(msg)
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            node = _list_item(node, part, where)
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            msg = f"--set {key}: {where} is not a mapping or list"
            raise SuiteError(msg)
    if isinstance(node, list):
        msg = f"--set {key}: cannot replace a whole list item; set one of its keys"
        raise SuiteError(msg)
    if not isinstance(node, dict):
        msg = f"--set {key}: {'.'.join(parts[:-1])} is not a mapping"
        raise SuiteError(msg)
    node[parts[-1]] = yaml.safe_load(value)


def _list_item(items: list[Any], part: str, where: str) -> Any:
    for item in items:
        if isinstance(item, dict) and item.get("name") == part:
            return item
    if part.isdigit() and int(part) < len(items):
        return items[int(part)]
    names = [item.get("name") for item in items if isinstance(item, dict)]
    msg = f"--set {where}: no item named {part!r} (names: {', '.join(map(str, names))})"
    raise SuiteError(msg)
