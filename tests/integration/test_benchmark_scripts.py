"""The analysis scripts in benchmarks/: split_shortcuts.py (per-image statistics as anomaly scores),
proxyano_sweep.py's --table (the results READMEs' tables from its raw output) and memory readings,
proxyano_profile.py (time per module), loader_hang.py (loader settings under a deadline) and onnx_ab.py (exported
models timed side by side)."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from testing_utils import REPO, head_slice

from proxyano_plugin import ProxyAno

BENCHMARKS = REPO / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shortcuts():
    return load_script("split_shortcuts")


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
    # Flat normals are copies of the flat training normals (distance 0); noisy ones are 40 grey levels apart
    # and the flat abnormals 30 from them: the nearest-training score ranks the classes as the texture does.
    nearest = next(line for line in table.splitlines() if line.startswith("| nearest training image"))
    assert float(nearest.split("|")[2]) == expected
    copies = "4 / 0" if abnormal_textured else "0 / 0"
    assert f"s (4 normal / 6 abnormal; copies of training images: {copies})" in table.splitlines()[0]


def test_main_writes_the_table_with_its_command(shortcuts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_split(tmp_path, abnormal_textured=False)
    output = tmp_path / "out" / "README.md"
    argv = ["split_shortcuts.py", "--root", str(tmp_path), "--split-csv", "s", "--size", "32", "--output", str(output)]
    monkeypatch.setattr(sys, "argv", argv)
    shortcuts.main()
    text = output.read_text()
    assert f"python benchmarks/split_shortcuts.py --root {tmp_path} --split-csv s --size 32" in text
    assert text.count("\n| ") == 2 + len(shortcuts.STATISTICS)  # header, one row per statistic, nearest training
    rows = (tmp_path / "out" / "shortcuts.csv").read_text().splitlines()
    assert rows[0] == "split,statistic,level,auroc"
    assert len(rows) == 2 + len(shortcuts.STATISTICS)
    assert rows[1].startswith("s,mean intensity,image,0.")


# Two patients, rows shuffled, slice numbers with gaps, one slice in train: (file, label, split, patient, slice).
VOLUME_ROWS = [
    ("p30.png", 1, "test", "p", 30),
    ("p10.png", 0, "train", "p", 10),
    ("p50.png", 0, "test", "p", 50),
    ("p20.png", 1, "test", "p", 20),
    ("p40.png", 1, "test", "p", 40),
    ("q3.png", 0, "test", "q", 3),
    ("q1.png", 0, "test", "q", 1),
    ("q2.png", 1, "test", "q", 2),
]


def write_volume_split(root: Path, name: str, rows: list[tuple]) -> None:
    """Identical flat images: only the patient/slice columns tell the classes apart."""
    (root / "splits").mkdir(exist_ok=True)
    for file, *_ in rows:
        cv2.imwrite(str(root / file), np.full((32, 32), 120, np.uint8))
    lines = ["file,label,split,patient,slice", *(",".join(map(str, row)) for row in rows)]
    (root / "splits" / f"{name}.csv").write_text("\n".join(lines) + "\n")


def position_cells(table: str) -> tuple[float, float]:
    closeness, raw = (
        float(next(line for line in table.splitlines() if line.startswith(f"| slice position: {start}")).split("|")[2])
        for start in ("closeness", "relative")
    )
    return closeness, raw


def test_slice_position_is_the_rank_among_the_patients_rows_of_every_split(shortcuts, tmp_path: Path) -> None:
    """p's slices 10..50 sit at 0, 1/4, ..., 1 (the train slice counts); q's 1..3 at 0, 1/2, 1. Tumours are the
    inner slices and normals the end slices, so closeness to the middle ranks them perfectly (100.0); the raw
    position puts abnormals above the normal at 0 and below the two at 1: 4 of 12 pairs, 33.3."""
    write_volume_split(tmp_path, "full", VOLUME_ROWS)

    positions = shortcuts.slice_positions(tmp_path / "splits" / "full.csv")

    assert positions == {Path(f"p{10 * k}.png"): (k - 1) / 4 for k in range(1, 6)} | {
        Path(f"q{k}.png"): (k - 1) / 2 for k in range(1, 4)
    }
    assert position_cells(shortcuts.table(str(tmp_path), ["full"], size=32)) == (100.0, 33.3)


def test_positions_from_a_full_split_when_a_split_keeps_some_slices(shortcuts, tmp_path: Path) -> None:
    """Without p's end slice 50, p40 would be the last slice of its CSV rows (position 1, as far from the middle
    as the normals); ``positions_from`` the full split keeps it at 3/4."""
    write_volume_split(tmp_path, "full", VOLUME_ROWS)
    write_volume_split(tmp_path, "pruned", [row for row in VOLUME_ROWS if row[0] != "p50.png"])

    own = position_cells(shortcuts.table(str(tmp_path), ["pruned"], size=32))
    full = position_cells(shortcuts.table(str(tmp_path), ["pruned"], size=32, positions_from="full"))

    assert own[0] == 87.5  # p40 ties with the two normals of q: 7 of 8 pairs
    assert full == (100.0, 50.0)  # normals q1, q3 at 0 and 1; abnormals at 1/4, 1/2, 3/4, 1/2


def test_splits_without_patient_and_slice_columns_have_no_position_scores(shortcuts, tmp_path: Path) -> None:
    write_volume_split(tmp_path, "full", VOLUME_ROWS)
    flat = ["file,label,split", *(f"{file},{label},{split}" for file, label, split, *_ in VOLUME_ROWS)]
    (tmp_path / "splits" / "flat.csv").write_text("\n".join(flat) + "\n")

    table = shortcuts.table(str(tmp_path), ["full", "flat"], size=32)

    closeness = next(line for line in table.splitlines() if line.startswith("| slice position: closeness"))
    assert [cell.strip() for cell in closeness.split("|")[2:4]] == ["100.0", "no patient/slice"]


def test_pixel_priors_score_masks_where_the_split_has_them(shortcuts, tmp_path: Path) -> None:
    """Lesions always in the middle of the frame: the centre prior finds them, with no model."""
    write_split(tmp_path, abnormal_textured=False)
    rows = ["file,label,split,mask"]
    for line in (tmp_path / "splits" / "s.csv").read_text().splitlines()[1:]:
        file, label, split, _class = line.split(",")
        mask = ""
        if label == "1":
            mask = f"masks/{Path(file).name}"
            (tmp_path / "masks").mkdir(exist_ok=True)
            centre = np.zeros((32, 32), np.uint8)
            centre[14:18, 14:18] = 255
            cv2.imwrite(str(tmp_path / mask), centre)
        rows.append(f"{file},{label},{split},{mask}")
    (tmp_path / "splits" / "masked.csv").write_text("\n".join(rows) + "\n")

    table = shortcuts.table(str(tmp_path), ["s", "masked"], size=32)

    centre_row = next(line for line in table.splitlines() if "closeness to the image centre" in line)
    unmasked, masked = (cell.strip() for cell in centre_row.split("|")[2:4])
    assert unmasked == "no masks"
    assert float(masked) > 99  # a 4x4 square's corners lie a little further out than its 4-neighbours


def test_sweep_table_prints_every_line_of_every_output_in_percent(tmp_path: Path) -> None:
    sweep = load_script("proxyano_sweep")
    lines = [
        {"label": "a", "epoch": 2, "full_image": 0.5561, "preblur4_top1_image": 0.8},
        {"label": "a", "epoch": 4, "full_image": 0.25, "sigma1_top1_image": 0.1},
    ]
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    second.write_text(json.dumps({"label": "b", "epoch": 30, "irm_on_true_proxy_image": 0.19}) + "\n")

    rows = sweep.markdown_table([str(first), str(second)]).splitlines()

    assert len(rows) == 2 + 3
    assert rows[2] == "| a | 2 | 55.6 |  |  |  | 80.0 |  |"
    assert rows[3] == "| a | 4 | 25.0 |  | 10.0 |  |  |  |"
    assert rows[4] == "| b | 30 |  |  |  |  |  | 19.0 |"


@pytest.mark.parametrize("paired", [False, True])
def test_sweep_validation_split_paints_half_or_every_held_out_slice(paired: bool) -> None:
    sweep = load_script("proxyano_sweep")
    images = torch.from_numpy(np.stack([head_slice(seed) for seed in range(8)])).unsqueeze(1)
    paths = [f"s{index}.png" for index in range(8)]
    args = argparse.Namespace(
        group_column=None, val_fraction=0.5, seed=0, lesion_area=(0.01, 0.08), lesion_appearance="t1ce"
    )
    args.paired_validation = paired

    kept, (val_images, labels, masks) = sweep.validation_split(images, paths, args)

    assert len(kept) == 4
    assert len(val_images) == len(labels) == len(masks) == (8 if paired else 4)
    assert int(labels.sum()) == (4 if paired else 2)
    assert all(bool(mask.any()) == bool(label) for mask, label in zip(masks, labels, strict=True))
    if paired:  # clean then painted, per held-out slice
        torch.testing.assert_close(labels, torch.tensor([0, 1] * 4, dtype=labels.dtype))


def test_sweep_by_subject_groups_scores_by_subject_and_finds_heads_at_the_border() -> None:
    sweep = load_script("proxyano_sweep")
    torch.manual_seed(0)
    model = ProxyAno(image_size=32, widths=[8, 16, 32], memory_size=20)
    images = torch.zeros(8, 1, 32, 32)
    images[:, :, 8:24, 8:24] = 0.5
    images[:2, :, 0:10, 8:24] = 0.5  # two slices of subject a reach the top border
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    sources = ["a_s0.png", "a_s1.png", "a_s2.png", "a_s3.png", "tr1_s0.png", "tr1_s1.png", "tr1_s2.png", "tr1_s3.png"]

    lines = sweep.by_subject(model, (images, labels, None), sources)

    assert [line["subject"] for line in lines] == ["a", "tr1"]
    assert lines[0]["reaches_border"] == 0.5
    assert lines[1]["reaches_border"] == 0.0
    for line in lines:
        assert 0 <= line["auroc_within"] <= 1
        assert line["normal_median"] > 0


@torch.no_grad()
def test_sweep_memory_maps_score_features_the_memory_does_not_hold() -> None:
    """Items set to one image's bottleneck features: that image is familiar everywhere, another is not."""
    sweep = load_script("proxyano_sweep")
    torch.manual_seed(0)
    net = ProxyAno(image_size=32, widths=[8, 16, 32], memory_size=16).model.eval()
    familiar, other = torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)
    familiar[..., 8:24, 8:24] = 0.5
    other[..., 4:12, 4:28] = 0.9
    features = net.pem.encoder(familiar)[-1]  # [1, 32, 8, 8]: 16 items hold its first 16 locations (rows 0-1)
    net.pem.memories[-1].items.copy_(features.permute(0, 2, 3, 1).reshape(-1, 32)[:16])

    maps = sweep.memory_maps(net, torch.cat([familiar, other]))

    assert set(maps) == {"memory_residual", "memory_nearest", "memory_unaddressed"}
    for name, memory_map in maps.items():
        assert memory_map.shape == (2, 1, 32, 32), name
        assert float(memory_map.min()) >= 0, name
    assert float(maps["memory_unaddressed"].max()) <= 1
    nearest = maps["memory_nearest"]
    assert float(nearest[0, 0, :6].max()) < 1e-6  # pixel rows 0-5 interpolate grid rows 0-1 only
    assert float(nearest[1].mean()) > float(nearest[0].mean())


