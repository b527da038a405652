"""Full-depth reading of 16-bit and float images (``intensity`` option of CheckedFolder and SplitCSV)."""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from anomalib.data.datasets.image.folder import FolderDataset
from anomalib.data.utils import read_image
from testing_utils import parse_data
from torchvision.transforms.v2 import Resize
from torchvision.tv_tensors import Image

from proxyano_plugin.data import CheckedFolder, SplitCSV, check_folder_dataset
from proxyano_plugin.data.intensity import read_full_depth

SIZE = 32
RAMP = np.linspace(0, 4000, SIZE * SIZE).reshape(SIZE, SIZE)  # 16-bit values anomalib's reader clips


def write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def correlation(image: torch.Tensor, source: np.ndarray) -> float:
    return float(np.corrcoef(image.numpy().ravel(), source.ravel())[0, 1])


@pytest.mark.parametrize("name", ["ramp.png", "ramp.tif"])
def test_minmax_keeps_a_16_bit_ramp(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, RAMP.astype(np.uint16))
    clipped = read_image(path, as_tensor=True)
    assert (clipped == 1).float().mean() > 0.9  # the problem: anomalib saturates most of the ramp
    image = read_full_depth(path, "minmax")
    assert isinstance(image, Image)
    assert image.dtype == clipped.dtype == torch.float32
    assert image.shape == clipped.shape == (3, SIZE, SIZE)
    assert torch.equal(image[0], image[2])
    assert correlation(image[0], RAMP) > 0.999
    assert image.min() == 0
    assert image.max() == 1
    assert int((image[0] == 1).sum()) == 1  # only the extreme pixel


@pytest.mark.parametrize(
    ("dtype", "offset"), [(np.uint16, 0.0), (np.int16, -2000.0), (np.float32, -2000.0), (np.uint8, 0.0)]
)
def test_window_maps_low_and_high_to_0_and_1_and_clips(tmp_path: Path, dtype: type, offset: float) -> None:
    source = (RAMP / 16 if dtype is np.uint8 else RAMP + offset).astype(dtype)
    path = write(tmp_path / f"ramp_{np.dtype(dtype).name}.tif", source)
    low, high = np.percentile(source, [25, 75])
    image = read_full_depth(path, "window", window=[low, high])[0].numpy()
    expected = np.clip((source.astype(np.float64) - low) / (high - low), 0, 1)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert image[source <= low].max() == 0
    assert image[source >= high].min() == 1


def test_percentile_clips_outliers(tmp_path: Path) -> None:
    source = RAMP.astype(np.uint16)
    source[0, 0], source[-1, -1] = 0, 65535  # a dead and a hot pixel
    path = write(tmp_path / "outliers.png", source)
    stretched = read_full_depth(path, "percentile")[0]
    assert stretched[1:-1, 1:-1].std() > 0.25  # the hot pixel does not squash the ramp
    assert correlation(stretched[1:-1, 1:-1], source[1:-1, 1:-1]) > 0.999
    assert stretched[-1, -1] == 1
    squashed = read_full_depth(path, "minmax")[0]
    assert squashed[1:-1, 1:-1].max() < 0.07


def test_8_bit_files_read_as_anomalib_does(tmp_path: Path) -> None:
    gray = write(tmp_path / "gray.png", (RAMP / 16).astype(np.uint8))
    colour = np.stack([(RAMP / 16), np.full_like(RAMP, 30), 255 - RAMP / 16], axis=-1).astype(np.uint8)
    colour_path = write(tmp_path / "colour.png", colour)  # OpenCV writes BGR
    for path in (gray, colour_path):
        torch.testing.assert_close(read_full_depth(path, "window", window=(0, 255)), read_image(path, as_tensor=True))


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=re.escape(f"image {broken} cannot be decoded")):
        read_full_depth(broken, "minmax")
    with pytest.raises(ValueError, match=re.escape(f"image {tmp_path / 'missing.png'} cannot be read")):
        read_full_depth(tmp_path / "missing.png", "minmax")
    source = RAMP.astype(np.float32)
    source[3, 4] = np.nan
    nan = write(tmp_path / "nan.tif", source)
    with pytest.raises(ValueError, match=re.escape(f"image {nan} holds 1 NaN or infinite value")):
        read_full_depth(nan, "minmax")


def test_invalid_modes_and_windows() -> None:
    with pytest.raises(ValueError, match="use one of minmax, percentile, window"):
        read_full_depth("unused.png", "zscore")
    for window in (None, [100.0], [200.0, 100.0]):
        with pytest.raises(ValueError, match="intensity_window"):
            read_full_depth("unused.png", "window", window=window)


# Datamodules --------------------------------------------------------------------------------------


@pytest.fixture
def deep_tree(tmp_path: Path) -> Path:
    """16-bit ramps: 4 normal, 2 abnormal with masks; splits/basic.csv for SplitCSV."""
    rows = []
    for index in range(4):
        write(tmp_path / "good" / f"g{index}.png", (RAMP + 10 * index).astype(np.uint16))
        rows.append(f"good/g{index}.png,0,{'train' if index < 2 else 'test'},")
    for index in range(2):
        write(tmp_path / "bad" / f"b{index}.png", RAMP[::-1, ::-1].astype(np.uint16))
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[8:16, 8:16] = 255
        write(tmp_path / "mask" / f"b{index}.png", mask)
        rows.append(f"bad/b{index}.png,1,test,mask/b{index}.png")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "basic.csv").write_text("file,label,split,mask\n" + "\n".join(rows) + "\n")
    return tmp_path


