"""The anomalib datamodules: BrainMRIDemo, SplitCSV and CheckedFolder, from Python and from CLI configs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from testing_utils import REPO, parse_data

from proxyano_plugin.data import BrainMRIDemo, CheckedFolder, DatasetError, SplitCSV, read_split_csv
from proxyano_plugin.data.demo_generator import subject_images

SHARED_DATA = Path(os.environ.get("PROXYANO_SHARED_DATA") or REPO.parent / "shared" / "data")
BRAIN_TUMOR_MRI = SHARED_DATA / "brain_tumor_mri"
TINY = {"train_subjects": 2, "test_subjects": 2, "slices_per_subject": 4}


def write_png(path: Path, value: int = 100, size: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path)


# BrainMRIDemo ---------------------------------------------------------------------------------------


def test_demo_setup_without_prepare_data_gives_anomalib_batches(tmp_path: Path) -> None:
    datamodule = BrainMRIDemo(root=tmp_path, **TINY, train_batch_size=4, eval_batch_size=16)
    datamodule.setup()  # prepare_data skipped, as on non-zero ranks
    assert (datamodule.dataset_dir / "manifest.json").is_file()
    assert datamodule.dataset_dir.parent == tmp_path
    assert len(datamodule.train_data) == 8
    assert len(datamodule.val_data) + len(datamodule.test_data) == 8
    for subset in (datamodule.val_data, datamodule.test_data):
        assert subset.has_anomalous
        assert subset.has_normal

    batch = next(iter(datamodule.train_dataloader()))
    assert batch.image.shape == (4, 3, 128, 128)
    assert batch.image.dtype == torch.float32
    assert torch.equal(batch.image[:, 0], batch.image[:, 2])  # grayscale replicated, as anomalib does
    assert not batch.gt_label.any()

    batch = next(iter(datamodule.test_dataloader()))
    assert batch.gt_mask.shape == (len(batch.image), 128, 128)
    for label, mask in zip(batch.gt_label, batch.gt_mask, strict=True):
        assert bool(mask.any()) == bool(label)
    assert set(torch.unique(batch.gt_mask).tolist()) <= {0, 1}


def test_demo_reuses_its_tree_and_keys_it_by_parameters(tmp_path: Path) -> None:
    first = BrainMRIDemo(root=tmp_path, **TINY)
    first.prepare_data()
    stamp = (first.dataset_dir / "manifest.json").stat().st_mtime_ns
    second = BrainMRIDemo(root=tmp_path, **TINY)
    second.prepare_data()
    assert second.dataset_dir == first.dataset_dir
    assert (second.dataset_dir / "manifest.json").stat().st_mtime_ns == stamp
    assert BrainMRIDemo(root=tmp_path, **{**TINY, "lesion_fraction": 0.25}).dataset_dir != first.dataset_dir


def test_demo_lesion_validation_uses_further_training_subjects(tmp_path: Path) -> None:
    """Label-free validation: new normal subjects, half their slices painted; train and test sets stay whole."""
    datamodule = BrainMRIDemo(root=tmp_path, **TINY, val_split_mode="lesions", val_subjects=3, eval_batch_size=16)
    datamodule.setup()

    assert datamodule.label_free_validation
    assert (len(datamodule.train_data), len(datamodule.test_data), len(datamodule.val_data)) == (8, 8, 12)
    samples = datamodule.val_data.samples
    assert int(samples.label_index.sum()) == 6
    trained_on = {Path(path).name for path in datamodule.train_data.samples.image_path}
    sources = {Path(source).name for source in samples.source}
    assert {name[:5] for name in sources} == {"tr002", "tr003", "tr004"}  # subjects 0-1 are the training set
    assert not sources & trained_on
    batch = next(iter(datamodule.val_dataloader()))
    assert batch.image.shape[-2:] == (128, 128)
    assert all(bool(mask.any()) == bool(label) for label, mask in zip(batch.gt_label, batch.gt_mask, strict=True))

    table = Path(samples.image_path[0]).parents[1] / "samples.csv"
    stamp = table.stat().st_mtime_ns
    BrainMRIDemo(root=tmp_path, **TINY, val_split_mode="lesions", val_subjects=3).setup()
    assert table.stat().st_mtime_ns == stamp  # painted once, then reused
    with pytest.raises(ValueError, match="val_subjects must be at least 1"):
        BrainMRIDemo(root=tmp_path, **TINY, val_split_mode="lesions", val_subjects=0)


def test_demo_validation_lesions_before_the_scan_are_scanned_like_the_test_lesions(tmp_path: Path) -> None:
    """Lesions put into the anatomy before the simulated scan: the same subjects, their own cached set, and
    exactly the images the generator scans with a lesion, as it scans the test subjects."""
    after = BrainMRIDemo(root=tmp_path, **TINY, val_split_mode="lesions", val_subjects=3)
    before = BrainMRIDemo(root=tmp_path, **TINY, val_split_mode="lesions", val_subjects=3, val_lesions_before_scan=True)
    after.setup()
    before.setup()
    samples = before.val_data.samples
    assert (len(samples), int(samples.label_index.sum())) == (12, 6)
    assert {Path(source).name[:5] for source in samples.source} == {"tr002", "tr003", "tr004"}
    assert Path(samples.image_path[0]).parent != Path(after.val_data.samples.image_path[0]).parent

    scanned = [image for number in (2, 3, 4) for image in subject_images(before.spec, "train", number, 0.5)]
    for row, expected in zip(samples.itertuples(), scanned, strict=True):
        assert np.array_equal(np.asarray(Image.open(row.image_path)), expected.image)
        mask = np.asarray(Image.open(row.mask_path)) > 0 if row.mask_path else np.zeros_like(expected.image, bool)
        assert np.array_equal(mask, expected.mask if expected.mask is not None else np.zeros_like(mask))
    # the default (no lesion in training subjects, the spec's share in test subjects) is unchanged
    assert all(image.mask is None for image in subject_images(before.spec, "train", 0))
    assert sum(image.mask is not None for image in subject_images(before.spec, "test", 0)) == 2


def test_demo_from_the_shipped_config_and_by_bare_name(tmp_path: Path) -> None:
    config = REPO / "configs" / "data" / "brain_mri_demo.yaml"
    from_config = parse_data("--config", str(config), "--data.root", str(tmp_path), "--data.seed", "3")
    assert isinstance(from_config, BrainMRIDemo)
    assert from_config.spec.seed == 3
    assert from_config.spec.lesion_area == (0.01, 0.08)
    assert from_config.train_batch_size == 8
    shipped = yaml.safe_load(config.read_text())
    assert shipped["trainer"] == {"max_epochs": 90}  # the demo's epochs, chosen on its validation set
    by_name = parse_data("--data", "BrainMRIDemo", "--data.root", str(tmp_path), "--data.lesion_area", "[0.02, 0.05]")
    assert by_name.spec.lesion_area == (0.02, 0.05)


# SplitCSV -------------------------------------------------------------------------------------------

HEADER = "file,label,split,class\n"


@pytest.fixture
def csv_tree(tmp_path: Path) -> Path:
    """6 normal and 4 abnormal images; splits/basic.csv trains on 4 normals and tests on the rest."""
    rows = []
    for index in range(6):
        write_png(tmp_path / "normal" / f"n{index}.png", value=60)
        rows.append(f"normal/n{index}.png,0,{'train' if index < 4 else 'test'},healthy")
    for index in range(4):
        write_png(tmp_path / "abnormal" / f"a{index}.png", value=200)
        rows.append(f"abnormal/a{index}.png,1,test,tumour")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "basic.csv").write_text(HEADER + "\n".join(rows) + "\n")
    return tmp_path


def test_split_csv_builds_the_splits(csv_tree: Path) -> None:
    datamodule = SplitCSV(root=csv_tree, split_csv="basic", num_workers=0, eval_batch_size=16, seed=0)
    assert datamodule.name == csv_tree.name
    assert datamodule.category == "basic"
    datamodule.setup()
    assert len(datamodule.train_data) == 4
    assert len(datamodule.val_data) + len(datamodule.test_data) == 6
    assert datamodule.val_data.has_anomalous
    batch = next(iter(datamodule.test_dataloader()))
    assert batch.image.shape[1:] == (3, 24, 24)
    assert batch.gt_mask is None  # image-level labels only
    assert batch.gt_label.any()


def test_split_csv_with_masks_is_a_segmentation_dataset(csv_tree: Path) -> None:
    lines = (csv_tree / "splits" / "basic.csv").read_text().splitlines()
    rows = [
        line + ("," + line.split(",")[0].replace("abnormal/", "masks/") if ",1," in line else ",") for line in lines[1:]
    ]
    for index in range(4):
        write_png(csv_tree / "masks" / f"a{index}.png", value=255)
    (csv_tree / "masks.csv").write_text(lines[0] + ",mask\n" + "\n".join(rows) + "\n")
    datamodule = SplitCSV(root=csv_tree, split_csv=csv_tree / "masks.csv", num_workers=0)
    datamodule.setup()
    assert datamodule.task == "segmentation"


def test_split_csv_from_the_shipped_config(csv_tree: Path) -> None:
    config = REPO / "configs" / "data" / "brain_tumor_mri.yaml"
    datamodule = parse_data("--config", str(config), "--data.root", str(csv_tree), "--data.split_csv", "basic")
    assert isinstance(datamodule, SplitCSV)
    assert datamodule.split_csv == csv_tree / "splits" / "basic.csv"


def test_split_csv_skips_an_unreadable_image_once_and_logs_a_summary(
    csv_tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = csv_tree / "normal" / "n1.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    datamodule = SplitCSV(root=csv_tree, split_csv="basic", num_workers=0)
    with caplog.at_level(logging.INFO, logger="proxyano_plugin"):
        datamodule.setup()
        datamodule.setup()
    messages = [record.getMessage() for record in caplog.records if record.name.startswith("proxyano_plugin")]
    assert len(messages) == 2  # one warning, one summary: the check runs once
    assert messages[0].startswith(f"train normal image {broken} cannot be read")
    assert messages[0].endswith("(skipped)")
    assert messages[1].startswith("dataset: train normal 3, test normal 2, test abnormal 4 readable images")
    assert len(datamodule.train_data) == 3
    with pytest.raises(DatasetError, match=f"train normal image {broken} cannot be read"):
        SplitCSV(root=csv_tree, split_csv="basic", strict=True).setup()


def test_split_csv_pixel_metrics_without_masks_names_the_first_abnormal_image(csv_tree: Path) -> None:
    with pytest.raises(DatasetError) as error:
        SplitCSV(root=csv_tree, split_csv="basic", pixel_metrics=True).setup()
    assert str(error.value).startswith(
        f"pixel metrics are requested but the 4 abnormal test images of {csv_tree / 'splits' / 'basic.csv'} have no "
        f"masks (first: {csv_tree / 'abnormal' / 'a0.png'})"
    )


def test_split_csv_mask_of_another_size_names_mask_and_image(csv_tree: Path) -> None:
    lines = (csv_tree / "splits" / "basic.csv").read_text().splitlines()
    rows = [line + (",masks/" + line.split("/")[1].split(",")[0] if ",1," in line else ",") for line in lines[1:]]
    for index in range(4):
        write_png(csv_tree / "masks" / f"a{index}.png", value=255, size=24 if index else 12)
    (csv_tree / "masks.csv").write_text(lines[0] + ",mask\n" + "\n".join(rows) + "\n")
    with pytest.raises(DatasetError) as error:
        SplitCSV(root=csv_tree, split_csv=csv_tree / "masks.csv").setup()
    mask, image = csv_tree / "masks" / "a0.png", csv_tree / "abnormal" / "a0.png"
    assert str(error.value) == f"mask {mask} is 12x12 but its image {image} is 24x24: resize the mask"


def edit_csv(tree: Path, old: str, new: str) -> Path:
    path = tree / "splits" / "basic.csv"
    path.write_text(path.read_text().replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("normal/n1.png,0,train", "normal/gone.png,0,train", "line 3: file normal/gone.png not found under"),
        (
            "normal/n1.png,0,train",
            "normal/n1.png,1,train",
            "line 3: normal/n1.png is abnormal (label 1) but in the train",
        ),
        ("normal/n1.png,0,train", "normal/n1.png,2,train", "line 3: label '2' must be 0 (normal) or 1 (abnormal)"),
        ("normal/n1.png,0,train", "normal/n1.png,0,valid", "line 3: split 'valid' must be one of train, test"),
        ("normal/n1.png,0,train", "normal/n0.png,0,train", "line 3: normal/n0.png is listed twice (first on line 2)"),
        ("file,label,split", "path,label,split", "missing column(s) file"),
    ],
)
def test_split_csv_errors_name_the_file_and_line(csv_tree: Path, old: str, new: str, expected: str) -> None:
    path = edit_csv(csv_tree, old, new)
    with pytest.raises(DatasetError) as error:
        read_split_csv(csv_tree, "basic")
    assert str(error.value).startswith(str(path))
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_split_csv_reports_every_bad_line(csv_tree: Path) -> None:
    edit_csv(csv_tree, "normal/n1.png", "normal/x1.png")
    edit_csv(csv_tree, "normal/n2.png", "normal/x2.png")
    with pytest.raises(DatasetError) as error:
        read_split_csv(csv_tree, "basic")
    assert [problem.kind for problem in error.value.problems] == ["missing_file", "missing_file"]
    assert "line 4: file normal/x2.png" in str(error.value).splitlines()[1]


def test_split_csv_file_linked_outside_the_root_is_named_with_the_fix(
    csv_tree: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """anomalib refuses such a file with a bare 'Access denied'; the CSV check names it and says what to do."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    common = Path(os.path.commonpath([csv_tree, elsewhere]))
    (csv_tree / "normal" / "n1.png").rename(elsewhere / "n1.png")
    (csv_tree / "normal" / "n1.png").symlink_to(elsewhere / "n1.png")
    inside = csv_tree / "normal" / "n2.png"
    inside.rename(csv_tree / "n2-real.png")
    inside.symlink_to(csv_tree / "n2-real.png")  # a link that stays under root is fine
    path = csv_tree / "splits" / "basic.csv"

    with pytest.raises(DatasetError) as error:
        SplitCSV(root=csv_tree, split_csv="basic").setup()

    assert [problem.kind for problem in error.value.problems] == ["outside_root"]
    assert str(error.value) == (
        f"{path} line 3: normal/n1.png is a link to {elsewhere / 'n1.png'}, outside root {csv_tree}, and anomalib "
        f"reads only files under its root: copy the files into {csv_tree}, or set root to {common} (a folder "
        "above both) with paths relative to it"
    )


