"""Check a raw suite mapping and expand it into runs.

Everything that can be wrong with a suite is found here, before anything trains: a typo found after
two hours of training is two hours lost. Every error names the offending key (``models[1].max_epochs``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
from dataclasses import replace
from itertools import product
from pathlib import Path
from typing import Any

from proxyano_plugin.bench.runtimes import RUNTIMES
from proxyano_plugin.bench.spec import DatasetSpec, ModelSpec, RunSpec, Suite, SuiteError, Timing

PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
ISOLATION_MODES = ("process", "inline")
LOADER_START_METHODS = ("default", "fork", "forkserver", "spawn")
# Datamodule arguments the harness owns, so that batch sizes are set in one place (suite or model).
DATAMODULE_MANAGED = ("train_batch_size", "eval_batch_size", "num_workers")
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# No '.' or '/': names are addressed with dots in --set and joined with '/' into run names.
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def validate_suite(raw: dict[str, Any]) -> Suite:
    """Expand environment variables in ``raw``, check it and expand it into a :class:`Suite` (or raise)."""
    return _Validator(raw).suite()


def expand_env(value: Any) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string; an unset variable without default is ''."""
    if isinstance(value, str):
        return _ENV_PATTERN.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    return value


def import_class(class_path: str, base_name: str, where: str) -> type:
    """Import ``package.module.Class`` and check it subclasses anomalib's ``base_name``."""
    module_name, _, attr = class_path.rpartition(".")
    if not module_name:
        msg = f"{where}: {class_path!r} is not a class path; write it in full, e.g. anomalib.models.{class_path}"
        raise SuiteError(msg)
    try:
        module = importlib.import_module(module_name)
        # A lazy package attribute imports its module on access, which may fail like any import.
        cls = getattr(module, attr, None)
    except Exception as error:  # importing user code can raise anything; report it as the key's problem
        msg = f"{where}: cannot import {class_path!r} ({type(error).__name__}: {error})"
        raise SuiteError(msg) from error
    if cls is None:
        msg = f"{where}: unknown class {class_path!r} (module {module_name} has no {attr!r})"
        raise SuiteError(msg)
    base = _anomalib_base(base_name)
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        msg = f"{where}: {class_path!r} is not a subclass of {base.__module__}.{base_name}"
        raise SuiteError(msg)
    return cls


def _anomalib_base(base_name: str) -> type:
    if base_name == "AnomalibModule":
        from anomalib.models import AnomalibModule

        return AnomalibModule
    from anomalib.data import AnomalibDataModule

    return AnomalibDataModule


def accepted_kwargs(cls: type) -> set[str] | None:
    """Keyword arguments ``cls(...)`` accepts, or None when it takes ``**kwargs``."""
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name != "self"}


_TOP_KEYS = (
    "name",
    "description",
    "seeds",
    "data_seed",
    "image_size",
    "max_epochs",
    "accelerator",
    "devices",
    "parallel",
    "runs_per_device",
    "precision",
    "deterministic",
    "train_batch_size",
    "eval_batch_size",
    "num_workers",
    "loader_start_method",
    "trainer_args",
    "timing",
    "examples",
    "run_timeout_s",
    "checkpoint_interval_s",
    "isolation",
    "models",
    "datasets",
)
_MODEL_KEYS = (
    "name",
    "class_path",
    "init_args",
    "image_size",
    "max_epochs",
    "train_batch_size",
    "eval_batch_size",
    "trainer_args",
    "dataset_init_args",
    "datasets",
)
_DATASET_KEYS = (
    "name",
    "class_path",
    "init_args",
    "folder",
    "paths",
    "split",
    "skip_if_missing",
    "subsets",
    "shortcuts",
    "max_epochs",
    "train_batch_size",
    "eval_batch_size",
)
_SUBSET_KEYS = ("name", "split_csv")
# Trainer arguments the harness sets itself; a suite sets them through their own keys.
_TRAINER_MANAGED = (
    "max_epochs",
    "accelerator",
    "devices",
    "precision",
    "deterministic",
    "strategy",
    "logger",
    "callbacks",
    "default_root_dir",
    "num_nodes",
)


