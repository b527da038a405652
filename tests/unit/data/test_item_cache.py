"""Dataset items read once and served from memory (proxyano_plugin.data.item_cache)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from anomalib.data.datasets.image.tabular import TabularDataset
from torchvision.transforms.v2 import Compose, RandomHorizontalFlip, Resize

from proxyano_plugin.data import SplitCSV
from proxyano_plugin.data.item_cache import ItemCache
from proxyano_plugin.data.split_csv import CachedTabularDataset


def training_set(root: Path, **kwargs) -> CachedTabularDataset:
    datamodule = SplitCSV(root=root, split_csv="patients", num_workers=0, val_split_mode="none", **kwargs)
    datamodule.setup()
    return datamodule.train_data


def assert_same_items(first, second) -> None:
    assert first.image_path == second.image_path
    torch.testing.assert_close(first.image, second.image, rtol=0, atol=0)
    torch.testing.assert_close(first.gt_mask, second.gt_mask, rtol=0, atol=0)


def test_training_items_are_read_once_and_equal_a_fresh_read(patients_tree: Path) -> None:
    dataset = training_set(patients_tree)
    assert isinstance(dataset, CachedTabularDataset)
    dataset.augmentations = Resize((16, 16))  # what anomalib gives it: the model's resize
    first = [dataset[index] for index in range(len(dataset))]
    for path in {item.image_path for item in first}:
        Path(path).write_bytes(b"")  # a second read from disk would now fail
    for index, item in enumerate(first):
        assert_same_items(dataset[index], item)
    assert dataset.cached_bytes == sum(item.image.nbytes + item.gt_mask.nbytes for item in first)


def test_random_augmentations_and_new_tables_are_not_served_from_memory(patients_tree: Path) -> None:
    dataset = training_set(patients_tree)
    dataset.augmentations = Compose([Resize((16, 16)), RandomHorizontalFlip(p=1.0)])
    dataset[0]
    assert not dataset.cached_items
    dataset.augmentations = Compose([Resize((16, 16))])
    kept = dataset[0]
    assert list(dataset.cached_items) == [0]
    dataset.samples = dataset.samples.iloc[::-1].reset_index(drop=True)  # re-sorted by path: same rows
    assert dataset[0] is not kept
    dataset.augmentations = Resize((8, 8))
    assert dataset[0].image.shape[-1] == 8


def test_the_memory_budget_and_the_base_class_are_respected(patients_tree: Path) -> None:
    plain = TabularDataset(name="p", samples=training_set(patients_tree).samples, root=patients_tree)
    dataset = CachedTabularDataset.adopt(plain, max_bytes=1)
    dataset[0]
    assert not dataset.cached_items
    with pytest.raises(TypeError, match="CachedTabularDataset keeps TabularDataset items, not int's"):
        CachedTabularDataset.adopt(3)
    assert issubclass(CachedTabularDataset, ItemCache)


def test_full_depth_reads_are_not_cached(patients_tree: Path) -> None:
    assert not isinstance(training_set(patients_tree, intensity="minmax"), ItemCache)