def test_split_csv_missing_root_or_csv(csv_tree: Path) -> None:
    with pytest.raises(DatasetError, match=f"dataset root {csv_tree / 'nope'} does not exist"):
        SplitCSV(root=csv_tree / "nope", split_csv="basic")
    with pytest.raises(DatasetError, match=r"split CSV other not found .*; available in .*splits: basic\.csv"):
        SplitCSV(root=csv_tree, split_csv="other")


@pytest.mark.skipif(not BRAIN_TUMOR_MRI.is_dir(), reason=f"{BRAIN_TUMOR_MRI} absent (set PROXYANO_SHARED_DATA)")
@pytest.mark.parametrize(("split_csv", "train", "test"), [("medianomaly", 1000, 1200), ("dedup_seed0", 566, 939)])
def test_split_csv_on_brain_tumor_mri(split_csv: str, train: int, test: int) -> None:
    datamodule = SplitCSV(root=BRAIN_TUMOR_MRI, split_csv=split_csv, num_workers=0, eval_batch_size=4, seed=0)
    datamodule.setup()
    assert len(datamodule.train_data) == train
    assert len(datamodule.val_data) + len(datamodule.test_data) == test
    assert datamodule.val_data.has_anomalous
    assert next(iter(datamodule.val_dataloader())).image.shape == (4, 3, 224, 224)