class _Validator:
    """Turns a raw suite mapping into a :class:`Suite`, raising :class:`SuiteError` on the first problem."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.data = expand_env(raw)

    def suite(self) -> Suite:
        data = self.data
        _check_keys(data, _TOP_KEYS, "")
        name = self._name(data, "name", "")
        seeds = data.get("seeds", [0])
        if not isinstance(seeds, list) or not seeds or not all(_is_int(s) for s in seeds):
            raise SuiteError(f"seeds: expected a non-empty list of ints, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise SuiteError(f"seeds: duplicate seed in {seeds}")
        image_size = self._image_size(data.get("image_size"), "image_size")
        defaults = {"max_epochs": None, "train_batch_size": 32, "eval_batch_size": 32} | self._run_settings(data, "")
        trainer_args = self._trainer_args(data.get("trainer_args", {}), "trainer_args")
        common = {
            "suite": name,
            "data_seed": self._int(data, "data_seed", 0, 0, ""),
            "num_workers": self._int(data, "num_workers", 0, 0, ""),
            "loader_start_method": self._choice(data, "loader_start_method", "default", LOADER_START_METHODS, ""),
            "precision": self._choice(data, "precision", "32-true", PRECISIONS, ""),
            "accelerator": self._choice(data, "accelerator", "auto", ACCELERATORS, ""),
            "deterministic": self._deterministic(data.get("deterministic", "warn")),
            "timing": self._timing(data.get("timing", {})),
            "examples": self._int(data, "examples", 4, 0, ""),
            "checkpoint_interval_s": self._seconds(data, "checkpoint_interval_s", 600.0),
        }
        parallel = data.get("parallel", False)
        if not isinstance(parallel, bool):
            raise SuiteError(f"parallel: expected true or false, got {parallel!r}")
        isolation = self._choice(data, "isolation", "process", ISOLATION_MODES, "")
        devices = self._int(data, "devices", 1, 1, "")
        runs_per_device = self._int(data, "runs_per_device", 1, 1, "")
        if isolation == "inline" and (parallel or devices > 1 or runs_per_device > 1):
            raise SuiteError("isolation: 'inline' runs one run at a time on one device; set isolation: process")
        models = [self._model(m, i, image_size, trainer_args) for i, m in enumerate(self._list(data, "models"))]
        datasets = [self._dataset(d, i) for i, d in enumerate(self._list(data, "datasets"))]
        _check_unique([m[0].name for m in models], "models")
        _check_unique([d[0].name for d in datasets], "datasets")
        _check_subset_names([dataset for dataset, _ in datasets])
        dataset_names = [dataset.name for dataset, _ in datasets]
        for index, (*_, overrides, only_on) in enumerate(models):
            self._check_dataset_overrides(overrides, [dataset for dataset, _ in datasets], f"models[{index}]")
            _check_model_datasets(only_on, dataset_names, f"models[{index}].datasets")
            for name in set(overrides) - set(only_on or dataset_names):
                raise SuiteError(
                    f"models[{index}].dataset_init_args.{name}: this model does not run on {name!r}"
                    f" (its datasets: {', '.join(only_on)})"
                )
        runs = []
        for (spec, model_image_size, model_settings, targs, overrides, only_on), (dataset, dataset_settings) in product(
            models, datasets
        ):
            if only_on is not None and dataset.name not in only_on:
                continue
            # Most specific wins: the model's own setting, then the dataset's, then the suite's.
            settings = defaults | dataset_settings | model_settings
            if dataset.name in overrides:
                dataset = replace(dataset, init_args=dataset.init_args | overrides[dataset.name])
            if settings["max_epochs"] is None:
                raise SuiteError(
                    f"max_epochs: required for {spec.name} on {dataset.name} (on the model, the dataset or the suite)"
                )
            runs += [
                RunSpec(
                    model=spec,
                    dataset=dataset,
                    seed=int(seed),
                    trainer_args=targs,
                    image_size=model_image_size,
                    **settings,
                    **common,
                )
                for seed in seeds
            ]
        timeout = data.get("run_timeout_s")
        if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
            raise SuiteError(f"run_timeout_s: expected a positive number of seconds or null, got {timeout!r}")
        return Suite(
            name=name,
            description=str(data.get("description", "")),
            runs=runs,
            accelerator=common["accelerator"],
            parallel=parallel,
            devices=devices,
            runs_per_device=runs_per_device,
            isolation=isolation,
            run_timeout_s=timeout,
        )

    # -- sections

    def _model(
        self, item: Any, index: int, suite_image_size: list[int] | None, suite_trainer_args: dict[str, Any]
    ) -> tuple[
        ModelSpec, list[int] | None, dict[str, Any], dict[str, Any], dict[str, dict[str, Any]], list[str] | None
    ]:
        """The model's spec, its input size, the run settings it sets itself, its trainer arguments, its
        dataset arguments (by dataset name) and the datasets it runs on (None: all)."""
        where = f"models[{index}]"
        if not isinstance(item, dict):
            raise SuiteError(f"{where}: expected a mapping with name, class_path, init_args")
        _check_keys(item, _MODEL_KEYS, f"{where}.")
        name = self._name(item, "name", f"{where}.")
        class_path = self._str(item, "class_path", f"{where}.")
        cls = import_class(class_path, "AnomalibModule", f"{where}.class_path")
        init_args = self._mapping(item.get("init_args", {}), f"{where}.init_args")
        _check_init_args(cls, init_args, f"{where}.init_args")
        _check_proxy(cls, init_args, f"{where}.init_args")
        image_size = (
            self._image_size(item["image_size"], f"{where}.image_size") if "image_size" in item else suite_image_size
        )
        if image_size is not None:
            init_args = _with_image_size(cls, init_args, image_size, where)
        trainer_args = {
            **suite_trainer_args,
            **self._trainer_args(item.get("trainer_args", {}), f"{where}.trainer_args"),
        }
        overrides = self._mapping(item.get("dataset_init_args", {}), f"{where}.dataset_init_args")
        overrides = {key: self._mapping(value, f"{where}.dataset_init_args.{key}") for key, value in overrides.items()}
        settings = self._run_settings(item, f"{where}.")
        only_on = item.get("datasets")
        return ModelSpec(name, class_path, init_args), image_size, settings, trainer_args, overrides, only_on

    @staticmethod
    def _check_dataset_overrides(overrides: dict[str, dict[str, Any]], datasets: list[DatasetSpec], where: str) -> None:
        """A model's ``dataset_init_args``: known datasets, arguments their class takes, no paths or batch sizes.

        They change what only this model's runs see (for example the validation set a model selects on), and
        so only its run ids.
        """
        by_name = {dataset.name: dataset for dataset in datasets}
        for name, init_args in overrides.items():
            at = f"{where}.dataset_init_args.{name}"
            if name not in by_name:
                raise SuiteError(f"{at}: no dataset named {name!r} in this suite ({', '.join(by_name)})")
            for key in init_args:
                if key in DATAMODULE_MANAGED or key in ("root", "name"):
                    raise SuiteError(f"{at}.{key}: set on the dataset or the suite, not per model")
            _check_init_args(import_class(by_name[name].class_path, "AnomalibDataModule", at), init_args, at)

    def _dataset(self, item: Any, index: int) -> tuple[DatasetSpec, dict[str, Any]]:
        """The dataset's spec and the run settings it sets for runs on it (e.g. a smaller set's batch size)."""
        where = f"datasets[{index}]"
        if not isinstance(item, dict):
            raise SuiteError(f"{where}: expected a mapping with name and class_path or folder")
        _check_keys(item, _DATASET_KEYS, f"{where}.")
        name = self._name(item, "name", f"{where}.")
        skip_if_missing = item.get("skip_if_missing", False)
        if not isinstance(skip_if_missing, bool):
            raise SuiteError(f"{where}.skip_if_missing: expected true or false, got {skip_if_missing!r}")
        split = item.get("split")
        if split is not None and not isinstance(split, str):
            raise SuiteError(f"{where}.split: expected a string label, got {split!r}")
        if ("folder" in item) == ("class_path" in item):
            raise SuiteError(f"{where}: give exactly one of class_path (+ init_args) or folder")
        if "folder" in item:
            if "init_args" in item or "paths" in item:
                raise SuiteError(f"{where}: folder takes all Folder arguments itself; drop init_args/paths")
            class_path = "anomalib.data.Folder"
            init_args = dict(self._mapping(item["folder"], f"{where}.folder"))
            for key in ("root", "normal_dir"):
                if key not in init_args:
                    raise SuiteError(f"{where}.folder.{key}: required (Folder's normal_dir is relative to root)")
            paths = {"root": ("folder.root", init_args.pop("root"))}
            init_args = {"name": name, **init_args}
        else:
            class_path = self._str(item, "class_path", f"{where}.")
            init_args = dict(self._mapping(item.get("init_args", {}), f"{where}.init_args"))
            paths = {
                key: (f"paths.{key}", value)
                for key, value in self._mapping(item.get("paths"), f"{where}.paths").items()
            }
            for key in paths:
                if key in init_args:
                    raise SuiteError(f"{where}.paths.{key}: also given in init_args; keep one")
        for key in DATAMODULE_MANAGED:
            if key in init_args:
                raise SuiteError(f"{where}.init_args.{key}: set {key} at the suite's top level or per model")
        cls = import_class(class_path, "AnomalibDataModule", f"{where}.class_path")
        skip_reason = None
        for key, (subkey, value) in paths.items():
            resolved, problem = self._path(value, f"{where}.{subkey}", f"datasets.{name}.{subkey}")
            init_args[key] = resolved
            if problem is None and class_path == "anomalib.data.Folder":
                problem = _missing_subdirs(Path(resolved), init_args, f"{where}.folder")
            if problem and skip_if_missing:
                skip_reason = skip_reason or problem
            elif problem:
                raise SuiteError(f"{problem}; or mark the dataset skip_if_missing: true")
        _check_init_args(cls, init_args, f"{where}.init_args")
        subsets = self._subsets(item.get("subsets"), where, init_args, skip_reason is None)
        shortcuts = self._shortcuts(item.get("shortcuts"), where, name, init_args, skip_reason is None)
        spec = DatasetSpec(name, class_path, init_args, split, skip_reason, subsets, shortcuts)
        return spec, self._run_settings(item, f"{where}.")

    def _shortcuts(self, value: Any, where: str, name: str, init_args: dict[str, Any], data_exists: bool) -> str | None:
        """A ``shortcuts.csv`` of benchmarks/split_shortcuts.py, made absolute; checked when the data exists."""
        if value is None:
            return None
        at = f"{where}.shortcuts"
        resolved, problem = self._path(value, at, f"datasets.{name}.shortcuts")
        if not data_exists:
            return resolved or None
        if not isinstance(init_args.get("split_csv"), str | os.PathLike):
            raise SuiteError(
                f"{at}: the dataset has no init_args.split_csv; the file's rows are picked by the split CSV's name "
                "(benchmarks/split_shortcuts.py scores split CSVs)"
            )
        if problem:
            raise SuiteError(problem)
        from proxyano_plugin.bench.report import read_shortcuts

        try:
            read_shortcuts(Path(resolved))
        except ValueError as error:
            raise SuiteError(f"{at}: {error}") from error
        return resolved

    def _subsets(self, value: Any, where: str, init_args: dict[str, Any], data_exists: bool) -> list[dict[str, str]]:
        """Subsets of the test set, each the test rows of a split CSV (a path, or a name under ``root/splits``)."""
        if value is None:
            return []
        if not isinstance(value, list):
            raise SuiteError(f"{where}.subsets: expected a list of {{name, split_csv}}, got {type(value).__name__}")
        root = init_args.get("root")
        if not isinstance(root, str | os.PathLike) or not str(root):
            raise SuiteError(
                f"{where}.subsets: needs the dataset's root (paths.root, folder.root or init_args.root): "
                "subset files are relative to it"
            )
        subsets = []
        for index, item in enumerate(value):
            at = f"{where}.subsets[{index}]"
            if not isinstance(item, dict):
                raise SuiteError(f"{at}: expected a mapping with name and split_csv, got {item!r}")
            _check_keys(item, _SUBSET_KEYS, f"{at}.")
            name = self._name(item, "name", f"{at}.")
            split_csv = self._str(item, "split_csv", f"{at}.")
            if data_exists:
                split_csv = str(_check_subset_csv(Path(root), split_csv, init_args, f"{at}.split_csv"))
            if name in (s["name"] for s in subsets):
                raise SuiteError(f"{at}.name: duplicate subset name {name!r}")
            subsets.append({"name": name, "split_csv": split_csv})
        return subsets

    def _path(self, value: Any, where: str, set_key: str) -> tuple[str, str | None]:
        """An absolute path, and a one-line problem when it does not exist."""
        if not isinstance(value, str):
            raise SuiteError(f"{where}: expected a path string, got {value!r}")
        declared = self._declared(where)
        if not value:
            unset = ", ".join(m.group(1) for m in _ENV_PATTERN.finditer(str(declared))) or "its variable"
            return "", f"{where}: no path (declared as {declared!r}); set {unset} or pass --set {set_key}=PATH"
        path = Path(value).expanduser().resolve()
        if not path.exists():
            hint = f" (declared as {declared!r})" if declared != value else ""
            return str(path), f"{where}: path does not exist: {path}{hint}; use --set {set_key}=PATH"
        return str(path), None

    def _declared(self, where: str) -> Any:
        """The value of ``where`` as written, before environment variables were expanded."""
        node: Any = self.raw
        for part in re.findall(r"[^.\[\]]+", where):
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    # -- scalar helpers

    @staticmethod
    def _list(data: dict[str, Any], key: str) -> list[Any]:
        value = data.get(key)
        if not isinstance(value, list) or not value:
            raise SuiteError(f"{key}: required, a non-empty list")
        return value

    @staticmethod
    def _str(data: dict[str, Any], key: str, prefix: str) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise SuiteError(f"{prefix}{key}: required, a non-empty string")
        return value

    def _name(self, data: dict[str, Any], key: str, prefix: str) -> str:
        value = self._str(data, key, prefix)
        if not _NAME_PATTERN.match(value):
            raise SuiteError(f"{prefix}{key}: {value!r} must be letters, digits, '_' and '-'")
        return value

    @staticmethod
    def _int(data: dict[str, Any], key: str, default: int | None, minimum: int, prefix: str) -> int | None:
        value = data.get(key, default)
        if value is None and default is None:
            return None
        if not _is_int(value) or value < minimum:
            raise SuiteError(f"{prefix}{key}: expected an int >= {minimum}, got {value!r}")
        return int(value)

    @staticmethod
    def _seconds(data: dict[str, Any], key: str, default: float) -> float:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise SuiteError(f"{key}: expected a number of seconds >= 0 (0: never), got {value!r}")
        return float(value)

    def _run_settings(self, data: dict[str, Any], prefix: str) -> dict[str, Any]:
        """The training length and batch sizes that ``data`` sets itself (suite, model or dataset level)."""
        settings = {}
        if data.get("max_epochs") is not None:
            settings["max_epochs"] = self._epochs(data, None, prefix)
        for key in ("train_batch_size", "eval_batch_size"):
            if key in data:
                settings[key] = self._int(data, key, 0, 1, prefix)  # present: the default is never used
        return settings

    @staticmethod
    def _epochs(data: dict[str, Any], default: int | None, prefix: str) -> int | None:
        """``max_epochs``: an int >= 1, or -1 for models that stop themselves (iteration-based training)."""
        value = data.get("max_epochs", default)
        if value is None or (_is_int(value) and (value >= 1 or value == -1)):
            return value
        raise SuiteError(f"{prefix}max_epochs: expected an int >= 1 (or -1: the model stops itself), got {value!r}")

    @staticmethod
    def _choice(data: dict[str, Any], key: str, default: str, choices: tuple[str, ...], prefix: str) -> str:
        value = str(data.get(key, default))
        if value not in choices:
            raise SuiteError(f"{prefix}{key}: {value!r} is not one of {', '.join(choices)}")
        return value

    @staticmethod
    def _mapping(value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise SuiteError(f"{where}: expected a mapping, got {type(value).__name__}")
        return value

    @staticmethod
    def _image_size(value: Any, where: str) -> list[int] | None:
        if value is None:
            return None
        if _is_int(value) and value > 0:
            return [int(value), int(value)]
        if isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value):
            return [int(v) for v in value]
        raise SuiteError(f"{where}: expected a positive int or [height, width], got {value!r}")

    @staticmethod
    def _deterministic(value: Any) -> bool | str:
        if isinstance(value, bool) or value == "warn":
            return value
        raise SuiteError(f"deterministic: expected true, false or 'warn', got {value!r}")

    def _timing(self, value: Any) -> Timing:
        value = self._mapping(value, "timing")
        _check_keys(value, ("batch_size", "warmup", "repeats", "runtimes"), "timing.")
        defaults = Timing()
        runtimes = value.get("runtimes", list(defaults.runtimes))
        if not isinstance(runtimes, list) or not all(isinstance(r, str) for r in runtimes):
            raise SuiteError(f"timing.runtimes: expected a list of names, got {runtimes!r}")
        unknown = [r for r in runtimes if r not in RUNTIMES]
        if unknown:
            raise SuiteError(f"timing.runtimes: {', '.join(map(repr, unknown))} not one of {', '.join(RUNTIMES)}")
        return Timing(
            batch_size=self._int(value, "batch_size", defaults.batch_size, 1, "timing."),
            warmup=self._int(value, "warmup", defaults.warmup, 0, "timing."),
            repeats=self._int(value, "repeats", defaults.repeats, 1, "timing."),
            runtimes=tuple(dict.fromkeys(["torch", *runtimes])),
        )

    def _trainer_args(self, value: Any, where: str) -> dict[str, Any]:
        value = self._mapping(value, where)
        for key in value:
            if key in _TRAINER_MANAGED:
                raise SuiteError(f"{where}.{key}: set by the harness; use the suite key {key!r} instead")
        return dict(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(data: dict[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
            raise SuiteError(f"{prefix}{key}: unknown key ({hint})")


def _check_model_datasets(only_on: Any, dataset_names: list[str], where: str) -> None:
    """A model's ``datasets``: absent (every dataset) or a non-empty list of this suite's dataset names."""
    if only_on is None:
        return
    if not isinstance(only_on, list) or not only_on or not all(isinstance(name, str) for name in only_on):
        raise SuiteError(f"{where}: expected a non-empty list of dataset names, got {only_on!r}")
    unknown = [name for name in only_on if name not in dataset_names]
    if unknown:
        raise SuiteError(
            f"{where}: no dataset named {', '.join(map(repr, unknown))} in this suite ({', '.join(dataset_names)})"
        )


def _check_unique(names: list[str], section: str) -> None:
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            raise SuiteError(
                f"{section}[{index}].name: duplicate name {name!r} (also {section}[{seen[name]}]); "
                "run names model/dataset/seed must be unique"
            )
        seen[name] = index


def _check_subset_names(datasets: list[DatasetSpec]) -> None:
    """A subset is reported as dataset ``<dataset>-<subset>``: that name must not be another dataset's."""
    names = {d.name for d in datasets}
    for index, dataset in enumerate(datasets):
        for number, subset in enumerate(dataset.subsets):
            combined = f"{dataset.name}-{subset['name']}"
            if combined in names:
                raise SuiteError(
                    f"datasets[{index}].subsets[{number}].name: reported as dataset {combined!r}, which is also "
                    "the name of a dataset; rename one"
                )


