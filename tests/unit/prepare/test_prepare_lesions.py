"""proxyano-prepare lesions: synthetic lesions painted into a split's own normal test images."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from proxyano_plugin.bench.report import LESION_SIZE_COLUMN, TRAINING_COPY_COLUMN
from proxyano_plugin.data.split_csv import read_split_csv
from proxyano_plugin.prepare import LesionOptions, PrepareError, paint_lesions
from proxyano_plugin.prepare.cli import main
from proxyano_plugin.prepare.lesions import COPY_COLUMN, head_maps, read_gray

SIZE = 64


def head_slice(seed: int, dtype: type = np.uint8) -> np.ndarray:
    """A dark background, a bright skull ring and a textured ellipse of tissue: a crude axial slice."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1 : 1 : SIZE * 1j, -1 : 1 : SIZE * 1j]
    radius = np.hypot(x / 0.8, y / 0.9)
    image = np.where(radius < 0.85, 0.45 + 0.15 * np.sin(9 * x) * np.cos(7 * y), 0.0)
    image = np.where((radius >= 0.85) & (radius < 1.0), 0.9, image) + 0.02 * rng.standard_normal(image.shape)
    scale = np.iinfo(dtype).max
    return np.rint(np.clip(image, 0, 1) * scale).astype(dtype)


def make_split(root: Path, train: int = 3, test_normal: int = 4, test_abnormal: int = 2) -> Path:
    """``root/images/*.png`` and ``root/splits/toy.csv`` in SplitCSV's format (abnormal images are noise)."""
    (root / "images").mkdir(parents=True)
    rows = []
    for index, (split, label) in enumerate(
        [("train", 0)] * train + [("test", 0)] * test_normal + [("test", 1)] * test_abnormal
    ):
        name = f"images/{split}_{index:02d}.png"
        image = head_slice(index) if label == 0 else np.full((SIZE, SIZE), 7, np.uint8)
        cv2.imwrite(str(root / name), image)
        rows.append({"file": name, "label": label, "split": split})
    (root / "splits").mkdir()
    with (root / "splits" / "toy.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def manifest(out: Path) -> list[dict[str, str]]:
    with (out / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_tree_layout_masks_and_manifest(tmp_path: Path) -> None:
    source = make_split(tmp_path / "source")
    out = tmp_path / "out"

    summary = paint_lesions(source, "toy", out, LesionOptions(lesion_fraction=0.5, seed=3))

    assert summary.images == {"train/good": 3, "test/good": 2, "test/abnormal": 2}
    assert summary.dropped_source_abnormal == 2
    assert sum(summary.lesion_kinds.values()) == 2
    rows = manifest(out)
    # The tree reads back as a split CSV with a mask for every abnormal image, and anomalib's Folder
    # pairing rule holds: the mask has the image's own file name.
    samples = read_split_csv(out, "manifest.csv")
    assert (samples.label_index == 1).sum() == 2
    for row in rows:
        image = cv2.imread(str(out / row["file"]), cv2.IMREAD_UNCHANGED)
        original = cv2.imread(str(source / row["source"]), cv2.IMREAD_UNCHANGED)
        if row["label"] == "0":
            assert row["mask"] == ""
            np.testing.assert_array_equal(image, original)  # normals are copied unchanged
            continue
        assert Path(row["mask"]).name == Path(row["file"]).name
        mask = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED) > 0
        _, head = head_maps(original.astype(np.float32) / 255)
        assert mask.any()
        assert not (mask & ~head).any()  # lesions stay inside the (eroded) head
        assert np.abs(image.astype(int) - original)[mask].mean() > 5  # and change what they cover
        assert 0.0 < float(row["lesion_area_fraction"]) < 0.2
        # the column the report bins into size terciles: pixels of a 256 x 256 frame, as lgg_flair gives it
        assert int(row[LESION_SIZE_COLUMN]) == round(mask.mean() * 256 * 256)
    assert all(row["mask_pixels_256"] == "" for row in rows if row["label"] == "0")
    assert {row["source"] for row in rows}.isdisjoint({"images/test_07.png", "images/test_08.png"})


def test_manifest_marks_test_images_whose_source_copies_a_training_image(tmp_path: Path) -> None:
    source = make_split(tmp_path / "source")
    test_normal = sorted((source / "images").glob("test_0[3-6].png"))
    for index, path in enumerate(test_normal):  # distinct from the training slices: dimmer
        cv2.imwrite(str(path), (head_slice(index + 3) * (0.5 + 0.1 * index)).astype(np.uint8))
    mirrored = cv2.imread(str(source / "images" / "train_00.png"), cv2.IMREAD_UNCHANGED)[:, ::-1]
    cv2.imwrite(str(test_normal[2]), mirrored)

    summary = paint_lesions(source, "toy", tmp_path / "out", LesionOptions(lesion_fraction=0.5, seed=3))

    assert COPY_COLUMN == TRAINING_COPY_COLUMN  # the column the report's stratum reads
    copies = {row["source"]: row[COPY_COLUMN] for row in manifest(tmp_path / "out") if row["split"] == "test"}
    assert copies == {f"images/{path.name}": "1" if path == test_normal[2] else "0" for path in test_normal}
    assert summary.test_training_copies == 1
    assert all(row[COPY_COLUMN] == "" for row in manifest(tmp_path / "out") if row["split"] == "train")


def test_same_seed_same_tree_other_seed_other_lesions(tmp_path: Path) -> None:
    source = make_split(tmp_path / "source")

    def abnormal_bytes(out: Path) -> dict[str, bytes]:
        return {row["source"]: (out / row["file"]).read_bytes() for row in manifest(out) if row["label"] == "1"}

    paint_lesions(source, "toy", tmp_path / "a", LesionOptions(seed=1))
    paint_lesions(source, "toy", tmp_path / "b", LesionOptions(seed=1))
    paint_lesions(source, "toy", tmp_path / "c", LesionOptions(seed=2))

    assert abnormal_bytes(tmp_path / "a") == abnormal_bytes(tmp_path / "b")
    assert abnormal_bytes(tmp_path / "a") != abnormal_bytes(tmp_path / "c")


def test_sixteen_bit_and_gray_rgb_images_are_read_colour_refused(tmp_path: Path) -> None:
    image = head_slice(0, np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), image)
    gray = head_slice(1)
    cv2.imwrite(str(tmp_path / "rgb.png"), np.dstack([gray] * 3))
    colour = np.dstack([gray, gray, 255 - gray])
    cv2.imwrite(str(tmp_path / "colour.png"), colour)

    np.testing.assert_allclose(read_gray(tmp_path / "deep.png"), image / 65535.0, atol=1e-6)
    np.testing.assert_allclose(read_gray(tmp_path / "rgb.png"), gray / 255.0, atol=1e-6)
    with pytest.raises(PrepareError, match="colour image"):
        read_gray(tmp_path / "colour.png")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (LesionOptions(lesion_fraction=1.0), "--lesion-fraction"),
        (LesionOptions(lesion_area=(0.2, 0.1)), "--lesion-area"),
    ],
)
def test_invalid_options_are_named(tmp_path: Path, options: LesionOptions, message: str) -> None:
    with pytest.raises(PrepareError, match=message):
        paint_lesions(make_split(tmp_path / "source"), "toy", tmp_path / "out", options)
    assert not (tmp_path / "out").exists()


