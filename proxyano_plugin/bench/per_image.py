"""Per-image results of a run: one small CSV per run, so that subsets and strata need no second training.

``per_image/<run_id>.csv`` holds one row per test image: ``file`` (the image path, relative to the dataset's root
when it lies under it: shorter, and the same on every machine; absolute otherwise and in files written before),
``label`` (0 normal, 1 anomalous), ``score`` (the raw image score the metrics use) and ``mask_pixels`` (positive
pixels of the ground-truth mask at the anomaly map's size; empty when the test set has no masks). No maps.

A subset is the test rows (``split == test``) of a split CSV; its rows are matched to a run's per-image rows
by absolute path, both resolved against the dataset's root.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

PER_IMAGE_DIR = "per_image"
COLUMNS = ("file", "label", "score", "mask_pixels")


class ImageRow(NamedTuple):
    file: str
    label: int
    score: float
    mask_pixels: int | None


def write_per_image(path: Path, rows: Iterable[ImageRow], root: str | Path | None = None) -> Path:
    """Write the rows atomically (a temporary file renamed into place): a killed run leaves no half file.

    With the dataset's ``root``, files under it are written relative to it (:func:`image_key` resolves both forms).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    base = Path(root).expanduser().resolve() if root else None
    tmp = path.with_name(f"{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            # Nine significant digits round-trip a float32 score exactly.
            pixels = "" if row.mask_pixels is None else int(row.mask_pixels)
            writer.writerow([_relative_to(row.file, base), int(row.label), f"{row.score:.9g}", pixels])
    os.replace(tmp, path)
    return path


def _relative_to(file: str, base: Path | None) -> str:
    if base is None:
        return file
    resolved = Path(file).expanduser().resolve()
    return resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else file


def read_per_image(path: Path) -> list[ImageRow]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [
            ImageRow(
                row["file"],
                int(row["label"]),
                float(row["score"]),
                int(row["mask_pixels"]) if row.get("mask_pixels") else None,
            )
            for row in csv.DictReader(handle)
        ]


def image_key(file: str, root: Path) -> str:
    """The absolute path of ``file`` (relative to ``root``, or already absolute), resolved: what rows match on."""
    return str((root / file).resolve())


def read_test_rows(split_csv: Path) -> tuple[list[dict[str, str]], list[str]]:
    """The test rows (``split == test``) of a split CSV, and its columns.

    Raises ``ValueError`` with a one-line reason when the file is not such a CSV.
    """
    try:
        with split_csv.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            missing = [column for column in ("file", "split") if column not in columns]
            if missing:
                msg = f"{split_csv}: missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'none'}"
                raise ValueError(msg)
            rows = [row for row in reader if (row.get("split") or "").strip() == "test"]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        msg = f"{split_csv}: cannot read it as a CSV ({type(error).__name__}: {error})"
        raise ValueError(msg) from error
    return rows, columns
