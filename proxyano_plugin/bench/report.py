"""Turn a results directory into ``report.md``, ``summary.csv`` and PNG plots.

Everything is computed from the records alone (no clock, no machine lookup), so a report regenerates
identically anywhere: the header's machine, dates and versions are those the records carry. Subsets of a
dataset (rows ``<dataset>-<subset>``) and strata (lesion size, institution) come from the runs' per-image
results (``per_image/<run_id>.csv``) and the split CSVs the records name; no-model scores beside a dataset's
table from the ``shortcuts.csv`` of ``benchmarks/split_shortcuts.py`` its records name.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from proxyano_plugin.bench import records as records_io
from proxyano_plugin.bench.per_image import ImageRow, image_key, read_per_image, read_test_rows
from proxyano_plugin.bench.spec import NOT_IDENTITY

LESION_SIZE_COLUMN = "mask_pixels_256"
LESION_KIND_COLUMN = "lesion"
TRAINING_COPY_COLUMN = "training_copy"
SHORTCUTS_COLUMNS = ("split", "statistic", "level", "auroc")
SHORTCUTS_SOURCE = "benchmarks/split_shortcuts.py"


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    get: Callable[[dict[str, Any]], float | None]
    higher_is_better: bool
    # Fixed decimals (metrics in %), or None: three significant digits, no exponent.
    decimals: int | None = None
    scale: float = 1.0

    def format(self, mean: float, std: float | None) -> str:
        decimals = self.decimals
        if decimals is None:
            magnitude = math.floor(math.log10(abs(mean))) if mean else 0
            decimals = min(max(2 - magnitude, 0), 4)
        text = f"{mean:.{decimals}f}"
        return text if std is None else f"{text} ± {std:.{decimals}f}"


def _metric(name: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda record: (record.get("metrics") or {}).get(name)


def _section(section: str, name: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda record: (record.get(section) or {}).get(name)


def _runtime_throughput(runtime: str) -> Callable[[dict[str, Any]], float | None]:
    """Throughput of the model in ``runtime`` (suites with ``timing.runtimes``; bench/runtimes.py)."""
    return lambda record: (((record.get("perf") or {}).get("runtimes") or {}).get(runtime) or {}).get("throughput_ips")


COLUMNS = (
    Column("image_auroc", "Image AUROC", _metric("image_auroc"), True, 1, 100),
    Column("image_aupr", "Image AUPR", _metric("image_aupr"), True, 1, 100),
    Column("image_f1max", "Image F1Max", _metric("image_f1max"), True, 1, 100),
    Column("pixel_auroc", "Pixel AUROC", _metric("pixel_auroc"), True, 1, 100),
    Column("pixel_aupro", "Pixel AUPRO", _metric("pixel_aupro"), True, 1, 100),
    Column("pixel_aupr", "Pixel AUPR", _metric("pixel_aupr"), True, 1, 100),
    Column("pixel_dice_oracle", "Pixel Dice (oracle)", _metric("pixel_dice_oracle"), True, 1, 100),
    # The label-free validation score the run's epoch was chosen on (ProxyAno on a lesion validation set):
    # what a design choice may be read from, where every column before it is the test split's.
    Column("val_selection", "Validation (selection)", _section("selected_scores", "selection"), True, 1, 100),
    Column("throughput_ips", "Throughput (img/s)", _section("perf", "throughput_ips"), True),
    Column("throughput_torch_bf16_ips", "torch bf16 (img/s)", _runtime_throughput("torch-bf16"), True),
    Column("throughput_torch_compile_ips", "torch.compile (img/s)", _runtime_throughput("torch-compile"), True),
    Column("throughput_onnxruntime_ips", "ONNX Runtime (img/s)", _runtime_throughput("onnxruntime"), True),
    Column("throughput_openvino_ips", "OpenVINO (img/s)", _runtime_throughput("openvino"), True),
    Column("latency_ms", "Latency b1 (ms)", _section("perf", "latency_ms"), False),
    Column("fit_s", "Fit (s)", _section("timing", "fit_s"), False),
    Column("peak_rss_mb", "Peak RSS (MB)", _section("perf", "peak_rss_mb"), False, 0),
)
PLOTS = ("auroc.png", "accuracy_vs_throughput.png")


@dataclass
class Group:
    """The ok runs of one model on one dataset (one per seed)."""

    dataset: str
    model: str
    runs: list[dict[str, Any]]

    def values(self, column: Column) -> list[float]:
        found = (column.get(r) for r in self.runs)
        return [v * column.scale for v in found if v is not None]

    def mean(self, column: Column) -> float | None:
        values = self.values(column)
        return statistics.fmean(values) if values else None

    def std(self, column: Column) -> float | None:
        values = self.values(column)
        return statistics.stdev(values) if len(values) > 1 else None


def write_report(
    directory: Path,
    subsets: Mapping[str, list[dict[str, str]]] | None = None,
    shortcuts: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write the report files into ``directory``; returns their paths.

    ``subsets`` (dataset name to ``[{"name", "split_csv"}]``, e.g. from the suite just run) add to and replace,
    by name, the subsets the records carry: a subset added to a suite is reported without training again.
    ``shortcuts`` (dataset name to a ``shortcuts.csv``) likewise replace the ones the records carry.
    ``warn`` gets one line per unreadable line of the records (e.g. one cut off by a killed writer), which the
    report leaves out: a reader of the console would otherwise not know the tables miss a run.
    """
    loaded = records_io.read_records(directory / records_io.RECORDS_NAME)
    if not loaded.records:
        msg = f"{directory / records_io.RECORDS_NAME}: no records to report"
        raise records_io.ResultsError(msg)
    for problem in loaded.problems if warn else ():
        warn(f"{problem} (left out of the report)")
    latest = loaded.latest()
    groups = group_runs(latest)
    extras = Extras()
    results = PerImage(directory)
    groups = add_subset_groups(groups, results, extras, subsets or {})
    extras.no_model = no_model_scores(groups, extras, shortcuts or {}, directory)
    for dataset in dict.fromkeys(g.dataset for g in groups):
        lines = strata_table(dataset, [g for g in groups if g.dataset == dataset], results)
        if lines:
            extras.strata[dataset] = lines
    sessions = records_io.read_records(directory / records_io.SESSIONS_NAME).records
    plots = write_plots(directory, groups)
    overhead = harness_overhead(sessions, loaded.records)
    markdown = render_markdown(latest, groups, overhead, loaded.problems, [p.name for p in plots], extras)
    summary = write_summary_csv(directory / "summary.csv", groups, extras.no_model)
    return [_write(directory / "report.md", markdown), summary, *plots]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def group_runs(latest: list[dict[str, Any]]) -> list[Group]:
    """Ok runs grouped by dataset then model, in the order they first appear in the records.

    A model whose runs differ in settings (a suite edited between sessions, ``--set`` overrides) is split
    into one group per setting, labelled with what differs (``Autoencoder [max_epochs=600]``), so that
    mean and std never mix configurations.
    """
    groups: dict[tuple[str, str], Group] = {}
    for record in latest:
        if record.get("status") != "ok":
            continue
        key = (record["dataset"]["name"], record["model"]["name"])
        groups.setdefault(key, Group(*key, runs=[])).runs.append(record)
    split = [variant for group in groups.values() for variant in _split_variants(group)]
    for group in split:
        group.runs.sort(key=lambda r: r.get("seed", 0))
    datasets = list(dict.fromkeys(dataset for dataset, _ in groups))
    return sorted(split, key=lambda g: datasets.index(g.dataset))