def checked_folder(root: Path, **overrides: object) -> CheckedFolder:
    arguments = {"name": "deep", "root": root, "normal_dir": "good", "abnormal_dir": "bad", "mask_dir": "mask"}
    return CheckedFolder(**{**arguments, "num_workers": 0, "train_batch_size": 8, "seed": 0, **overrides})


def assert_full_depth(images: torch.Tensor) -> None:
    assert images.dtype == torch.float32
    assert images.min() >= 0
    assert images.max() <= 1
    for image in images:
        assert abs(correlation(image[0], RAMP)) > 0.999
        assert (image == 1).float().mean() < 0.01  # not saturated


def test_checked_folder_reads_16_bit_images(deep_tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    datamodule = checked_folder(deep_tree, intensity="minmax")
    with caplog.at_level(logging.WARNING, logger="proxyano_plugin"):
        datamodule.setup()
    assert not [record for record in caplog.records if "16-bit" in record.getMessage()]
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.image.shape[1:] == (3, SIZE, SIZE)
    assert_full_depth(batch.image)
    batch = next(iter(datamodule.test_dataloader()))
    assert_full_depth(batch.image)
    assert batch.gt_mask.shape == (len(batch.image), SIZE, SIZE)
    assert int(batch.gt_mask.sum()) == 64 * int(batch.gt_label.sum())
    copy = pickle.loads(pickle.dumps(datamodule.val_data))  # as data loader workers get it (spawn)
    torch.testing.assert_close(copy[0].image, datamodule.val_data[0].image)


def test_checked_folder_without_intensity_is_unchanged(deep_tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    datamodule = checked_folder(deep_tree)
    with caplog.at_level(logging.WARNING, logger="proxyano_plugin"):
        datamodule.setup()
    assert "--data.intensity percentile" in caplog.text  # the 16-bit warning points to the option
    assert type(datamodule.train_data) is FolderDataset
    assert (next(iter(datamodule.train_dataloader())).image == 1).float().mean() > 0.9
    assert check_folder_dataset(normal_dir="good", root=deep_tree, full_depth=True) == []


def test_augmentations_apply_to_the_full_depth_image(deep_tree: Path) -> None:
    """anomalib appends the model's Resize to the augmentations during fit; images and masks must follow."""
    datamodule = checked_folder(deep_tree, intensity="percentile", augmentations=Resize((16, 16)))
    datamodule.setup()
    batch = next(iter(datamodule.test_dataloader()))
    assert batch.image.shape[-2:] == batch.gt_mask.shape[-2:] == (16, 16)
    assert (batch.image == 1).float().mean() < 0.05


def test_checked_folder_rejects_invalid_options(deep_tree: Path) -> None:
    with pytest.raises(ValueError, match="use one of minmax, percentile, window"):
        checked_folder(deep_tree, intensity="16bit")
    with pytest.raises(ValueError, match=r"needs intensity_window=\[low, high\]"):
        checked_folder(deep_tree, intensity="window")
    with pytest.raises(ValueError, match="only used with intensity='window'"):
        checked_folder(deep_tree, intensity="minmax", intensity_window=[0, 4000])
    with pytest.raises(ValueError, match="synthetic"):
        checked_folder(deep_tree, intensity="minmax", val_split_mode="synthetic")


def test_split_csv_reads_16_bit_images_with_a_window(deep_tree: Path) -> None:
    datamodule = SplitCSV(
        root=deep_tree, split_csv="basic", num_workers=0, seed=0, intensity="window", intensity_window=[0, 4000]
    )
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.image.shape == (2, 3, SIZE, SIZE)
    assert_full_depth(batch.image)
    for image, path in zip(batch.image, batch.image_path, strict=True):
        expected = np.clip((RAMP + 10 * int(Path(path).stem[1:])).astype(np.uint16) / 4000, 0, 1)
        torch.testing.assert_close(image[0], torch.from_numpy(expected).float())
    batch = next(iter(datamodule.test_dataloader()))
    assert_full_depth(batch.image)
    assert batch.gt_mask is not None
    with pytest.raises(ValueError, match="use one of minmax, percentile, window"):
        SplitCSV(root=deep_tree, split_csv="basic", intensity="clip")


def test_cli_accepts_the_option(deep_tree: Path) -> None:
    datamodule = parse_data(
        "--data", "proxyano_plugin.data.CheckedFolder", "--data.name", "deep", "--data.root", str(deep_tree),
        "--data.normal_dir", "good", "--data.intensity", "percentile",
    )  # fmt: skip
    assert isinstance(datamodule, CheckedFolder)
    assert datamodule.intensity == "percentile"
    assert datamodule.intensity_window is None
    datamodule = parse_data(
        "--data", "SplitCSV", "--data.root", str(deep_tree), "--data.split_csv", "basic",
        "--data.intensity", "window", "--data.intensity_window", "[-160, 240]",
    )  # fmt: skip
    assert isinstance(datamodule, SplitCSV)
    assert datamodule.intensity_window == (-160.0, 240.0)
