"""The shipped dataset recipes (configs/data/*.yaml): each layout, built tiny in tmp_path, loads and sets up.

Every config is parsed as ``anomalib train --data configs/data/X.yaml --data.root ...`` parses it, and
the ``proxyano-prepare`` commands quoted in its comments are run as written (from the folder they assume).
"""

from __future__ import annotations

import json
import logging
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import AnomalibDataModule
from jsonargparse import ArgumentParser
from PIL import Image
from testing_utils import REPO

from proxyano_plugin.data import CheckedFolder, DatasetError, SplitCSV
from proxyano_plugin.prepare import PrepareError, merge_masks
from proxyano_plugin.prepare.cli import main as prepare

CONFIGS = REPO / "configs" / "data"


def write_image(path: Path, size: tuple[int, int] = (24, 24), value: int = 100, colour: bool = False) -> Path:
    """A small image (width, height) with a gradient, so that it is not constant."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    ramp = np.linspace(0, 60, width * height).reshape(height, width)
    gray = np.clip(ramp + value, 0, 255).astype(np.uint8)
    Image.fromarray(np.stack([gray, gray // 2, gray // 3], axis=2) if colour else gray).save(path)
    return path


def write_mask(path: Path, box: tuple[int, int, int, int], size: tuple[int, int] = (24, 24)) -> Path:
    """A binary mask with the rectangle ``box`` = (top, left, bottom, right) set to 255."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(size[::-1], np.uint8)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = 255
    Image.fromarray(mask).save(path)
    return path


def load(config: str, *overrides: str) -> AnomalibDataModule:
    """The datamodule of a shipped config, as ``anomalib train --data CONFIG ...overrides`` builds it."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(AnomalibDataModule, "data")
    arguments = ["--data", str(CONFIGS / config), *overrides, "--data.num_workers", "0", "--data.eval_batch_size", "4"]
    return parser.instantiate_classes(parser.parse_args(arguments)).data


def commands_in(config: str, program: str) -> list[list[str]]:
    """The ``program`` command lines quoted in a config's comments (continuation lines joined)."""
    text = " ".join(
        line.lstrip("# ").rstrip("\\ ") if line.rstrip().endswith("\\") else line.lstrip("# ") + "\n"
        for line in (CONFIGS / config).read_text().splitlines()
        if line.startswith("#")
    )
    return [shlex.split(command)[1:] for command in re.findall(rf"^ *({program} .*)$", text, re.MULTILINE)]


def split_sizes(datamodule: AnomalibDataModule) -> dict[str, dict[int, int]]:
    """Images per label (0 normal, 1 abnormal) in each subset after setup."""
    datamodule.setup()
    sizes = {}
    for subset in ("train", "val", "test"):
        labels = getattr(datamodule, f"{subset}_data").samples.label_index.astype(int)
        sizes[subset] = {int(label): int(count) for label, count in labels.value_counts().items()}
    return sizes


def test_every_shipped_recipe_is_tested() -> None:
    tested_elsewhere = {
        "brain_mri_demo.yaml",
        "brain_tumor_mri.yaml",
        "lgg_flair.yaml",
    }  # data modules, lesion validation
    recipes = {path.name for path in CONFIGS.glob("*.yaml")} - tested_elsewhere
    tested = set(re.findall(r'"(\w+\.yaml)"', Path(__file__).read_text()))
    assert recipes <= tested


# BraTS 2021 -----------------------------------------------------------------------------------------


def write_brats(root: Path, subjects: int = 3) -> None:
    """BraTS 2021 layout: <subject>/<subject>_{t1,t1ce,t2,flair,seg}.nii.gz; 155 axial slices of 16x16."""
    nibabel = pytest.importorskip("nibabel")
    shape = (16, 16, 155)
    x, y = np.meshgrid(np.linspace(-1, 1, 16), np.linspace(-1, 1, 16), indexing="ij")
    head = ((x**2 + y**2) < 0.8)[..., None] & (np.arange(155) >= 20)[None, None, :] & (np.arange(155) < 140)
    rng = np.random.default_rng(0)
    for index in range(subjects):
        name = f"BraTS2021_{index:05d}"
        (root / name).mkdir(parents=True)
        label = np.zeros(shape, np.uint8)
        label[5:10, 5:10, 80:90] = 2  # 25 px (above --min-lesion-area) on 10 slices
        for modality in ("t1", "t1ce", "t2", "flair"):
            volume = head * (500 + 100 * rng.random(shape)) + 300 * (label > 0)
            nibabel.save(
                nibabel.Nifti1Image(volume.astype(np.float32), np.eye(4)), root / name / f"{name}_{modality}.nii.gz"
            )
        nibabel.save(nibabel.Nifti1Image(label, np.eye(4)), root / name / f"{name}_seg.nii.gz")