DATA_LOCATION = {"root"}
"""Dataset arguments that say where the data lives, not what it is: runs that differ only there are one group."""


def _settings(record: dict[str, Any]) -> dict[str, str]:
    """What fixes a run's numbers besides its seed and where its data lives, flattened to JSON values."""
    model = record.get("model") or {}
    config = {key: value for key, value in (record.get("config") or {}).items() if key not in NOT_IDENTITY}
    data = {
        f"data.{key}": value
        for key, value in ((record.get("dataset") or {}).get("init_args") or {}).items()
        if key not in DATA_LOCATION
    }
    flat = {"class_path": model.get("class_path"), **(model.get("init_args") or {}), **config, **data}
    return {key: json.dumps(value, sort_keys=True, default=str) for key, value in flat.items()}


def _split_variants(group: Group) -> list[Group]:
    settings = [_settings(run) for run in group.runs]
    keys = sorted({key for s in settings for key in s})
    differing = [key for key in keys if len({s.get(key) for s in settings}) > 1]
    if not differing:
        return [group]
    variants: dict[str, Group] = {}
    for run, run_settings in zip(group.runs, settings, strict=True):
        label = ", ".join(f"{key}={run_settings.get(key, 'unset')}" for key in differing)
        variants.setdefault(label, Group(group.dataset, f"{group.model} [{label}]", runs=[])).runs.append(run)
    return list(variants.values())


# ------------------------------------------------------------------------------------ subsets and strata


@dataclass
class Extras:
    """What the report adds from per-image results: a note under a dataset's table, strata tables, warnings."""

    notes: dict[str, list[str]] = field(default_factory=dict)
    strata: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    no_model: dict[str, NoModel] = field(default_factory=dict)