# CheckedFolder --------------------------------------------------------------------------------------


@pytest.fixture
def folder_tree(tmp_path: Path) -> Path:
    for index in range(4):
        write_png(tmp_path / "good" / f"g{index}.png")
    for index in range(2):
        write_png(tmp_path / "bad" / f"b{index}.png", value=220)
        write_png(tmp_path / "mask" / f"b{index}.png", value=255)
    (tmp_path / "good" / "g1.png").write_bytes((tmp_path / "good" / "g0.png").read_bytes()[:40])  # truncated
    return tmp_path


def checked_folder(root: Path, **overrides: object) -> CheckedFolder:
    arguments = {"name": "tiny", "root": root, "normal_dir": "good", "abnormal_dir": "bad", "mask_dir": "mask"}
    return CheckedFolder(**{**arguments, "num_workers": 0, "train_batch_size": 8, **overrides})


def test_checked_folder_skips_unreadable_images_once(folder_tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    datamodule = checked_folder(folder_tree)
    with caplog.at_level(logging.WARNING, logger="proxyano_plugin"):
        datamodule.setup()
        datamodule.setup()
    warnings = [record.getMessage() for record in caplog.records if record.name.startswith("proxyano_plugin")]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"normal image {folder_tree / 'good' / 'g1.png'} cannot be read")
    assert str(folder_tree / "good" / "g1.png") not in set(datamodule.train_data.samples.image_path)
    assert len(next(iter(datamodule.train_dataloader())).image) == 3