def _check_subset_csv(root: Path, split_csv: str, init_args: dict[str, Any], where: str) -> Path:
    """Find a subset's split CSV like SplitCSV finds its own, and check it has test rows (of the dataset's, where
    the dataset is split by a CSV too)."""
    from proxyano_plugin.bench.per_image import image_key, read_test_rows
    from proxyano_plugin.data.split_csv import resolve_split_csv
    from proxyano_plugin.data.validation import DatasetError

    root = Path(root).expanduser().resolve()
    try:
        path = resolve_split_csv(root, split_csv)
        rows, _ = read_test_rows(path)
    except (DatasetError, ValueError) as error:
        raise SuiteError(f"{where}: {' '.join(str(error).split())}") from error
    if not rows:
        raise SuiteError(f"{where}: {path} has no test rows (split == test); a subset is the test rows of its CSV")
    own = init_args.get("split_csv")
    try:
        own_path = resolve_split_csv(root, own) if isinstance(own, str | os.PathLike) else None
        own_rows = read_test_rows(own_path)[0] if own_path is not None and own_path.suffix == ".csv" else None
    except (DatasetError, ValueError):
        own_rows = None  # the datamodule reports its own split file's problems
    if own_rows is not None:
        tested = {image_key(row["file"], root) for row in own_rows}
        outside = [row["file"] for row in rows if image_key(row["file"], root) not in tested]
        if outside:
            raise SuiteError(
                f"{where}: {len(outside)} of the {len(rows)} test rows of {path} are not test rows of the "
                f"dataset's own split CSV {own_path} (first: {outside[0]}); a subset can only report images "
                "the runs tested"
            )
    return path


