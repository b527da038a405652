"""benchmarks/split_shortcuts.py: per-image statistics scored as anomaly scores on a split-CSV dataset."""

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "split_shortcuts.py"


@pytest.fixture(scope="module")
def shortcuts():
    spec = importlib.util.spec_from_file_location("split_shortcuts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_split(root: Path, abnormal_textured: bool) -> None:
    """Normals and abnormals that differ only in fine texture (same mean intensity): noise on one class."""
    rng = np.random.default_rng(0)
    rows = ["file,label,split,class"]
    for label, name in ((0, "normal"), (1, "abnormal")):
        for index in range(6):
            image = np.full((32, 32), 120.0)
            if (label == 1) == abnormal_textured:
                image += rng.normal(0, 30, image.shape)
            path = root / name / f"{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.clip(image, 0, 255).astype(np.uint8))
            split = "train" if label == 0 and index < 2 else "test"
            rows.append(f"{name}/{index}.png,{label},{split},{name}")
    (root / "splits").mkdir(exist_ok=True)
    (root / "splits" / "s.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize(("abnormal_textured", "expected"), [(True, 100.0), (False, 0.0)])
def test_fine_texture_ranks_the_textured_class_first(
    shortcuts, tmp_path: Path, abnormal_textured: bool, expected: float
) -> None:
    write_split(tmp_path, abnormal_textured)
    table = shortcuts.table(str(tmp_path), ["s"], size=32)
    row = next(line for line in table.splitlines() if line.startswith("| fine texture"))
    assert float(row.split("|")[2]) == expected
    assert "s (4 normal / 6 abnormal)" in table.splitlines()[0]


def test_main_writes_the_table_with_its_command(shortcuts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_split(tmp_path, abnormal_textured=False)
    output = tmp_path / "out" / "README.md"
    argv = ["split_shortcuts.py", "--root", str(tmp_path), "--split-csv", "s", "--size", "32", "--output", str(output)]
    monkeypatch.setattr(sys, "argv", argv)
    shortcuts.main()
    text = output.read_text()
    assert f"python benchmarks/split_shortcuts.py --root {tmp_path} --split-csv s --size 32" in text
    assert text.count("\n| ") == 1 + len(shortcuts.STATISTICS)  # header and one row per statistic