class PerImage:
    """The per-image rows of a results directory's runs and the test rows of split CSVs, each read once."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._runs: dict[str, list[tuple[str, ImageRow]] | None] = {}
        self._tests: dict[Path, tuple[list[dict[str, str]], list[str]] | str] = {}
        self._keys: dict[tuple[frozenset[str], Path | None], frozenset[str]] = {}

    def rows(self, run: dict[str, Any]) -> list[tuple[str, ImageRow]] | None:
        """``(key, row)`` for each test image of ``run`` (key: resolved absolute path), or None without them."""
        key = f"{run['run_id']}:{run.get('per_image')}"  # a subset's entries share their run's id
        if key not in self._runs:
            self._runs[key] = self._read(run)
        return self._runs[key]

    def _read(self, run: dict[str, Any]) -> list[tuple[str, ImageRow]] | None:
        root = dataset_root(run)
        path = self.directory / run["per_image"] if run.get("per_image") else None
        if root is None or path is None or not path.is_file():
            return None
        return [(image_key(row.file, root), row) for row in read_per_image(path)]

    def keys(self, files: frozenset[str], root: Path | None) -> frozenset[str]:
        """``image_key`` of each file under ``root`` (a run's own: the data may have moved between sessions)."""
        if (files, root) not in self._keys:
            self._keys[files, root] = frozenset(image_key(file, root) for file in files) if root else frozenset()
        return self._keys[files, root]

    def test_rows(self, split_csv: Path) -> tuple[list[dict[str, str]], list[str]]:
        """The test rows and columns of a split CSV; ``ValueError`` (one line) when it cannot be read."""
        if split_csv not in self._tests:
            try:
                self._tests[split_csv] = read_test_rows(split_csv)
            except ValueError as error:
                self._tests[split_csv] = str(error)
        found = self._tests[split_csv]
        if isinstance(found, str):
            raise ValueError(found)
        return found


def dataset_root(run: dict[str, Any]) -> Path | None:
    """The folder a run's image paths are relative to: its dataset's ``root`` argument."""
    root = ((run.get("dataset") or {}).get("init_args") or {}).get("root")
    return Path(root).expanduser().resolve() if isinstance(root, str) and root else None


def image_metrics(rows: list[ImageRow]) -> dict[str, float | None]:
    """Image metrics of some test images from their raw scores, as the run computed them (pixel ones None)."""
    import torch

    from proxyano_plugin.bench.metrics import IMAGE_METRICS, METRICS, compute_metrics

    results: dict[str, float | None] = dict.fromkeys(METRICS)
    if rows:
        # float32, as the run had them: a score written with nine digits reads back to the same float32.
        scores = torch.tensor([row.score for row in rows], dtype=torch.float32)
        labels = torch.tensor([row.label for row in rows], dtype=torch.int32)
        found = compute_metrics(scores, labels)
        results.update({key: found[key] for key in IMAGE_METRICS})
    return results


def add_subset_groups(
    groups: list[Group], results: PerImage, extras: Extras, extra: Mapping[str, list[dict[str, str]]]
) -> list[Group]:
    """``groups`` with, after each dataset's, one group per subset and model: dataset ``<dataset>-<subset>``,
    one entry per run that has per-image results, with the image metrics of the subset's test rows."""
    declared: dict[str, dict[str, str]] = {}
    for group in groups:
        for run in group.runs:
            for subset in (run.get("dataset") or {}).get("subsets") or []:
                declared.setdefault(group.dataset, {})[subset["name"]] = subset["split_csv"]
    for dataset, subsets in extra.items():
        for subset in subsets:
            declared.setdefault(dataset, {})[subset["name"]] = subset["split_csv"]
    combined: list[Group] = []
    for dataset in dict.fromkeys(g.dataset for g in groups):
        own = [g for g in groups if g.dataset == dataset]
        combined += own
        for name, split_csv in declared.get(dataset, {}).items():
            combined += _subset_groups(dataset, name, Path(split_csv), own, results, extras)
    return combined


def _subset_groups(
    dataset: str, name: str, split_csv: Path, groups: list[Group], results: PerImage, extras: Extras
) -> list[Group]:
    label = f"{dataset}-{name}"
    try:
        test_rows, _ = results.test_rows(split_csv)
    except ValueError as error:
        extras.warnings.append(f"subset `{label}`: {error}")
        return []
    files = frozenset(row["file"] for row in test_rows)
    subset_groups = []
    for group in groups:
        runs = []
        for run in group.runs:
            rows = results.rows(run)
            if rows is None:
                continue
            wanted = results.keys(files, dataset_root(run))
            picked = [row for key, row in rows if key in wanted]
            counts = {"test_images": len(picked), "test_anomalous": sum(row.label for row in picked)}
            runs.append(
                {
                    "run_id": run["run_id"],
                    "status": "ok",
                    "seed": run.get("seed"),
                    "model": run.get("model"),
                    "dataset": {"name": label, "subset_of": dataset, "split_csv": str(split_csv)},
                    "metrics": image_metrics(picked),
                    "counts": counts,
                }
            )
        if runs:
            subset_groups.append(Group(label, group.model, runs))
    if not subset_groups:
        extras.warnings.append(f"subset `{label}`: no run of `{dataset}` has per-image results to compute it from")
        return []
    matched = sorted(
        {(r["counts"]["test_images"], r["counts"]["test_anomalous"]) for g in subset_groups for r in g.runs}
    )
    found = ", ".join(f"{images} ({anomalous} anomalous)" for images, anomalous in matched)
    extras.notes[label] = [
        f"The test rows of `{split_csv.name}` ({len(test_rows)} rows) within the test images of `{dataset}`, "
        f"from the per-image scores of its runs (no training of their own); images found: {found}. "
        "Image metrics only."
    ]
    return subset_groups


@dataclass(frozen=True)
class Stratum:
    """Test images compared by one AUROC: ``label`` names them; ``files`` as the split CSV gives them."""

    label: str
    files: frozenset[str]


def strata(split_csv: Path, results: PerImage) -> tuple[list[Stratum], list[str]]:
    """Lesion-size terciles (over the anomalous test rows' ``mask_pixels_256``) and lesion kinds (``lesion``,
    as ``proxyano-prepare lesions`` writes it), each with all normal test images; the test set without copies of
    training images (``training_copy``, idem); and institutions (second ``_`` field of ``patient``), each on its
    own test images; with what they are, in words. Each family needs its column; nothing without ``label``."""
    try:
        rows, columns = results.test_rows(split_csv)
    except ValueError:
        return [], []
    if "label" not in columns:
        return [], []
    found: list[Stratum] = []
    said = []
    normal = frozenset(row["file"] for row in rows if row["label"].strip() == "0")
    anomalous = [row for row in rows if row["label"].strip() == "1"]
    sized = [
        (int(row[LESION_SIZE_COLUMN]), row["file"])
        for row in anomalous
        if (row.get(LESION_SIZE_COLUMN) or "").strip().isdigit()
    ]
    if len(sized) >= 3:
        cuts = statistics.quantiles([size for size, _ in sized], n=3)
        bins: list[list[tuple[int, str]]] = [[], [], []]
        for size, file in sized:
            bins[sum(size > cut for cut in cuts)].append((size, file))
        for members in (members for members in bins if members):
            sizes = [size for size, _ in members]
            found.append(Stratum(f"lesion {min(sizes):,}-{max(sizes):,} px", normal | {f for _, f in members}))
        said.append(
            f"all normal test images against the anomalous ones in each tercile of `{LESION_SIZE_COLUMN}` "
            "(lesion pixels in a 256 x 256 px mask)"
        )
    kinds: dict[str, set[str]] = {}
    for row in anomalous:
        if kind := (row.get(LESION_KIND_COLUMN) or "").strip():
            kinds.setdefault(kind, set()).add(row["file"])
    if len(kinds) > 1:
        for kind, members in sorted(kinds.items()):
            found.append(Stratum(f"{kind} lesions", normal | members))
        said.append(f"all normal test images against each kind of lesion (the `{LESION_KIND_COLUMN}` column)")
    if TRAINING_COPY_COLUMN in columns:
        kept = frozenset(row["file"] for row in rows if (row.get(TRAINING_COPY_COLUMN) or "").strip() != "1")
        found.append(Stratum("no copies of training images", kept))
        said.append(
            f"the test images whose source is not a (mirrored) copy of a training image (`{TRAINING_COPY_COLUMN}`"
            " column): what a memory of the training set gains from the copies"
        )
    patients = [(row.get("patient") or "").split("_") for row in rows]
    institutions = sorted({parts[1] for parts in patients if len(parts) >= 2})
    if "patient" in columns and all(len(parts) >= 2 for parts in patients) and len(institutions) > 1:
        for institution in institutions:
            files = frozenset(row["file"] for row, parts in zip(rows, patients, strict=True) if parts[1] == institution)
            found.append(Stratum(f"institution {institution}", files))
        said.append("each institution (second field of the patient id) on its own normal and anomalous test images")
    return found, said


def strata_table(dataset: str, groups: list[Group], results: PerImage) -> list[str]:
    """Markdown: the image AUROC of each stratum (rows) for each model (columns), mean ± std over seeds.

    Only for a dataset split by a CSV (a ``split_csv`` argument) with a column that ``strata`` reads.
    """
    from proxyano_plugin.data.split_csv import resolve_split_csv
    from proxyano_plugin.data.validation import DatasetError

    with_rows = [(g, [r for r in g.runs if results.rows(r) is not None]) for g in groups]
    with_rows = [(g, runs) for g, runs in with_rows if runs]
    if not with_rows:
        return []
    first = with_rows[0][1][0]
    split_csv, root = ((first.get("dataset") or {}).get("init_args") or {}).get("split_csv"), dataset_root(first)
    if not isinstance(split_csv, str) or root is None:
        return []
    try:
        path = resolve_split_csv(root, split_csv)
    except DatasetError:  # the split file is gone (data moved): no strata, the rest of the report stands
        return []
    parts, said = strata(path, results)
    if not parts:
        return []

    def picked(run: dict[str, Any], part: Stratum) -> list[ImageRow]:
        keys = results.keys(part.files, dataset_root(run))
        return [row for key, row in results.rows(run) or [] if key in keys]

    auroc = next(c for c in COLUMNS if c.key == "image_auroc")
    lines = [
        f"### {dataset}: image AUROC by stratum",
        "",
        f"Image AUROC (%) on parts of the test set of `{path.name}`, from the runs' per-image scores: "
        + "; ".join(said)
        + ".",
        "",
        "| Stratum | Normal | Anomalous | " + " | ".join(f"{g.model} (n={len(runs)})" for g, runs in with_rows) + " |",
        "|---|---:|---:|" + "---:|" * len(with_rows),
    ]
    for part in parts:
        counted = picked(first, part)
        anomalous = sum(row.label for row in counted)
        cells = []
        for _, runs in with_rows:
            found = (image_metrics(picked(run, part))["image_auroc"] for run in runs)
            values = [value * auroc.scale for value in found if value is not None]
            mean = statistics.fmean(values) if values else None
            std = statistics.stdev(values) if len(values) > 1 else None
            cells.append("–" if mean is None else auroc.format(mean, std))
        lines.append(f"| {part.label} | {len(counted) - anomalous} | {anomalous} | " + " | ".join(cells) + " |")
    return lines


# ------------------------------------------------------------------------------------------ no-model scores


@dataclass(frozen=True)
class NoModelScore:
    """The AUROCs (fractions) of one statistic of ``benchmarks/split_shortcuts.py`` used as the anomaly score."""

    statistic: str
    image_auroc: float | None = None
    pixel_auroc: float | None = None


@dataclass(frozen=True)
class NoModel:
    """The no-model scores of one report dataset: its split's rows of a ``shortcuts.csv``."""

    path: Path
    split: str
    scores: list[NoModelScore]


def _existing_shortcuts(paths: list[str], directory: Path | None) -> str:
    """The first of ``paths`` that exists; else the first whose ``<folder>/<file>`` exists beside ``directory``
    (results folders are siblings); else the last declared (its error is then reported)."""
    for path in paths:
        if Path(path).is_file():
            return path
    if directory is not None:
        for path in paths:
            sibling = directory.resolve().parent / Path(path).parent.name / Path(path).name
            if sibling.is_file():
                return str(sibling)
    return paths[-1]


def read_shortcuts(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``shortcuts.csv`` (``split,statistic,level,auroc``) with ``auroc`` a float; ``ValueError``
    (one line) when the file cannot be read or a row is not one."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in SHORTCUTS_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                msg = (
                    f"{path}: missing column(s) {', '.join(missing)} (a shortcuts.csv of {SHORTCUTS_SOURCE} has "
                    f"{','.join(SHORTCUTS_COLUMNS)})"
                )
                raise ValueError(msg)
            rows = []
            for row in reader:
                where = f"{path} line {reader.line_num}"
                if row["level"] not in ("image", "pixel"):
                    raise ValueError(f"{where}: level {row['level']!r} is neither image nor pixel")
                try:
                    auroc = float(row["auroc"])
                except (TypeError, ValueError):
                    auroc = math.nan
                if not 0.0 <= auroc <= 1.0:
                    raise ValueError(f"{where}: auroc {row['auroc']!r} is not a fraction in [0, 1]")
                rows.append({**{c: row[c] for c in SHORTCUTS_COLUMNS}, "auroc": auroc})
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        msg = f"{path}: cannot be read ({type(error).__name__}: {error})"
        raise ValueError(msg) from error
    return rows


def no_model_scores(
    groups: list[Group], extras: Extras, extra: Mapping[str, str], directory: Path | None = None
) -> dict[str, NoModel]:
    """Each report dataset's no-model scores: the rows of its dataset's ``shortcuts.csv`` (the records', or
    ``extra``'s) whose ``split`` is the stem of its split CSV (a subset's own CSV for ``<dataset>-<subset>``).

    Records name the file by the absolute path it had when they ran (a worktree that may be gone): the first
    declared path that exists wins, then the same file among the report ``directory``'s sibling result folders.
    """
    declared: dict[str, list[str]] = {}
    for group in groups:
        for run in group.runs:
            path = (run.get("dataset") or {}).get("shortcuts")
            if path and path not in declared.setdefault(group.dataset, []):
                declared[group.dataset].append(path)
    files = {dataset: _existing_shortcuts(paths, directory) for dataset, paths in declared.items()}
    files.update({name: path for name, path in extra.items() if path})
    read: dict[str, list[dict[str, Any]] | None] = {}
    found: dict[str, NoModel] = {}
    for dataset in dict.fromkeys(g.dataset for g in groups):
        section = next(g for g in groups if g.dataset == dataset).runs[0].get("dataset") or {}
        if "subset_of" in section:
            parent, split_csv = section["subset_of"], section.get("split_csv")
        else:
            parent, split_csv = dataset, (section.get("init_args") or {}).get("split_csv")
        if parent not in files:
            continue
        if not isinstance(split_csv, str) or not split_csv:
            extras.warnings.append(f"no-model scores of `{dataset}`: its runs name no split CSV to pick rows by")
            continue
        path = files[parent]
        if path not in read:
            try:
                read[path] = read_shortcuts(Path(path))
            except ValueError as error:
                read[path] = None
                extras.warnings.append(f"no-model scores of `{parent}`: {error}")
        rows = read[path]
        if rows is None:
            continue
        split = Path(split_csv).stem
        scores: dict[str, dict[str, float]] = {}
        for row in rows:
            if row["split"] == split:
                scores.setdefault(row["statistic"], {})[f"{row['level']}_auroc"] = row["auroc"]
        if not scores:
            extras.warnings.append(f"no-model scores of `{dataset}`: {path} has no rows for split `{split}`")
            continue
        found[dataset] = NoModel(Path(path), split, [NoModelScore(name, **v) for name, v in scores.items()])
    return found


def no_model_table(no_model: NoModel) -> list[str]:
    """Markdown: one row per statistic, its image and (where scored) pixel AUROC in %."""
    levels = [
        (key, title)
        for key, title in (("image_auroc", "Image AUROC"), ("pixel_auroc", "Pixel AUROC"))
        if any(getattr(score, key) is not None for score in no_model.scores)
    ]
    lines = [
        f"No-model scores ({SHORTCUTS_SOURCE}), split `{no_model.split}` of `{no_model.path.name}`: AUROC in % of "
        "a per-image statistic (image) or a per-pixel prior (pixel) used as the anomaly score, no training.",
        "",
        "| No-model score | " + " | ".join(title for _, title in levels) + " |",
        "|---|" + "---:|" * len(levels),
    ]
    for score in no_model.scores:
        cells = [getattr(score, key) for key, _ in levels]
        text = ["–" if value is None else f"{100 * value:.1f}" for value in cells]
        lines.append(f"| {_markdown_cell(score.statistic)} | " + " | ".join(text) + " |")
    return lines


def _markdown_cell(text: str) -> str:
    """``text`` in a Markdown table cell, read literally (no column break, emphasis or code span)."""
    for char in "\\|*`":
        text = text.replace(char, "\\" + char)
    return text


# -------------------------------------------------------------------------------------------------- markdown


def render_markdown(
    latest: list[dict[str, Any]],
    groups: list[Group],
    overhead: tuple[float, float, int] | None,
    problems: list[str],
    images: list[str],
    extras: Extras | None = None,
) -> str:
    extras = extras or Extras()
    suites = sorted({r.get("suite", "?") for r in latest})
    lines = [f"# Benchmark results: {', '.join(suites)}", ""]
    lines += _header(latest, overhead)
    lines += [
        "",
        "Mean ± standard deviation over seeds (n = number of seeds). Metrics in %, computed with anomalib's "
        "metric classes on raw scores; *Pixel Dice (oracle)* uses the best threshold chosen with the ground "
        "truth. Throughput: eval-mode forward at the timing batch size; latency: batch 1. Best per column "
        "in **bold**.",
    ]
    for dataset in dict.fromkeys(g.dataset for g in groups):
        lines += ["", *_dataset_table(dataset, [g for g in groups if g.dataset == dataset])]
        if dataset in extras.notes:
            lines += ["", *extras.notes[dataset]]
        if dataset in extras.no_model:
            lines += ["", *no_model_table(extras.no_model[dataset])]
        if dataset in extras.strata:
            lines += ["", *extras.strata[dataset]]
    lines += ["", "## Plots", ""]
    lines += [f"![{Path(name).stem}]({name})" for name in images]
    not_ok = [r for r in latest if r.get("status") != "ok"]
    if not_ok or problems or extras.warnings:
        lines += ["", "## Failed and skipped runs", ""]
        lines += [f"- {r['status']}: `{r['name']}`: {r.get('error')}" + _log_link(r) for r in not_ok]
        lines += [f"- unreadable record: {p}" for p in problems]
        lines += [f"- not reported: {w}" for w in extras.warnings]
    return "\n".join(lines) + "\n"


def _log_link(record: dict[str, Any]) -> str:
    return f" ([log]({record['log']}))" if record.get("log") and record["status"] == "failed" else ""


def _header(latest: list[dict[str, Any]], overhead: tuple[float, float, int] | None) -> list[str]:
    devices = sorted({_device_label(r.get("device") or {}) for r in latest if r.get("status") == "ok"})
    dates = sorted(r["finished_at"][:10] for r in latest if r.get("finished_at"))
    version_sets = sorted({_versions_label(r.get("versions") or {}) for r in latest})
    commits = sorted({str(r.get("git_commit"))[:12] for r in latest if r.get("git_commit")})
    ok = sum(r.get("status") == "ok" for r in latest)
    date = "unknown" if not dates else dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    lines = [
        f"- Machine: {'; '.join(devices) or 'unknown'}",
        f"- Date: {date}",
        f"- Versions: {'; '.join(version_sets)}",
        f"- Commit: {', '.join(commits) or 'unknown'}",
        f"- Runs: {ok} ok of {len(latest)}",
    ]
    busy = [r for r in latest if _busy(r)]
    if busy:
        worst = max((r["perf"]["load_avg_1m"], r["device"]["cpus_available"]) for r in busy)
        lines.append(
            f"- Warning: {len(busy)} run(s) measured their speed on a busy machine (1-min load average up to "
            f"{worst[0]:.1f} on {worst[1]} CPUs): their latency and throughput are not reliable"
        )
    if overhead is not None:
        seconds, work, count = overhead
        lines.append(
            f"- Harness overhead: {100 * seconds / work:.1f}% of {work:.0f} s over {count} finished session(s) "
            "(everything but fit, test and speed measurement; the time counted is the harness's own plus every "
            "run's, which is the wall time when runs go one at a time)"
        )
    return lines


def harness_overhead(sessions: list[dict[str, Any]], runs: list[dict[str, Any]]) -> tuple[float, float, int] | None:
    """``(overhead_s, work_s, sessions)`` over the finished sessions, each joined to the runs that ended in it.

    Recomputed from the records (a run's interval is its ``wall_s`` up to its ``finished_at``) rather than
    read from ``sessions.jsonl``, whose ``overhead_s`` went negative for sessions with parallel runs before
    :func:`~proxyano_plugin.bench.records.session_overhead`. An interrupted session's run in flight is
    neither measured nor overhead: only finished sessions count.
    """
    ended = [(_timestamp(r["finished_at"]), r) for r in runs if r.get("finished_at") and r.get("timing")]
    totals, count = [0.0, 0.0], 0
    for session in sessions:
        if session.get("status") != "finished" or not session.get("wall_s"):
            continue
        start, end = _timestamp(session["started_at"]), _timestamp(session["finished_at"])
        intervals = [
            (at - run["timing"].get("wall_s", 0.0), at, records_io.measured_seconds(run["timing"]))
            for at, run in ended
            if start <= at <= end
        ]
        for index, value in enumerate(records_io.session_overhead(session["wall_s"], intervals)):
            totals[index] += value
        count += 1
    return (totals[0], totals[1], count) if count and totals[1] > 0 else None


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _busy(record: dict[str, Any]) -> bool:
    """Speed measured on the CPU while other processes wanted more CPUs than there are."""
    load = (record.get("perf") or {}).get("load_avg_1m")
    device = record.get("device") or {}
    return device.get("type") == "cpu" and load is not None and load > device.get("cpus_available", 1) + 0.5


def _device_label(device: dict[str, Any]) -> str:
    name = device.get("name", "unknown")
    count = device.get("count", 1)
    label = f"{count} x {name}" if count and count > 1 else name
    if device.get("type") == "cpu" and device.get("cpu_threads"):
        label += f" ({device['cpu_threads']} threads)"
    return label


def _versions_label(versions: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in versions.items() if k != "python" and v)


def _dataset_table(dataset: str, groups: list[Group]) -> list[str]:
    columns = [c for c in COLUMNS if any(g.values(c) for g in groups)]
    best = {c.key: _best(groups, c) for c in columns}
    lines = [
        f"## {dataset}",
        "",
        "| Model | n | " + " | ".join(c.title for c in columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for group in groups:
        cells = []
        for column in columns:
            mean, std = group.mean(column), group.std(column)
            if mean is None:
                cells.append("–")
                continue
            text = column.format(mean, std)
            text = f"**{text}**" if best[column.key] is not None and mean == best[column.key] else text
            counted = len(group.values(column))
            cells.append(text if counted == len(group.runs) else f"{text} (n={counted})")  # e.g. older records
        lines.append(f"| {group.model} | {len(group.runs)} | " + " | ".join(cells) + " |")
    return lines


def _best(groups: list[Group], column: Column) -> float | None:
    means = [m for m in (g.mean(column) for g in groups) if m is not None]
    if len(means) < 2:  # a single entry is not "best" of anything
        return None
    return max(means) if column.higher_is_better else min(means)


# ------------------------------------------------------------------------------------------------------- csv


def write_summary_csv(path: Path, groups: list[Group], no_model: Mapping[str, NoModel] | None = None) -> Path:
    """One row per model and dataset: n, and mean and std of every column (metrics as fractions); after a
    dataset's models, one row per no-model score, model ``no-model: <statistic>``, only its AUROCs filled."""
    no_model = no_model or {}
    header = ["dataset", "model", "n"] + [f"{c.key}_{s}" for c in COLUMNS for s in ("mean", "std")]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for index, group in enumerate(groups):
            row: list[Any] = [group.dataset, group.model, len(group.runs)]
            for column in COLUMNS:
                for value in (group.mean(column), group.std(column)):
                    row.append("" if value is None else f"{value / column.scale:.6g}")
            writer.writerow(row)
            last = index + 1 == len(groups) or groups[index + 1].dataset != group.dataset
            if last and group.dataset in no_model:
                for score in no_model[group.dataset].scores:
                    filled = {
                        f"{key}_mean": f"{value:.6g}"
                        for key in ("image_auroc", "pixel_auroc")
                        if (value := getattr(score, key)) is not None
                    }
                    named = {"dataset": group.dataset, "model": f"no-model: {score.statistic}"}
                    writer.writerow([{**named, **filled}.get(column, "") for column in header])
    return path


# ----------------------------------------------------------------------------------------------------- plots


def write_plots(directory: Path, groups: list[Group]) -> list[Path]:
    import matplotlib

    if not groups:  # nothing succeeded: tables and plots would be empty
        return []
    matplotlib.use("Agg")
    written = [_plot_auroc(directory / PLOTS[0], groups), _plot_tradeoff(directory / PLOTS[1], groups)]
    for model in dict.fromkeys(g.model for g in groups):
        gallery = _plot_gallery(directory, model, [r for g in groups if g.model == model for r in g.runs])
        if gallery is not None:
            written.append(gallery)
    return written


def _plot_auroc(path: Path, groups: list[Group]) -> Path:
    import matplotlib.pyplot as plt

    levels = [c for c in COLUMNS if c.key in ("image_auroc", "pixel_auroc") and any(g.values(c) for g in groups)]
    models = list(dict.fromkeys(g.model for g in groups))
    size = (max(5.0, 1.6 * len({g.dataset for g in groups}) * len(models)), 4.0)
    figure, axes = plt.subplots(1, max(len(levels), 1), figsize=size, squeeze=False)
    axes = axes[0]
    width = 0.8 / max(len(models), 1)
    for axis, column in zip(axes, levels, strict=False):
        datasets = list(dict.fromkeys(g.dataset for g in groups if g.values(column)))
        for index, model in enumerate(models):
            found = {g.dataset: g for g in groups if g.model == model}
            means = [(found[d].mean(column) if d in found else None) or math.nan for d in datasets]
            stds = [(found[d].std(column) if d in found else None) or 0.0 for d in datasets]
            positions = [i + (index - (len(models) - 1) / 2) * width for i in range(len(datasets))]
            axis.bar(positions, means, width, yerr=stds, capsize=3, label=model)
        axis.set_xticks(range(len(datasets)), datasets, rotation=20, ha="right")
        axis.set_ylabel(f"{column.title} (%)")
        axis.set_ylim(0, 100)
        axis.axhline(50, color="grey", linewidth=0.8, linestyle=":")
        axis.set_title(column.title)
    axes[0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _plot_tradeoff(path: Path, groups: list[Group]) -> Path:
    import matplotlib.pyplot as plt

    auroc = next(c for c in COLUMNS if c.key == "image_auroc")
    speed = next(c for c in COLUMNS if c.key == "throughput_ips")
    figure, axis = plt.subplots(figsize=(6, 4.5))
    markers = "osD^vP*X"
    datasets = list(dict.fromkeys(g.dataset for g in groups))
    models = list(dict.fromkeys(g.model for g in groups))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for group in groups:
        x, y = group.mean(speed), group.mean(auroc)
        if x is None or y is None:
            continue
        axis.scatter(
            x,
            y,
            color=colors[models.index(group.model) % len(colors)],
            marker=markers[datasets.index(group.dataset) % len(markers)],
            label=f"{group.model} / {group.dataset}",
        )
    axis.set_xscale("log")
    axis.set_xlabel(f"{speed.title}, log scale")
    axis.set_ylabel(f"{auroc.title} (%)")
    axis.set_title("Accuracy versus inference throughput")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize="x-small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# Longer names keep their first characters and end in a hash of the whole label (still unique, still readable).
GALLERY_NAME_CHARS = 80


# Galleries show 64-128 px images in panels of 2 inches: 70 dpi keeps every image pixel and halves the file of 100
# dpi. They are committed with the records, and a lent GPU machine takes the tree only up to 64 MiB.
GALLERY_DPI = 70
# A 256-colour palette instead of RGBA: 20 % smaller files (336 -> 269 KB for a 10-row gallery), the grey images and
# the jet maps still told apart.
GALLERY_COLOURS = 256


def gallery_file(model: str) -> str:
    """``gallery_<model>.png``, with a group's ``[setting=value]`` label reduced to a short plain file name."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", model).strip("_")
    if len(name) > GALLERY_NAME_CHARS:
        name = f"{name[: GALLERY_NAME_CHARS - 9]}_{hashlib.sha256(model.encode()).hexdigest()[:8]}"
    return f"gallery_{name}.png"


def _plot_gallery(directory: Path, model: str, runs: list[dict[str, Any]]) -> Path | None:
    """Examples of one run of ``model``: input, model intermediates, anomaly map, ground truth.

    The examples (``examples/*.npz``) are not committed: where none is here (a fresh checkout), an existing
    gallery is kept as it was drawn, and the report still shows it.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    path = directory / gallery_file(model)
    candidates = [r for r in runs if r.get("examples") and (directory / r["examples"]).exists()]
    if not candidates:
        return path if path.exists() else None
    # Prefer a dataset with masks, then the lowest seed.
    run = min(candidates, key=lambda r: ((r.get("counts") or {}).get("test_with_masks", 0) == 0, r.get("seed", 0)))
    with np.load(directory / run["examples"]) as data:
        arrays = {key: data[key] for key in data.files}
    extras = [str(name) for name in arrays.get("extra_names", [])]
    columns = [("image", "input")] + [(f"extra_{n}", n) for n in extras] + [("anomaly_map", "anomaly map")]
    if "gt_mask" in arrays:
        columns.append(("gt_mask", "ground truth"))
    columns = [(key, title) for key, title in columns if key in arrays]
    rows = len(arrays["image"])
    # One colour scale for all maps of the run, so a normal image's map looks as cold as it is.
    map_range = (float(arrays["anomaly_map"].min()), float(arrays["anomaly_map"].max()))
    figure, axes = plt.subplots(rows, len(columns), figsize=(2 * len(columns), 2 * rows), squeeze=False)
    for row in range(rows):
        # Intermediates are drawn on their input's scale: stretched on their own, a black output looked white.
        input_range = (float(arrays["image"][row].min()), float(arrays["image"][row].max()))
        for col, (key, title) in enumerate(columns):
            axis = axes[row][col]
            if key == "anomaly_map":
                axis.imshow(
                    np.squeeze(arrays[key][row]).astype(np.float32), cmap="jet", vmin=map_range[0], vmax=map_range[1]
                )
            elif key == "gt_mask":
                axis.imshow(np.squeeze(arrays[key][row]).astype(np.float32), cmap="gray", vmin=0, vmax=1)
            else:
                value_range = None if key == "image" else input_range
                axis.imshow(_displayable(arrays[key][row], value_range), cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(title, fontsize="small")
        label = "anomalous" if int(arrays["gt_label"][row]) else "normal"
        axes[row][0].set_ylabel(f"{label}\nscore {float(arrays['pred_score'][row]):.3g}", fontsize="x-small")
    figure.suptitle(f"{model} on {run['dataset']['name']} (seed {run.get('seed')})", fontsize="small")
    figure.tight_layout()
    _save_palette_png(figure, path)
    plt.close(figure)
    return path


def _save_palette_png(figure: Any, path: Path) -> None:
    """``figure`` as a :data:`GALLERY_COLOURS`-colour PNG at :data:`GALLERY_DPI`."""
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=GALLERY_DPI, format="png")
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(GALLERY_COLOURS).save(path, optimize=True)


def _displayable(array: Any, value_range: tuple[float, float] | None = None) -> Any:
    """``[C, H, W]`` or ``[H, W]`` to an image matplotlib shows: channels last, in [0, 1].

    Without ``value_range`` each channel is scaled to its own range, which undoes a per-channel normalisation
    (ImageNet's), so grayscale stays gray; with it, values are mapped from that range and clipped, so an
    output darker or brighter than its input looks so.
    """
    import numpy as np

    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 3:
        array = array[0] if array.shape[0] == 1 else np.moveaxis(array[:3], 0, -1)
    if value_range is not None:
        low, high = value_range
        return np.clip((array - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(array)
    axes = (0, 1)
    low, high = array.min(axis=axes, keepdims=True), array.max(axis=axes, keepdims=True)
    return np.where(high > low, (array - low) / np.where(high > low, high - low, 1), 0.0)