def _with_image_size(cls: type, init_args: dict[str, Any], size: list[int], where: str) -> dict[str, Any]:
    """Give the model its size: through its own ``image_size`` argument when it has one (its architecture may
    depend on it), else through a pre-processor from its ``configure_pre_processor`` (see worker.build_model)."""
    accepted = accepted_kwargs(cls)
    if accepted is not None and "image_size" in accepted:
        if size[0] != size[1]:
            raise SuiteError(f"{where}.image_size: {cls.__name__} takes a square image_size, got {size}")
        if init_args.get("image_size", size[0]) != size[0]:
            raise SuiteError(f"{where}.init_args.image_size: conflicts with image_size {size[0]}; set it once")
        return {**init_args, "image_size": size[0]}
    if accepted is not None and "pre_processor" not in accepted:
        raise SuiteError(
            f"{where}.image_size: {cls.__name__}.__init__ takes neither image_size nor pre_processor, so the "
            "harness cannot resize for it; remove image_size and size it through init_args"
        )
    return init_args


def _check_init_args(cls: type, init_args: dict[str, Any], where: str) -> None:
    accepted = accepted_kwargs(cls)
    if accepted is None:
        return
    for key in init_args:
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SuiteError(f"{where}.{key}: {cls.__name__}.__init__ has no parameter {key!r}{hint}")


