"""check_folder_dataset and read_split_csv: every bad input gives one line naming the file or folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from proxyano_plugin.data.validation import (
    DatasetError,
    check_folder_dataset,
    inspect_folder_dataset,
    report_problems,
)


def write_png(path: Path, size: int = 16, value: float = 100, dtype: type = np.uint8, channels: int = 1) -> Path:
    """A constant image (any format PIL writes from the suffix: a float32 ``.tif`` is a float TIFF)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size) if channels == 1 else (size, size, channels)
    Image.fromarray(np.full(shape, value, dtype=dtype)).save(path)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A valid Folder tree: 3 normal images, 2 abnormal images with same-named masks."""
    for name in ("a", "b", "c"):
        write_png(tmp_path / "good" / f"{name}.png")
    for name in ("x", "y"):
        write_png(tmp_path / "bad" / f"{name}.png", value=200)
        write_png(tmp_path / "masks" / f"{name}.png", value=255)
    return tmp_path


def check(root: Path, **overrides: object) -> list:
    arguments = {"normal_dir": "good", "abnormal_dir": "bad", "mask_dir": "masks", "extensions": (".png",), **overrides}
    return check_folder_dataset(root=root, **arguments)


def only(problems: list, kind: str) -> str:
    """The message of the single problem, which must be of ``kind`` and fit on one line."""
    assert [problem.kind for problem in problems] == [kind], problems
    assert "\n" not in problems[0].message
    return problems[0].message


def test_valid_tree_has_no_problem(tree: Path) -> None:
    assert check(tree) == []


def test_missing_normal_folder(tree: Path) -> None:
    message = only(check(tree, normal_dir="nope"), "missing_folder")
    assert str(tree / "nope") in message
    assert "does not exist" in message


def test_empty_normal_folder(tree: Path) -> None:
    (tree / "empty").mkdir()
    (tree / "empty" / "notes.txt").write_text("not an image")
    message = only(check(tree, normal_dir="empty"), "empty_folder")
    assert str(tree / "empty") in message
    assert "no images with extensions .png" in message


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_unreadable_image_is_skipped_or_fatal(tree: Path, damage: str) -> None:
    path = tree / "good" / "b.png"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a png at all", "empty": b""}[damage])
    problems = check(tree)
    assert only(problems, "unreadable").startswith(f"normal image {path} cannot be read")
    assert not problems[0].fatal
    assert "(skipped)" in problems[0].message
    assert check(tree, strict=True)[0].fatal


def test_all_normal_images_unreadable_is_fatal(tmp_path: Path) -> None:
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "a.png").write_bytes(b"broken")
    problems = check_folder_dataset(normal_dir="good", root=tmp_path, extensions=(".png",))
    assert [problem.kind for problem in problems] == ["unreadable", "empty_folder"]
    assert problems[1].fatal
    assert str(tmp_path / "good") in problems[1].message


def test_16_bit_images_are_flagged_once_per_folder(tree: Path) -> None:
    for name in ("a", "b"):
        write_png(tree / "good" / f"{name}.png", value=4000, dtype=np.uint16)
    message = only(check(tree), "16_bit")
    assert message.startswith("2 normal images are 16-bit")
    assert str(tree / "good" / "a.png") in message


def test_images_with_an_alpha_channel_are_flagged_once_per_folder(tree: Path) -> None:
    for name in ("a", "c"):
        write_png(tree / "good" / f"{name}.png", channels=2)  # LA: grayscale with alpha
    message = only(check(tree), "alpha")
    assert message == (
        f"2 normal images have an alpha channel (first: {tree / 'good' / 'a.png'}); anomalib's reader drops it, "
        "so transparent pixels count with the colour they store: flatten them onto a background first if that "
        "is not what they show"
    )


def test_missing_mask(tree: Path) -> None:
    (tree / "masks" / "y.png").unlink()
    message = only(check(tree), "mask_missing")
    assert str(tree / "bad" / "y.png") in message
    assert str(tree / "masks") in message


def test_mask_without_image(tree: Path) -> None:
    write_png(tree / "masks" / "z.png")
    message = only(check(tree), "mask_unpaired")
    assert str(tree / "masks" / "z.png") in message


def test_mask_of_another_size(tree: Path) -> None:
    write_png(tree / "masks" / "x.png", size=8)
    message = only(check(tree), "mask_size")
    assert str(tree / "masks" / "x.png") in message
    assert "8x8" in message
    assert "16x16" in message


def test_unreadable_mask(tree: Path) -> None:
    (tree / "masks" / "x.png").write_bytes(b"broken")
    assert str(tree / "masks" / "x.png") in only(check(tree), "unreadable")


def test_masks_named_with_a_suffix_pair_by_name(tree: Path) -> None:
    for name in ("x", "y"):
        (tree / "masks" / f"{name}.png").rename(tree / "masks" / f"{name}_mask.png")
    assert check(tree) == []


def test_positional_pairing_that_disagrees_with_names(tmp_path: Path) -> None:
    # anomalib sorts images (a, a1) and masks (a1_mask, a_mask) separately and pairs them by position:
    # image "a" would get mask "a1_mask" although "a_mask" is its own.
    write_png(tmp_path / "good" / "n.png")
    for name in ("a", "a1"):
        write_png(tmp_path / "bad" / f"{name}.png")
        write_png(tmp_path / "masks" / f"{name}_mask.png")
    message = only(check(tmp_path), "mask_order")
    assert str(tmp_path / "bad" / "a.png") in message
    assert str(tmp_path / "masks" / "a1_mask.png") in message


def test_masks_without_abnormal_folder_are_flagged(tree: Path) -> None:
    problems = check(tree, abnormal_dir=None)
    assert str(tree / "masks") in only(problems, "unused_masks")
    assert not problems[0].fatal


def test_report_problems_logs_warnings_and_raises_one_line_per_fatal(
    tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tree / "good" / "a.png").write_bytes(b"broken")
    (tree / "masks" / "x.png").unlink()
    write_png(tree / "masks" / "z.png")
    problems = check(tree)
    with pytest.raises(DatasetError) as error:
        report_problems(problems)
    assert str(error.value).splitlines() == [problem.message for problem in problems if problem.fatal]
    assert len(error.value.problems) == 2
    assert [record.getMessage() for record in caplog.records] == [problems[0].message]


def test_mixed_sizes_are_reported_once_naming_the_odd_file(tree: Path) -> None:
    odd = write_png(tree / "good" / "d.png", size=24)
    message = only(check(tree), "mixed_sizes")
    assert message.startswith("images come in 2 sizes (16x16: 5, e.g. ")
    assert f"24x24: 1, e.g. {odd}" in message
    assert "anomalib resizes each to the model's input size" in message
    assert not check(tree)[0].fatal


def test_grayscale_mixed_with_colour_is_reported_naming_both(tree: Path) -> None:
    colour = write_png(tree / "good" / "d.png", channels=3)
    message = only(check(tree), "mixed_channels")
    assert message.startswith(f"5 grayscale and 1 colour images are mixed (first grayscale: {tree / 'good' / 'a.png'}")
    assert f"first colour: {colour}" in message
    assert check(tree)[0].path == colour


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_a_float_tiff_is_skipped_or_fatal(tree: Path, bad: float) -> None:
    path = write_png(tree / "good" / "d.tif", value=0.5, dtype=np.float32)
    array = np.full((16, 16), 0.5, np.float32)
    array[3, 4] = bad
    Image.fromarray(array).save(path)
    problems = check(tree, extensions=(".png", ".tif"))
    assert only(problems, "non_finite") == (
        f"normal image {path} holds 1 NaN or infinite value(s): replace them (e.g. with 0) or delete the file (skipped)"
    )
    assert not problems[0].fatal
    assert check(tree, extensions=(".png", ".tif"), strict=True)[0].fatal


def test_finite_float_tiff_passes_and_its_range_is_summarised(tree: Path) -> None:
    write_png(tree / "good" / "d.tif", value=0.25, dtype=np.float32)
    problems, summary = inspect_folder_dataset(
        normal_dir="good", root=tree, abnormal_dir="bad", mask_dir="masks", extensions=(".png", ".tif")
    )
    assert problems == []
    assert "normal_dir 0.25 to 100" in summary.text()


def test_abnormal_images_without_masks_when_pixel_metrics_are_requested(tree: Path) -> None:
    assert check(tree, mask_dir=None) == []  # image-level metrics: fine
    message = only(check(tree, mask_dir=None, pixel_metrics=True), "no_masks")
    assert message.startswith(f"pixel metrics are requested but the 2 abnormal images in {tree / 'bad'} have no masks")
    assert "set mask_dir, or pixel_metrics=False" in message


def test_summary_counts_sizes_channels_and_intensity_range(tree: Path) -> None:
    write_png(tree / "test_good" / "t.png", value=30)
    (tree / "good" / "c.png").write_bytes(b"broken")
    problems, summary = inspect_folder_dataset(
        normal_dir="good", root=tree, abnormal_dir="bad", normal_test_dir="test_good", mask_dir="masks",
        extensions=(".png",),
    )  # fmt: skip
    assert [problem.kind for problem in problems] == ["unreadable"]
    assert summary.text().splitlines() == [
        "dataset: normal_dir 2, abnormal_dir 2, normal_test_dir 1 readable images, 2 masks"
        " (1 skipped, see the warnings)",
        "  sizes:     16x16 x5",
        "  channels:  L (grayscale) x5",
        "  intensity: normal_dir 100 to 100, abnormal_dir 200 to 200, normal_test_dir 30 to 30"
        " (stored values, before any intensity option)",
    ]