@torch.no_grad()
def test_sweep_masked_reconstruction_takes_each_pixel_from_the_pass_that_blanked_it() -> None:
    """A recording stand-in for the networks: each pixel of the result comes from the one pass whose input had
    its block zeroed, and the four passes blank every block once, no block beside another of its pass."""
    sweep = load_script("proxyano_sweep")
    inputs = []

    class Recording(torch.nn.Module):
        def reconstruct(self, images: torch.Tensor) -> argparse.Namespace:
            inputs.append(images.clone())
            return argparse.Namespace(reconstruction=torch.full_like(images, float(len(inputs))))  # pass 1..4

    images = torch.ones(2, 1, 8, 8)
    combined = sweep.masked_reconstruction(Recording(), images, block=2)

    blanked = torch.stack([(tensor == 0).all(0)[0] for tensor in inputs])  # [4 passes, 8, 8]
    assert blanked.sum(0).eq(1).all()  # every pixel blanked in exactly one pass
    assert blanked[0, :2, :2].all()  # pass 1 blanks the first block ...
    assert not blanked[0, :2, 2:4].any()  # ... and not its neighbours
    assert not blanked[0, 2:4, :2].any()
    torch.testing.assert_close(combined[0, 0], (blanked.float() * torch.arange(1.0, 5.0)[:, None, None]).sum(0))