def _check_proxy(cls: type, init_args: dict[str, Any], where: str) -> None:
    """Build the proxy of a model that takes ``proxy`` and ``proxy_kwargs`` (ProxyAno) once, here: an unknown
    name, a broken plugin or a mistyped keyword would otherwise fail every run of the model, after the others
    trained. The registry's message names the available proxies (and the closest one)."""
    parameters = inspect.signature(cls.__init__).parameters
    if "proxy" not in parameters or "proxy_kwargs" not in parameters:
        return
    name = init_args.get("proxy", parameters["proxy"].default)
    kwargs = init_args.get("proxy_kwargs", parameters["proxy_kwargs"].default)
    if name is inspect.Parameter.empty:
        return  # required and not given: the model's own call reports it
    if not isinstance(name, str):
        raise SuiteError(f"{where}.proxy: expected a proxy name, got {name!r}")
    if kwargs is None or kwargs is inspect.Parameter.empty:
        kwargs = {}
    if not (isinstance(kwargs, dict) and all(isinstance(key, str) for key in kwargs)):
        raise SuiteError(f"{where}.proxy_kwargs: expected a mapping of parameter names to values, got {kwargs!r}")
    from proxyano_plugin.proxies import ProxyArgumentError, ProxyError, ProxyValueError, create_proxy

    try:
        create_proxy(name, **kwargs)
    except ProxyError as error:
        key = "proxy_kwargs" if isinstance(error, ProxyArgumentError | ProxyValueError) else "proxy"
        raise SuiteError(f"{where}.{key}: {error}") from error


def _missing_subdirs(root: Path, folder_args: dict[str, Any], where: str) -> str | None:
    """Folder's image directories are relative to root; a missing one would only fail at fit time."""
    for key in ("normal_dir", "abnormal_dir", "normal_test_dir", "mask_dir"):
        value = folder_args.get(key)
        for sub in [value] if isinstance(value, str) else value or []:
            if not (root / sub).exists():
                return f"{where}.{key}: path does not exist: {root / sub}"
    return None
