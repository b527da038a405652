"""proxyano-prepare: NIfTI / DICOM volumes -> anomalib Folder tree of slices, split by subject."""

from __future__ import annotations

import csv
import os
import re
import shutil
import stat
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

nibabel = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from proxyano_plugin.prepare import PrepareError, SliceOptions, prepare_dicom, prepare_nifti  # noqa: E402
from proxyano_plugin.prepare.cli import main  # noqa: E402

SHAPE = (32, 32, 12)


def brain_volume(shape=SHAPE, seed=0, scale=1000.0) -> np.ndarray:
    """An ellipsoid 'brain' in the middle slices, empty first and last slices, smooth texture plus noise."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    inside = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.75) ** 2 < 1
    texture = 1.0 + 0.3 * np.sin(3 * x) * np.cos(2 * y) + 0.05 * rng.standard_normal(shape)
    return (inside * texture * scale).astype(np.float32)


def lesion_volume(shape=SHAPE, big=(5, 6), tiny=(7,)) -> np.ndarray:
    """A 6x6 lesion (36 px, abnormal) on slices ``big``, a 2x2 one (4 px, ambiguous) on slices ``tiny``."""
    label = np.zeros(shape, np.uint8)
    x, y = shape[0] // 2 - 4, shape[1] // 2 - 4
    for k in big:
        label[x : x + 6, y : y + 6, k] = 1
    for k in tiny:
        label[x + 2 : x + 4, y + 2 : y + 4, k] = 2
    return label


def save_nifti(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), str(path))
    return path


def make_brats(root: Path, subjects: int = 4, shape=SHAPE, big=(5, 6), tiny=(7,)) -> Path:
    """BraTS-like layout: root/<subject>/<subject>_flair.nii.gz and <subject>_seg.nii.gz."""
    for i in range(subjects):
        name = f"Case_{i:03d}"
        save_nifti(root / name / f"{name}_flair.nii.gz", brain_volume(shape, seed=i))
        save_nifti(root / name / f"{name}_seg.nii.gz", lesion_volume(shape, big, tiny))
    return root


def read_manifest(out: Path) -> list[dict[str, str]]:
    with (out / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def siblings(path: Path) -> list[str]:
    return sorted(child.name for child in path.parent.iterdir())


# ------------------------------------------------------------------------------------------- NIfTI tree


def test_round_trip_folder_datamodule_and_proxyano(tmp_path: Path) -> None:
    import torch
    from anomalib.data import Folder

    from proxyano_plugin import ProxyAno

    data = make_brats(tmp_path / "brats")
    out = tmp_path / "out"
    summary = prepare_nifti(
        f"{data}/*/*_flair.nii.gz",
        out,
        labels=f"{data}/*/*_seg.nii.gz",
        options=SliceOptions(size=32, test_fraction=0.5),
    )
    assert summary.slices["test/abnormal"] == 2 * 2  # 2 test subjects x 2 lesion slices
    assert summary.dropped["ambiguous_lesion"] == 4  # slice 7 of every subject
    assert summary.dropped["abnormal_in_train_subject"] == 2 * 2
    assert summary.dropped["low_foreground"] > 0  # the empty end slices
    masks = sorted(p.name for p in (out / "ground_truth/abnormal").iterdir())
    assert masks == sorted(p.name for p in (out / "test/abnormal").iterdir())
    mask = cv2.imread(str(out / "ground_truth/abnormal" / masks[0]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (32, 32)
    assert mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 255}

    datamodule = Folder(
        name="prepared",
        root=out,
        normal_dir="train/good",
        abnormal_dir="test/abnormal",
        normal_test_dir="test/good",
        mask_dir="ground_truth/abnormal",
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
        val_split_mode="same_as_test",
    )
    datamodule.setup()
    assert len(datamodule.train_data) == summary.slices["train/good"]
    test_samples = datamodule.test_data.samples
    assert (test_samples.label_index == 1).sum() == summary.slices["test/abnormal"]
    assert test_samples.loc[test_samples.label_index == 1, "mask_path"].str.len().gt(0).all()
    batch = next(iter(datamodule.train_dataloader()))

    torch.manual_seed(0)
    model = ProxyAno(image_size=32, widths=[8, 16, 32], memory_size=20)
    images = model.model.to_model_channels(model.pre_processor.transform(batch.image))
    assert images.shape == (4, 1, 32, 32)
    losses = model.training_losses(images)
    assert torch.isfinite(losses["loss"])


def test_subjects_never_on_both_sides(tmp_path: Path) -> None:
    data = make_brats(tmp_path / "brats", subjects=6)
    out = tmp_path / "out"
    prepare_nifti(
        data / "*" / "*_flair.nii.gz", out, labels=data / "*" / "*_seg.nii.gz", options=SliceOptions(size=16, seed=3)
    )
    rows = read_manifest(out)
    splits: dict[str, set[str]] = {}
    for row in rows:
        splits.setdefault(row["subject"], set()).add(row["split"])
        assert row["file"].startswith({"train": "train/", "test": "test/"}[row["split"]])
        assert (out / row["file"]).is_file()
        if row["label"] == "1":
            assert row["split"] == "test"
            assert int(row["lesion_area"]) >= 20
            assert (out / row["mask"]).is_file()
        else:
            assert row["mask"] == ""
            assert row["lesion_area"] == "0"
    assert all(len(sides) == 1 for sides in splits.values())
    tests = sorted(subject for subject, sides in splits.items() if sides == {"test"})
    assert len(tests) == 2  # round(0.3 * 6)
    # The split is seeded: the same seed gives the same subjects, whatever the order of the files.
    again = prepare_nifti(
        data / "*" / "*_flair.nii.gz",
        tmp_path / "again",
        labels=data / "*" / "*_seg.nii.gz",
        options=SliceOptions(size=16, seed=3),
    )
    assert again.subjects == {"train": 4, "test": 2}
    assert sorted({r["subject"] for r in read_manifest(tmp_path / "again") if r["split"] == "test"}) == tests


def test_image_and_label_folders_with_the_same_names(tmp_path: Path) -> None:
    """Decathlon-style imagesTr/labelsTr; the manifest doubles as a SplitCSV split file."""
    from proxyano_plugin.data.split_csv import read_split_csv

    for i in range(3):
        save_nifti(tmp_path / "imagesTr" / f"case_{i:03d}.nii.gz", brain_volume(seed=i))
        save_nifti(tmp_path / "labelsTr" / f"case_{i:03d}.nii.gz", lesion_volume())
    out = tmp_path / "out"
    summary = prepare_nifti(tmp_path / "imagesTr", out, labels=tmp_path / "labelsTr", options=SliceOptions(size=16))
    assert summary.subjects == {"train": 2, "test": 1}
    assert {row["subject"] for row in read_manifest(out)} == {"case_000", "case_001", "case_002"}
    samples = read_split_csv(out, "manifest.csv")
    assert len(samples) == sum(summary.slices.values())
    assert (samples.loc[samples.label_index == 1, "mask_path"] != "").all()


def test_png16_keeps_relative_intensities(tmp_path: Path) -> None:
    volume = brain_volume(seed=1, scale=40000.0) + 1000.0 * (brain_volume(seed=1) > 0)  # 16-bit range
    save_nifti(tmp_path / "in" / "sub01.nii.gz", volume.astype(np.uint16))
    out = tmp_path / "out"
    prepare_nifti(tmp_path / "in", out, options=SliceOptions(size=0, format="png16", test_fraction=0.0))
    rows = read_manifest(out)
    assert rows
    for row in rows:
        image = cv2.imread(str(out / row["file"]), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint16
        assert image.shape == (32, 32)
        source = np.rot90(volume[:, :, int(row["slice_index"])])  # displayed with anterior up
        inside = source > 0
        assert np.corrcoef(source[inside], image[inside].astype(float))[0, 1] > 0.999
    # png8 (the default) writes 8-bit images, which anomalib reads as they are.
    prepare_nifti(tmp_path / "in", tmp_path / "out8", options=SliceOptions(size=0, test_fraction=0.0))
    first = read_manifest(tmp_path / "out8")[0]["file"]
    assert cv2.imread(str(tmp_path / "out8" / first), cv2.IMREAD_UNCHANGED).dtype == np.uint8


def test_axis_slice_range_and_size(tmp_path: Path) -> None:
    save_nifti(tmp_path / "in" / "sub01.nii.gz", brain_volume())
    prepare_nifti(tmp_path / "in", tmp_path / "z", options=SliceOptions(slice_range="3:-3", size=24, test_fraction=0))
    indices = [int(row["slice_index"]) for row in read_manifest(tmp_path / "z")]
    assert indices
    assert min(indices) >= 3
    assert max(indices) < SHAPE[2] - 3
    prepare_nifti(tmp_path / "in", tmp_path / "x", options=SliceOptions(axis=0, size=0, test_fraction=0))
    rows = read_manifest(tmp_path / "x")
    image = cv2.imread(str(tmp_path / "x" / rows[0]["file"]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (32, 32)  # 32 x 12 slices zero-padded to a square
    with pytest.raises(PrepareError, match="slice-range"):
        prepare_nifti(tmp_path / "in", tmp_path / "bad", options=SliceOptions(slice_range="3-5"))


def test_spacing_resamples_in_plane_before_the_resize(tmp_path: Path) -> None:
    """2 x 1 mm voxels resampled to 1 mm: the 32x32 slice becomes 64 (x) by 32 (y), then padded to 64x64."""
    path = tmp_path / "in" / "sub01.nii.gz"
    path.parent.mkdir(parents=True)
    nibabel.save(nibabel.Nifti1Image(brain_volume(), np.diag([2.0, 1.0, 3.0, 1.0])), str(path))
    nibabel.save(
        nibabel.Nifti1Image(lesion_volume(), np.diag([2.0, 1.0, 3.0, 1.0])), str(tmp_path / "in" / "sub01_seg.nii.gz")
    )
    options = SliceOptions(spacing=1.0, size=0, test_fraction=1)
    prepare_nifti(path, tmp_path / "out", labels=tmp_path / "in" / "sub01_seg.nii.gz", options=options)
    rows = read_manifest(tmp_path / "out")
    [middle] = [row for row in rows if row["slice_index"] == "6"]
    image = cv2.imread(str(tmp_path / "out" / middle["file"]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (64, 64)
    assert not image[:16].any()  # displayed rows are y (32 px at 1 mm), zero-padded above and below
    assert not image[48:].any()
    assert np.count_nonzero(image[16:48].any(axis=0)) > 40  # displayed columns are x: 32 px of 2 mm, now 64
    [abnormal] = [row for row in rows if row["label"] == "1"][:1]
    assert abnormal["lesion_area"] == "36"  # source pixels, whatever the spacing
    mask = cv2.imread(str(tmp_path / "out" / abnormal["mask"]), cv2.IMREAD_UNCHANGED)
    assert 60 <= np.count_nonzero(mask) <= 84  # a 6x6 lesion of 2x1 mm pixels: about 12x6 at 1 mm
    assert np.count_nonzero(mask.any(axis=1)) < np.count_nonzero(mask.any(axis=0))  # wider than tall


def test_spacing_errors(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match="--spacing must be a positive size in mm, got 0"):
        prepare_nifti(tmp_path, tmp_path / "out", options=SliceOptions(spacing=0))
    write_series(tmp_path / "series" / "patient", brain_volume())
    with pytest.raises(PrepareError, match=r"--spacing needs the voxel size, which .*patient does not give"):
        prepare_dicom(tmp_path / "series", tmp_path / "out", options=SliceOptions(spacing=1.0, test_fraction=0))
    assert not (tmp_path / "out").exists()


def test_window_normalisation_and_foreground_fraction(tmp_path: Path) -> None:
    save_nifti(tmp_path / "in" / "sub01.nii.gz", brain_volume())
    strict = prepare_nifti(
        tmp_path / "in", tmp_path / "a", options=SliceOptions(foreground_fraction=0.5, size=0, test_fraction=0)
    )
    loose = prepare_nifti(
        tmp_path / "in",
        tmp_path / "b",
        options=SliceOptions(
            foreground_fraction=0.01, normalise="window", window_min=0, window_max=2000, size=0, test_fraction=0
        ),
    )
    assert strict.dropped["low_foreground"] > loose.dropped["low_foreground"]
    with pytest.raises(PrepareError, match="window-min"):
        prepare_nifti(tmp_path / "in", tmp_path / "c", options=SliceOptions(normalise="window"))


def test_cli_summary_and_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_brats(tmp_path / "brats", subjects=3)
    args = ["nifti", "--images", f"{data}/*/*_flair.nii.gz", "--labels", f"{data}/*/*_seg.nii.gz"]
    args += ["--output", str(tmp_path / "out"), "--size", "16"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "subjects: 2 train, 1 test" in printed
    assert "ambiguous" in printed
    assert "test/abnormal 2" in printed
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    before = (tmp_path / "out" / "manifest.csv").stat().st_ino
    assert main([*args, "--overwrite", "--seed", "1"]) == 0
    assert (tmp_path / "out" / "manifest.csv").stat().st_ino != before
    assert siblings(tmp_path / "out") == ["brats", "out"]  # no staging or old tree left behind


# ------------------------------------------------------------------------------------------- bad input


def test_missing_and_empty_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match=re.escape(str(tmp_path / "nowhere"))):
        prepare_nifti(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match=f"no NIfTI files .* in folder {re.escape(str(tmp_path / 'empty'))}"):
        prepare_nifti(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(PrepareError, match="matches no file"):
        prepare_nifti(f"{tmp_path}/*/*_flair.nii.gz", tmp_path / "out")
    (tmp_path / "series" / "subject1").mkdir(parents=True)
    with pytest.raises(PrepareError, match="holds no files"):
        prepare_dicom(tmp_path / "series", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not_gzip"])
def test_unreadable_volume_is_named(tmp_path: Path, damage: str) -> None:
    good = save_nifti(tmp_path / "in" / "a01.nii.gz", brain_volume())
    bad = tmp_path / "in" / ("b02.nii" if damage == "garbage" else "b02.nii.gz")
    if damage == "garbage":
        bad.write_bytes(b"this is not a NIfTI file at all" * 20)
    elif damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    else:
        bad.write_bytes(nibabel.Nifti1Image(brain_volume(), np.eye(4)).to_bytes()[:1000])
    with pytest.raises(PrepareError, match=f"cannot read image {re.escape(str(bad))}"):
        prepare_nifti(tmp_path / "in", tmp_path / "out", options=SliceOptions(test_fraction=0))
    assert not (tmp_path / "out").exists()  # the first subject was written, then everything was removed
    assert siblings(tmp_path / "out") == ["in"]
    assert main(["nifti", "--images", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 2


def test_label_shape_mismatch_names_both_files(tmp_path: Path) -> None:
    image = save_nifti(tmp_path / "s1" / "s1_flair.nii.gz", brain_volume())
    label = save_nifti(tmp_path / "s1" / "s1_seg.nii.gz", lesion_volume((32, 32, 10), big=(4,), tiny=()))
    with pytest.raises(PrepareError) as caught:
        prepare_nifti(image, tmp_path / "out", labels=label, options=SliceOptions(test_fraction=0))
    assert str(label) in str(caught.value)
    assert str(image) in str(caught.value)
    assert "(32, 32, 10)" in str(caught.value)
    assert "(32, 32, 12)" in str(caught.value)


def test_missing_label_names_the_subject(tmp_path: Path) -> None:
    data = make_brats(tmp_path / "brats", subjects=3)
    (data / "Case_001" / "Case_001_seg.nii.gz").unlink()
    with pytest.raises(PrepareError, match="no label volume for subject 'Case_001'"):
        prepare_nifti(f"{data}/*/*_flair.nii.gz", tmp_path / "out", labels=f"{data}/*/*_seg.nii.gz")


def test_two_modalities_for_one_subject_are_refused(tmp_path: Path) -> None:
    data = make_brats(tmp_path / "brats", subjects=2)
    save_nifti(data / "Case_000" / "Case_000_t1.nii.gz", brain_volume())
    with pytest.raises(PrepareError, match=r"both subject 'Case_000'.*one modality per run"):
        prepare_nifti(f"{data}/*/Case_*[0-9]_[ft]*.nii.gz", tmp_path / "out")


def test_split_needs_two_subjects(tmp_path: Path) -> None:
    save_nifti(tmp_path / "in" / "only.nii.gz", brain_volume())
    with pytest.raises(PrepareError, match="at least 2 subjects"):
        prepare_nifti(tmp_path / "in", tmp_path / "out", options=SliceOptions(test_fraction=0.3))


# ------------------------------------------------------------------------------------------------ DICOM


def write_series(folder: Path, volume: np.ndarray, slope: float = 2.0, intercept: float = -1024.0) -> None:
    """A synthetic CT series, one file per slice, written in shuffled order with stored = (value - b) / m."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series = generate_uid()
    for k in np.random.default_rng(0).permutation(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.Modality = series, "CT"
        ds.InstanceNumber = int(volume.shape[2] - k)  # reversed: the position must win over the number
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * float(k)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.Rows, ds.Columns = volume.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        stored = np.rint((volume[:, :, k] - intercept) / slope).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / f"IM{int(k) * 7919 % 1000:04d}.dcm", enforce_file_format=True)