def test_brats2021_slices_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_brats(tmp_path / "BraTS2021_Training_Data")
    monkeypatch.chdir(tmp_path)
    [command] = commands_in("brats2021_slices.yaml", "proxyano-prepare")
    assert prepare(command) == 0
    output = tmp_path / "datasets" / "brats2021_flair_128"
    manifest = (output / "manifest.csv").read_text().splitlines()[1:]
    assert all("_flair.nii.gz" in row for row in manifest)  # one modality per run
    counts = json.loads((output / "prepare.json").read_text())["summary"]["slices"]
    # 90 slices per subject, 10 with tumour: 2 train subjects give 2 x 80 normal slices, 1 test subject 80 + 10
    assert counts == {"train/good": 160, "test/good": 80, "test/abnormal": 10}

    datamodule = load("brats2021_slices.yaml")  # the config's root is the command's --output
    assert isinstance(datamodule, CheckedFolder)
    sizes = split_sizes(datamodule)
    assert sizes["train"] == {0: 160}
    assert sizes["val"][0] + sizes["test"][0] == 80
    assert sizes["val"][1] + sizes["test"][1] == 10
    assert datamodule.task == "segmentation"
    batch = next(iter(datamodule.test_dataloader()))
    assert batch.gt_mask.shape[-2:] == (128, 128)


# BMAD (Brain, Liver) and RESC ---------------------------------------------------------------------


def write_bmad(root: Path, images_in_img: bool) -> None:
    """BMAD layout: train/good, valid/..., test/good/img, test/Ungood/img + label (masks named like images)."""
    train = root / "train" / "good" / ("img" if images_in_img else "")
    for index in range(5):
        write_image(train / f"{index:05d}_60.png")
    for split, offset in (("valid", 100), ("test", 200)):
        for index in range(3):
            write_image(root / split / "good" / "img" / f"{offset + index:05d}_70.png")
        for index in range(2):
            write_image(root / split / "Ungood" / "img" / f"{offset + index:05d}_80.png", value=150)
            write_mask(root / split / "Ungood" / "label" / f"{offset + index:05d}_80.png", (4, 4, 12, 12))


@pytest.mark.parametrize(
    ("config", "images_in_img"), [("bmad_brain.yaml", True), ("bmad_liver.yaml", False), ("resc.yaml", False)]
)
def test_bmad_recipes(tmp_path: Path, config: str, images_in_img: bool) -> None:
    write_bmad(tmp_path, images_in_img)
    datamodule = load(config, "--data.root", str(tmp_path))
    sizes = split_sizes(datamodule)
    assert sizes["train"] == {0: 5}
    assert sizes["test"] == sizes["val"] == {0: 3, 1: 2}  # the official test set, whole; valid/ unused
    assert set(datamodule.test_data.samples.image_path.map(lambda path: Path(path).parts[-4])) == {"test"}
    batch = next(iter(datamodule.test_dataloader()))
    for label, mask in zip(batch.gt_label, batch.gt_mask, strict=True):
        assert bool(mask.any()) == bool(label)


def test_bmad_recipe_names_a_missing_label_folder(tmp_path: Path) -> None:
    write_bmad(tmp_path, images_in_img=True)
    for mask in (tmp_path / "test" / "Ungood" / "label").iterdir():
        mask.unlink()
    (tmp_path / "test" / "Ungood" / "label").rmdir()
    with pytest.raises(DatasetError, match=f"mask_dir {tmp_path / 'test' / 'Ungood' / 'label'} does not exist"):
        load("bmad_brain.yaml", "--data.root", str(tmp_path)).setup()


# OCT2017 ------------------------------------------------------------------------------------------------