def test_proxyano_profile_splits_the_forward_pass_by_module(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every timed part gets a row with its FLOPs; the parts' FLOPs add up to the whole pass's."""
    profile = load_script("proxyano_profile")
    monkeypatch.setattr("sys.argv", ["proxyano_profile.py", "--sizes", "32", "--batch-size", "2", "--repeats", "1"])
    profile.main()
    printed = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in printed.splitlines() if line.startswith(("pem.", "irm."))}
    assert sorted(rows) == ["irm.decoder", "irm.encoder", "pem.decoder", "pem.encoder", "pem.memory"]
    assert all(float(values[2]) > 0 for values in rows.values())  # MFLOP per image
    header = next(line for line in printed.splitlines() if line.startswith("== 32 px"))
    total = float(header.split(", ")[1].split()[0])
    parts = sum(float(values[2]) for values in rows.values())
    assert abs(total - parts) < 1.0  # the scoring head is a fraction of a MFLOP


@pytest.mark.slow
def test_loader_hang_script_reports_finished_and_stuck_variants(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A variant that trains within its deadline counts as finished; one past it is dumped, killed and reported."""
    hang = load_script("loader_hang")
    monkeypatch.setenv("PROXYANO_PLUGIN_CACHE", str(tmp_path))  # the demo's cache
    argv = ["loader_hang.py", "--variants", "fork", "--workers", "1", "--batches", "2"]
    monkeypatch.setattr("sys.argv", [*argv[:3], "fork-persistent", *argv[3:], "--parallel", "--deadline", "300"])
    assert hang.main() == 0
    printed = capsys.readouterr().out
    assert "fork               yes" in printed
    assert "fork-persistent    yes" in printed
    monkeypatch.setattr("sys.argv", [*argv, "--deadline", "0.5"])  # too short to even import torch
    assert hang.main() == 1
    printed = capsys.readouterr().out
    assert "fork               NO" in printed
    assert '"stacks": ' in printed
    assert '"stacks": null' not in printed
    assert '"dev_shm_total_mb"' in printed


@pytest.mark.slow
def test_onnx_ab_times_exported_models_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two exported models, timed round-robin: one row each, the first at 1.00x; a folder with no graph is refused."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    ab = load_script("onnx_ab")
    exports = {
        "proxyano": ["ProxyAno", "--set", "widths=[4, 8]", "--set", "memory_size=8", "--set", "space_to_depth=2"],
        "autoencoder": ["Autoencoder", "--set", "base_width=4", "--set", "hidden_size=32"],
    }
    for name, arguments in exports.items():
        monkeypatch.setattr("sys.argv", ["onnx_ab.py", "export", *arguments, "--output", str(tmp_path / name)])
        ab.main()
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "slice.png"), (255 * head_slice(0)).astype(np.uint8))
    capsys.readouterr()
    folders = [str(tmp_path / name) for name in exports]
    timing = ["time", *folders, "--rounds", "2", "--runs-per-round", "1", "--batch-size", "2", "--images", str(images)]
    monkeypatch.setattr("sys.argv", ["onnx_ab.py", *timing])
    ab.main()
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [row[0] for row in rows] == folders
    assert rows[0][-1] == "1.00x"
    assert all(float(row[1]) > 0 for row in rows)
    monkeypatch.setattr("sys.argv", ["onnx_ab.py", "time", str(images)])
    with pytest.raises(SystemExit, match=r"must hold exactly one \.onnx file"):
        ab.main()