def test_checked_folder_strict_raises_on_unreadable_images(folder_tree: Path) -> None:
    with pytest.raises(DatasetError, match=str(folder_tree / "good" / "g1.png")):
        checked_folder(folder_tree, strict=True).setup()


def test_checked_folder_names_a_missing_folder_and_a_missing_mask(folder_tree: Path) -> None:
    with pytest.raises(DatasetError, match=f"normal_dir {folder_tree / 'normals'} does not exist"):
        checked_folder(folder_tree, normal_dir="normals").setup()
    (folder_tree / "mask" / "b1.png").unlink()
    with pytest.raises(DatasetError, match=f"abnormal image {folder_tree / 'bad' / 'b1.png'} has no mask"):
        checked_folder(folder_tree).setup()


def test_checked_folder_by_bare_name(folder_tree: Path) -> None:
    datamodule = parse_data(
        "--data", "CheckedFolder", "--data.name", "tiny", "--data.root", str(folder_tree),
        "--data.normal_dir", "good", "--data.strict", "true",
    )  # fmt: skip
    assert isinstance(datamodule, CheckedFolder)
    assert datamodule.strict


def test_checked_folder_skips_a_float_tiff_with_nan_and_logs_the_summary(
    folder_tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (folder_tree / "good" / "g1.png").unlink()  # the truncated one of the fixture
    nan = np.full((24, 24), 0.5, np.float32)
    nan[0, 0] = np.nan
    Image.fromarray(nan).save(folder_tree / "good" / "g9.tif")
    datamodule = checked_folder(folder_tree)
    with caplog.at_level(logging.INFO, logger="proxyano_plugin"):
        datamodule.setup()
    messages = [record.getMessage() for record in caplog.records if record.name.startswith("proxyano_plugin")]
    assert messages[0] == (
        f"normal image {folder_tree / 'good' / 'g9.tif'} holds 1 NaN or infinite value(s): "
        "replace them (e.g. with 0) or delete the file (skipped)"
    )
    assert messages[1].startswith("dataset: normal_dir 3, abnormal_dir 2 readable images, 2 masks (1 skipped")
    assert "intensity: normal_dir 100 to 100, abnormal_dir 220 to 220" in messages[1]
    assert datamodule.summary is not None
    assert len(datamodule.train_data) == 3


def test_checked_folder_pixel_metrics_without_masks(folder_tree: Path) -> None:
    with pytest.raises(DatasetError, match=f"the 2 abnormal images in {folder_tree / 'bad'} have no masks"):
        checked_folder(folder_tree, mask_dir=None, pixel_metrics=True).setup()