def test_bad_inputs_name_the_file_and_write_nothing(tmp_path: Path) -> None:
    source = make_split(tmp_path / "source")
    with pytest.raises(PrepareError, match="split CSV nope not found"):
        paint_lesions(source, "nope", tmp_path / "out")
    with pytest.raises(PrepareError, match="at least 2"):
        paint_lesions(make_split(tmp_path / "one", test_normal=1), "toy", tmp_path / "out")

    (source / "images" / "test_03.png").write_bytes(b"not a png")
    with pytest.raises(PrepareError, match=r"test_03\.png cannot be decoded"):
        paint_lesions(source, "toy", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out-*"))  # no staging folder left behind


def test_blank_slice_cannot_host_a_lesion(tmp_path: Path) -> None:
    source = make_split(tmp_path / "source", test_normal=2)
    for name in ("test_03.png", "test_04.png"):
        cv2.imwrite(str(source / "images" / name), np.zeros((SIZE, SIZE), np.uint8))

    with pytest.raises(PrepareError, match="no head region"):
        paint_lesions(source, "toy", tmp_path / "out")


def test_cli_prints_the_summary_and_refuses_an_existing_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make_split(tmp_path / "source")
    args = ["lesions", "--root", str(source), "--split-csv", "toy", "--output", str(tmp_path / "out")]

    assert main([*args, "--lesion-area", "0.02", "0.05"]) == 0
    assert "test/abnormal 2" in capsys.readouterr().out
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--seed", "5"]) == 0