def test_dicom_series_sorted_and_rescaled(tmp_path: Path) -> None:
    hounsfield = brain_volume(scale=800.0) - 1000.0 * (brain_volume() == 0)  # air -1000, tissue ~0..1000
    hounsfield[..., :] += np.arange(SHAPE[2], dtype=np.float32) * 10  # a per-slice offset reveals the order
    for subject in ("patient_a", "patient_b"):
        write_series(tmp_path / "series" / subject, hounsfield)
    out = tmp_path / "out"
    options = SliceOptions(
        normalise="window", window_min=-1000, window_max=1200, size=0, format="png16", test_fraction=0
    )
    summary = prepare_dicom(tmp_path / "series", out, options=options)
    assert summary.subjects == {"train": 2, "test": 0}
    assert summary.slices["test/good"] == summary.slices["test/abnormal"] == 0
    rows = read_manifest(out)
    assert {row["subject"] for row in rows} == {"patient_a", "patient_b"}
    for row in rows:
        k = int(row["slice_index"])
        assert row["split"] == "train"
        assert row["label"] == "0"
        assert Path(row["source"]).suffix == ".dcm"
        stored = pydicom.dcmread(row["source"])
        assert float(stored.ImagePositionPatient[2]) == 2.5 * k  # sorted by position
        image = cv2.imread(str(out / row["file"]), cv2.IMREAD_UNCHANGED).astype(float) / 65535
        expected = np.clip((hounsfield[:, :, k] + 1000) / 2200, 0, 1)  # rescale slope/intercept applied
        assert np.abs(image - expected).max() < 2e-3
    split = prepare_dicom(tmp_path / "series", tmp_path / "split", options=SliceOptions(test_fraction=0.5, size=16))
    assert split.subjects == {"train": 1, "test": 1}
    assert split.slices["test/good"] > 0


