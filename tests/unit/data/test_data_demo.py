"""The embedded template asset, the pseudo-subject and lesion generators, and the cached Folder tree.

No anomalib here: these run in a second or two.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from testing_utils import REPO

from proxyano_plugin.data.anatomy import Subject, load_template
from proxyano_plugin.data.demo_generator import (
    FOLDER_LAYOUT,
    DemoSpec,
    default_cache_root,
    demo_dir,
    generate_demo,
    materialise_demo,
)
from proxyano_plugin.data.lesions import LESION_KINDS, add_tumour

SMALL = DemoSpec(train_subjects=2, test_subjects=3, slices_per_subject=4, seed=7)


@pytest.fixture(scope="module")
def small_demo() -> list:
    return list(generate_demo(SMALL))


def test_asset_is_small_and_well_formed() -> None:
    asset = REPO / "proxyano_plugin/data/assets/mni152_axial.npz"
    assert asset.stat().st_size < 600_000
    template = load_template()
    assert template.t1.shape == template.wm.shape == template.brain.shape == (48, 128, 128)
    assert template.t1.dtype == np.float32
    assert template.t1.min() >= 0.0
    assert template.t1.max() <= 1.0
    assert template.brain.sum(axis=(1, 2)).min() > 2000  # every slice shows plenty of brain
    assert not template.t1[~template.brain].any()  # skull-stripped: nothing outside the mask
    assert np.all(np.diff(template.z_mm) == 2.0)
    assert template.pixel_mm == pytest.approx(1.5)
    assert not template.t1.flags.writeable  # shared by every subject: must not be modified


def test_generation_is_deterministic(small_demo: list) -> None:
    again = list(generate_demo(SMALL))
    assert [item.name for item in again] == [item.name for item in small_demo]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(again, small_demo, strict=True))
    other_seed = next(generate_demo(DemoSpec(**{**SMALL.__dict__, "seed": 8})))
    assert not np.array_equal(other_seed.image, small_demo[0].image)


def test_counts_names_and_dtypes(small_demo: list) -> None:
    train = [item for item in small_demo if item.split == "train"]
    test = [item for item in small_demo if item.split == "test"]
    assert len(train) == 2 * 4
    assert len(test) == 3 * 4
    assert sum(item.mask is not None for item in test) == round(SMALL.lesion_fraction * len(test))
    assert all(item.mask is None for item in train)
    assert len({item.name for item in small_demo}) == len(small_demo)
    for item in small_demo:
        assert item.image.dtype == np.uint8
        assert item.image.shape == (128, 128)


def test_train_and_test_subjects_are_disjoint(small_demo: list) -> None:
    train = [item for item in small_demo if item.split == "train"]
    test = [item for item in small_demo if item.split == "test"]
    assert not {item.subject for item in train} & {item.subject for item in test}
    for item in test:
        assert not any(np.array_equal(item.image, other.image) for other in train)
    # Different subjects really differ in anatomy, not only in noise.
    first, second = (Subject.random(np.random.default_rng([0, 0, k]), 128) for k in range(2))
    assert np.abs(first.coords - second.coords).mean() > 0.5


def test_lesion_masks_are_exact_and_sized(small_demo: list) -> None:
    lesions = [item for item in small_demo if item.mask is not None]
    assert lesions
    for item in lesions:
        assert item.mask.dtype == bool
        assert item.mask.any()
        assert item.lesion in LESION_KINDS
        assert 0.005 < item.lesion_fraction <= SMALL.lesion_area[1] + 0.01


@pytest.mark.parametrize("seed", range(12))
def test_lesion_stays_inside_the_brain_and_changes_only_the_mask(seed: int) -> None:
    template = load_template()
    rng = np.random.default_rng(seed)
    index = 8 + 3 * seed
    image, wm, brain = template.t1[index].copy(), template.wm[index].copy(), template.brain[index]
    painted, lesion = add_tumour(image, wm, brain, rng, area_range=(0.01, 0.08), mass_effect=(0.0, 0.0))
    assert lesion.mask.any()
    assert not (lesion.mask & ~brain).any()
    assert 0.01 <= lesion.area_fraction <= 0.08
    changed = painted != image
    assert not (changed & ~lesion.mask).any()  # without mass effect, nothing outside the mask moves
    assert changed[lesion.mask].mean() > 0.95
    assert np.array_equal(image, template.t1[index])  # input left untouched


def test_mass_effect_keeps_the_lesion_inside_the_brain() -> None:
    template = load_template()
    for seed in range(6):
        image, wm, brain = template.t1[20], template.wm[20], template.brain[20]
        _, lesion = add_tumour(image, wm, brain, np.random.default_rng(seed), mass_effect=(0.3, 0.3))
        assert lesion.mask.any()
        assert lesion.mask.sum() <= brain.sum() * 0.1


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"train_subjects": 0}, "train_subjects"),
        ({"lesion_fraction": 1.0}, "lesion_fraction"),
        ({"lesion_area": (0.1, 0.05)}, "lesion_area"),
        ({"slices_per_subject": 49}, "slices_per_subject"),
    ],
)
def test_spec_rejects_unusable_values(change: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        DemoSpec(**change)


def test_spec_accepts_lists_and_keys_by_value() -> None:
    assert DemoSpec(lesion_area=[0.01, 0.08]) == DemoSpec()
    assert DemoSpec().key() == DemoSpec().key()
    assert DemoSpec(seed=1).key() != DemoSpec().key()
    assert DemoSpec().key().startswith("v1-")


def test_tree_is_materialised_once_and_reused(tmp_path: Path) -> None:
    directory = materialise_demo(SMALL, tmp_path)
    assert directory == demo_dir(SMALL, tmp_path)
    assert directory.parent == tmp_path
    assert [path.name for path in tmp_path.iterdir()] == [directory.name]  # no staging folder left behind
    images = {folder: sorted((directory / folder).glob("*.png")) for folder in FOLDER_LAYOUT.values()}
    assert len(images["train/good"]) == 8
    assert len(images["test/good"]) + len(images["test/lesion"]) == 12
    assert [path.name for path in images["ground_truth/lesion"]] == [path.name for path in images["test/lesion"]]
    for path in images["test/lesion"]:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(directory / "ground_truth/lesion" / path.name), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint8
        assert image.shape == (128, 128)
        assert set(np.unique(mask)) == {0, 255}
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["counts"]["train/good"] == 8
    assert manifest["spec"]["seed"] == 7
    assert "McConnell Brain Imaging Centre" in (directory / "NOTICE.txt").read_text()
    assert (directory / "samples.csv").read_text().startswith("file,label,split,mask,")

    stamps = {path: path.stat().st_mtime_ns for path in directory.rglob("*")}
    assert materialise_demo(SMALL, tmp_path) == directory
    assert {path: path.stat().st_mtime_ns for path in directory.rglob("*")} == stamps


def test_incomplete_tree_is_reported_not_overwritten(tmp_path: Path) -> None:
    target = demo_dir(SMALL, tmp_path)
    (target / "train").mkdir(parents=True)
    with pytest.raises(FileExistsError, match=str(target)):
        materialise_demo(SMALL, tmp_path)


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROXYANO_PLUGIN_CACHE", str(tmp_path))
    assert default_cache_root() == tmp_path / "brain_mri_demo"
    monkeypatch.delenv("PROXYANO_PLUGIN_CACHE")
    assert default_cache_root() == Path("datasets") / "brain_mri_demo"


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for one test; the original is restored after it."""
    original = os.umask(0o022)
    yield os.umask
    os.umask(original)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o755), (0o077, 0o700)])
def test_generated_tree_has_the_mode_the_umask_gives(
    tmp_path: Path, umask: Callable[[int], None], mask: int, mode: int
) -> None:
    """Not ``mkdtemp``'s 0700 carried over by the rename: others may read a cache the umask lets them read."""
    umask(mask)
    directory = materialise_demo(SMALL, tmp_path)
    assert stat.S_IMODE(directory.stat().st_mode) == mode
    assert stat.S_IMODE((directory / "train/good").stat().st_mode) == mode