def test_oct2017_recipe(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    classes = {"NORMAL": 4, "CNV": 3, "DME": 2, "DRUSEN": 1}
    for split in ("train", "test"):
        for name, count in classes.items():
            for index in range(count):  # OCT scans come in several sizes
                size = (32, 24) if index % 2 else (24, 24)
                write_image(tmp_path / split / name / f"{name}-{index}-{index}.jpeg", size=size)
    datamodule = load("oct2017.yaml", "--data.root", str(tmp_path))
    assert datamodule.abnormal_dir == ["test/CNV", "test/DME", "test/DRUSEN"]  # a list, as anomalib 2.7 takes it
    with caplog.at_level(logging.INFO, logger="proxyano_plugin"):
        sizes = split_sizes(datamodule)
    assert sizes["train"] == {0: 4}
    assert sizes["val"][0] + sizes["test"][0] == 4
    assert sizes["val"][1] + sizes["test"][1] == 6  # CNV + DME + DRUSEN
    assert datamodule.task == "classification"  # image labels only: no pixel metrics
    messages = [record.getMessage() for record in caplog.records]
    [mixed] = [message for message in messages if message.startswith("images come in 2 sizes")]
    assert "24x24" in mixed
    assert "32x24" in mixed
    [summary] = [message for message in messages if message.startswith("dataset:")]
    assert "normal_dir 4, abnormal_dir 6, normal_test_dir 4 readable images" in summary


# MedIAnomaly ------------------------------------------------------------------------------------------


def test_medianomaly_recipe(tmp_path: Path) -> None:
    names = {key: [f"{key}_{index}.png" for index in range(count)] for key, count in (("n", 5), ("t", 3), ("a", 4))}
    for name in (*names["n"], *names["t"], *names["a"], "u_0.png"):
        write_image(tmp_path / "images" / name)
    split = {
        "train": {"0": names["n"], "unlabeled": {"0": ["u_0.png"], "1": []}},
        "test": {"0": names["t"], "1": names["a"]},
    }
    (tmp_path / "data.json").write_text(json.dumps(split))
    datamodule = load("medianomaly.yaml", "--data.root", str(tmp_path))
    assert isinstance(datamodule, SplitCSV)
    sizes = split_sizes(datamodule)
    assert sizes["train"] == {0: 5}  # the unlabeled images are not used
    assert sizes["val"][0] + sizes["test"][0] == 3
    assert sizes["val"][1] + sizes["test"][1] == 4


def test_medianomaly_json_errors_name_the_entry(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "n.png")
    (tmp_path / "data.json").write_text(json.dumps({"train": {"0": ["n.png"]}, "test": {"0": ["gone.png"], "1": []}}))
    with pytest.raises(DatasetError) as error:
        load("medianomaly.yaml", "--data.root", str(tmp_path)).setup()
    assert str(error.value) == (
        f"{tmp_path / 'data.json'} entry test/0[0]: file images/gone.png not found under {tmp_path}"
    )
    (tmp_path / "data.json").write_text(json.dumps({"train": ["n.png"]}))
    with pytest.raises(DatasetError, match=r"data\.json is not a MedIAnomaly split file \(TypeError"):
        load("medianomaly.yaml", "--data.root", str(tmp_path)).setup()


# Fundus: LAG and IDRiD ------------------------------------------------------------------------------


def test_fundus_lag_recipe(tmp_path: Path) -> None:
    for folder, count in (("non_glaucoma", 10), ("suspicious_glaucoma", 4)):
        for index in range(count):
            write_image(tmp_path / folder / "image" / f"{folder}_{index}.jpg", colour=True)
            write_image(tmp_path / folder / "attention_map" / f"{folder}_{index}.jpg")  # not lesion masks
    datamodule = load("fundus_lag.yaml", "--data.root", str(tmp_path))
    sizes = split_sizes(datamodule)
    assert sizes["train"] == {0: 8}  # 20 % of the normal images held out for testing
    assert sizes["val"][0] + sizes["test"][0] == 2
    assert sizes["val"][1] + sizes["test"][1] == 4
    assert not any("attention_map" in path for path in datamodule.train_data.samples.image_path)
    assert datamodule.task == "classification"


LESIONS = {"MA": (2, 2, 4, 4), "HE": (8, 8, 12, 12), "EX": (14, 2, 16, 6), "SE": (2, 14, 6, 18)}


def write_idrid(root: Path) -> None:
    """Normal and lesion fundus images; one mask folder per lesion type (SE for one image only); OD unused."""
    for index in range(5):
        write_image(root / "normal" / f"IDRiD_{100 + index}.jpg", colour=True)
    for index in (1, 2):
        image = f"IDRiD_{index:02d}"
        write_image(root / "lesion" / f"{image}.jpg", colour=True)
        for lesion, box in LESIONS.items():
            if lesion != "SE" or index == 1:
                write_mask(root / "masks" / lesion / f"{image}_{lesion}.tif", box)
        write_mask(root / "masks" / "OD" / f"{image}_OD.tif", (0, 0, 24, 24))


def test_fundus_idrid_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    write_idrid(tmp_path / "fundus")
    monkeypatch.chdir(tmp_path)
    [command] = commands_in("fundus_idrid.yaml", "proxyano-prepare")
    assert prepare(command) == 0
    assert "one mask per image, 2 masks" in capsys.readouterr().out
    merged = {path.name: np.asarray(Image.open(path)) for path in (tmp_path / "fundus" / "lesion_masks").glob("*.png")}
    assert sorted(merged) == ["IDRiD_01.png", "IDRiD_02.png"]
    area = {name: (top - bottom) * (left - right) for name, (top, left, bottom, right) in LESIONS.items()}
    assert np.count_nonzero(merged["IDRiD_01.png"]) == sum(area.values())  # the union of the four lesion types
    assert np.count_nonzero(merged["IDRiD_02.png"]) == sum(area.values()) - area["SE"]
    assert set(np.unique(merged["IDRiD_01.png"])) == {0, 255}

    datamodule = load("fundus_idrid.yaml", "--data.root", "fundus")
    sizes = split_sizes(datamodule)
    assert sizes["train"] == {0: 4}
    assert sizes["val"][1] + sizes["test"][1] == 2
    assert datamodule.task == "segmentation"
    masks = torch.cat([batch.gt_mask for batch in (*datamodule.val_dataloader(), *datamodule.test_dataloader())])
    assert masks.shape[0] == 3
    assert {int(mask.any()) for mask in masks} == {0, 1}


# proxyano-prepare masks: errors name the file; nothing is written ------------------------------------


@pytest.fixture
def idrid(tmp_path: Path) -> Path:
    write_idrid(tmp_path)
    return tmp_path


def merge(root: Path) -> None:
    folders = [root / "masks" / lesion for lesion in LESIONS]
    merge_masks(root / "lesion", folders, root / "out")


def assert_nothing_written(root: Path) -> None:
    assert sorted(path.name for path in root.iterdir()) == ["lesion", "masks", "normal"]


def test_merge_masks_image_without_mask(idrid: Path) -> None:
    write_image(idrid / "lesion" / "IDRiD_03.jpg")
    with pytest.raises(PrepareError, match=f"image {idrid / 'lesion' / 'IDRiD_03.jpg'} has no mask in any of"):
        merge(idrid)
    assert_nothing_written(idrid)


def test_merge_masks_mask_without_image(idrid: Path) -> None:
    stray = write_mask(idrid / "masks" / "HE" / "IDRiD_09_HE.tif", (0, 0, 2, 2))
    with pytest.raises(PrepareError, match=f"mask {stray} belongs to no image in --images"):
        merge(idrid)
    assert_nothing_written(idrid)


def test_merge_masks_size_mismatch_names_mask_and_image(idrid: Path) -> None:
    small = write_mask(idrid / "masks" / "EX" / "IDRiD_02_EX.tif", (0, 0, 2, 2), size=(12, 12))
    with pytest.raises(PrepareError) as error:
        merge(idrid)
    assert (
        str(error.value)
        == f"mask {small} is 12x12 but its image {idrid / 'lesion' / 'IDRiD_02.jpg'} is 24x24: resize the mask"
    )
    assert_nothing_written(idrid)


def test_merge_masks_unreadable_mask(idrid: Path) -> None:
    broken = idrid / "masks" / "MA" / "IDRiD_01_MA.tif"
    broken.write_bytes(b"not a tiff")
    with pytest.raises(PrepareError, match=f"cannot read mask {broken}"):
        merge(idrid)
    assert_nothing_written(idrid)


def test_merge_masks_longest_name_wins(tmp_path: Path) -> None:
    """``a_b_MA`` belongs to image ``a_b``, not to ``a`` (whose name it also contains as a word)."""
    for name in ("a", "a_b"):
        write_image(tmp_path / "lesion" / f"{name}.png")
        write_mask(tmp_path / "masks" / f"{name}_MA.png", (0, 0, 2, 2) if name == "a" else (0, 0, 4, 4))
    summary = merge_masks(tmp_path / "lesion", [tmp_path / "masks"], tmp_path / "out")
    assert summary.images == 2
    assert np.count_nonzero(np.asarray(Image.open(tmp_path / "out" / "a_b.png"))) == 16


def test_merge_masks_cli_refuses_an_existing_output(idrid: Path, capsys: pytest.CaptureFixture) -> None:
    (idrid / "out").mkdir()
    arguments = ["masks", "--images", str(idrid / "lesion"), "--masks", str(idrid / "masks" / "MA"), "--output"]
    assert prepare([*arguments, str(idrid / "out")]) == 2
    assert f"--output {idrid / 'out'} already exists" in capsys.readouterr().err
    assert prepare([*arguments, str(idrid / "out"), "--overwrite"]) == 0
    assert sorted(path.name for path in (idrid / "out").iterdir()) == ["IDRiD_01.png", "IDRiD_02.png", "manifest.csv"]