def test_dicom_pydicom_test_file(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    folder = tmp_path / "series" / "ct_small"
    folder.mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "CT_small.dcm")
    summary = prepare_dicom(
        tmp_path / "series",
        tmp_path / "out",
        options=SliceOptions(normalise="window", window_min=-160, window_max=240, test_fraction=0),
    )
    assert summary.slices["train/good"] == 1
    row = read_manifest(tmp_path / "out")[0]
    assert cv2.imread(str(tmp_path / "out" / row["file"]), cv2.IMREAD_UNCHANGED).shape == (128, 128)


def test_dicom_multiframe_file_is_one_volume(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    frames = np.stack([ds.pixel_array + 100 * k for k in range(3)]).astype(np.int16)
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    (tmp_path / "series" / "mf").mkdir(parents=True)
    ds.save_as(tmp_path / "series" / "mf" / "multi.dcm")
    options = SliceOptions(normalise="minmax", size=0, format="png16", test_fraction=0)
    summary = prepare_dicom(tmp_path / "series", tmp_path / "out", options=options)
    assert summary.slices["train/good"] == 3
    rows = read_manifest(tmp_path / "out")
    means = [cv2.imread(str(tmp_path / "out" / r["file"]), cv2.IMREAD_UNCHANGED).mean() for r in rows]
    assert [int(r["slice_index"]) for r in rows] == [0, 1, 2]
    assert means[0] < means[1] < means[2]


def test_unreadable_dicom_is_named(tmp_path: Path) -> None:
    write_series(tmp_path / "series" / "p1", brain_volume(shape=(16, 16, 4)))
    bad = tmp_path / "series" / "p1" / "broken.dcm"
    bad.write_bytes(b"\0" * 50)
    with pytest.raises(PrepareError, match=f"cannot read DICOM file {re.escape(str(bad))}"):
        prepare_dicom(tmp_path / "series", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ speed


@pytest.mark.slow
def test_one_brats_sized_volume_is_fast(tmp_path: Path) -> None:
    shape = (240, 240, 155)
    make_brats(tmp_path / "brats", subjects=1, shape=shape, big=range(60, 90), tiny=(90, 91))
    start = time.perf_counter()
    summary = prepare_nifti(
        f"{tmp_path}/brats/*/*_flair.nii.gz",
        tmp_path / "out",
        labels=f"{tmp_path}/brats/*/*_seg.nii.gz",
        options=SliceOptions(test_fraction=1.0),
    )
    elapsed = time.perf_counter() - start
    assert summary.slices["test/good"] > 50
    assert summary.slices["test/abnormal"] == 30
    assert summary.dropped["ambiguous_lesion"] == 2
    assert elapsed < 10, f"one 240x240x155 volume took {elapsed:.1f} s"


def test_prepared_output_has_the_mode_the_umask_gives(tmp_path: Path) -> None:
    """``staged_output`` writes into a ``mkdtemp`` folder (0700); the output must get the umask's mode."""
    from proxyano_plugin.prepare.pipeline import staged_output

    original = os.umask(0o027)
    try:
        with staged_output(tmp_path / "out") as staging:
            (staging / "train").mkdir()
    finally:
        os.umask(original)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "out" / "train").stat().st_mode) == 0o750
