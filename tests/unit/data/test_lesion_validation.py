"""The label-free validation set (held-out training normals with painted lesions) and epoch selection on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from testing_utils import REPO
from testing_utils import head_slice as head

from proxyano_plugin import ProxyAno
from proxyano_plugin.data import SplitCSV
from proxyano_plugin.data.synthetic_validation import hold_out, near_duplicate_groups, paint_validation
from proxyano_plugin.image_io import decode_image
from proxyano_plugin.models.selection import BestEpoch


def lesion_datamodule(root: Path, **kwargs) -> SplitCSV:
    settings = {"val_split_mode": "lesions", "val_split_ratio": 0.34, "val_group_column": "patient"}
    settings |= {"val_cache_dir": str(root / "cache"), "num_workers": 0, "seed": 0, "train_batch_size": 4}
    return SplitCSV(root=root, split_csv="patients", **settings | kwargs)


def test_hold_out_takes_whole_groups_and_is_seeded():
    groups = ["a", "a", "b", "b", "c", "c", "d", "d"]
    held = hold_out(groups, 0.5, seed=3)
    assert held.sum() == 4
    for group in set(groups):
        assert len({bool(h) for g, h in zip(groups, held, strict=True) if g == group}) == 1
    np.testing.assert_array_equal(held, hold_out(groups, 0.5, seed=3))
    with pytest.raises(ValueError, match="at least 2 groups"):
        hold_out(["a", "a"], 0.5, 0)


@pytest.mark.parametrize("appearance", ["t1ce", "flair"])
def test_painted_lesions_change_exactly_their_masks(appearance):
    images = [head(seed) for seed in range(6)]
    painted = paint_validation(images, seed=0, appearance=appearance)
    assert painted.labels.sum() == 3
    for before, after, mask, label in zip(images, painted.images, painted.masks, painted.labels, strict=True):
        if label:
            assert mask.sum() > 0
            assert np.abs(after - before)[mask].mean() > 0.02
        else:
            assert not mask.any()
            np.testing.assert_array_equal(after, before)
    if appearance == "flair":  # hyperintense on FLAIR
        assert all(
            (a - b)[m].mean() > 0
            for b, a, m, lab in zip(images, painted.images, painted.masks, painted.labels, strict=True)
            if lab
        )


def test_paired_validation_holds_each_slice_clean_and_painted():
    empty = np.zeros((64, 64), dtype=np.float32)  # no head: cannot host a lesion, so it is left out
    images = [head(seed) for seed in range(3)] + [empty]
    paired = paint_validation(images, seed=0, paired=True)
    assert paired.origins == [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(paired.labels, [0, 1, 0, 1, 0, 1])
    for position, origin in enumerate(paired.origins):
        image, mask = paired.images[position], paired.masks[position]
        if paired.labels[position]:
            assert mask.sum() > 0
            assert np.abs(image - images[origin])[mask].mean() > 0.02
        else:
            assert not mask.any()
            np.testing.assert_array_equal(image, images[origin])
    # The lesion of an image is the one the unpaired set paints into it (same random stream).
    unpaired = paint_validation(images[:3], seed=0, lesion_fraction=1.0)
    for origin in range(3):
        np.testing.assert_array_equal(paired.images[2 * origin + 1], unpaired.images[origin])
    with pytest.raises(ValueError, match="no image has enough head"):
        paint_validation([empty], seed=0, paired=True)


def test_split_csv_paired_lesion_validation(patients_tree: Path):
    datamodule = lesion_datamodule(patients_tree, val_lesion_pairs=True)
    datamodule.setup()
    samples = datamodule.val_data.samples
    assert len(samples) == 12  # the 6 held-out slices of 2 patients, each clean and painted
    assert samples.groupby("source").label_index.apply(lambda labels: sorted(labels) == [0, 1]).all()
    unpaired = lesion_datamodule(patients_tree)
    unpaired.setup()
    assert datamodule.val_data.root != unpaired.val_data.root  # its own cached set
    assert set(samples.source) == set(unpaired.val_data.samples.source)
    with pytest.raises(ValueError, match="val_lesion_pairs needs val_split_mode='lesions'"):
        SplitCSV(root=patients_tree, split_csv="patients", val_lesion_pairs=True)


def test_split_csv_lesion_validation_comes_from_training_patients_only(patients_tree: Path):
    datamodule = lesion_datamodule(patients_tree)
    assert datamodule.label_free_validation
    datamodule.setup()
    train_files = {Path(path).name for path in datamodule.train_data.samples.image_path}
    sources = set(datamodule.val_data.samples.source)
    assert len(train_files) == 12  # 2 of 6 training patients held out, whole
    assert len(sources) == 6
    assert not {Path(source).name for source in sources} & train_files
    assert {Path(source).name.split("_")[0] for source in sources} <= {f"p{index}" for index in range(6)}
    assert len(datamodule.test_data) == 6  # the test split is untouched
    batch = next(iter(datamodule.val_dataloader()))
    assert int(batch.gt_label.sum()) == 3
    assert batch.gt_mask is not None
    assert int(batch.gt_mask[batch.gt_label].flatten(1).sum(1).min()) > 0
    # painted once: a second datamodule reuses the same tree
    written = {path: path.stat().st_mtime_ns for path in (patients_tree / "cache").rglob("*.png")}
    lesion_datamodule(patients_tree).setup()
    assert written == {path: path.stat().st_mtime_ns for path in (patients_tree / "cache").rglob("*.png")}


def test_split_csv_lesion_validation_errors(patients_tree: Path):
    with pytest.raises(ValueError, match=r"val_group_column 'subject' is not a column of .*patient"):
        lesion_datamodule(patients_tree, val_group_column="subject").setup()
    with pytest.raises(ValueError, match="cannot be combined with intensity='minmax'"):
        lesion_datamodule(patients_tree, intensity="minmax")
    with pytest.raises(ValueError, match="val_lesion_appearance must be one of t1ce, flair"):
        lesion_datamodule(patients_tree, val_lesion_appearance="t2")
    with pytest.raises(ValueError, match=r"val_lesion_area must be \[low, high\] with 0 < low <= high < 1"):
        lesion_datamodule(patients_tree, val_lesion_area=[0.3, 0.1])


def test_split_csv_paints_validation_lesions_of_the_size_asked_for(patients_tree: Path):
    def painted_masks(**kwargs) -> tuple[Path, list[np.ndarray]]:
        datamodule = lesion_datamodule(patients_tree, **kwargs)
        datamodule.setup()
        root = datamodule.val_data.root
        return root, [decode_image(root / mask) > 0 for mask in datamodule.val_data.samples.mask_path if mask]

    default_root, small = painted_masks()
    large_root, large = painted_masks(val_lesion_area=[0.2, 0.3])
    assert large_root != default_root  # its own cached set, not the default one reused
    assert len(large) == len(small) == 3
    assert min(mask.sum() for mask in large) > 2 * max(mask.sum() for mask in small)


def asymmetric_slice(seed: int) -> np.ndarray:
    """A head slice with a bright block off the midline: unlike its own mirror image, and unlike other seeds'."""
    image = head(seed)
    row = 8 + 4 * (seed % 6)
    image[row : row + 8, 10:18] = 0.9
    return image


def test_near_duplicate_groups_join_mirrored_and_plain_copies():
    rng = np.random.default_rng(0)
    a, b, c = (asymmetric_slice(seed) for seed in (1, 2, 3))
    near_copy = np.clip(a + rng.normal(0, 0.002, a.shape), 0, 1).astype(np.float32)
    images = [a, b, a[:, ::-1], c, near_copy, c[:, ::-1] * 0.6]  # the dimmed mirror is another image
    groups = near_duplicate_groups(images, max_rmse=3.0)
    assert groups[0] == groups[2] == groups[4]
    assert len({groups[0], groups[1], groups[3], groups[5]}) == 4
    # merged with given groups, chains included: b joins a's group through its patient
    merged = near_duplicate_groups(images, 3.0, groups=["p0", "p1", "p2", "p3", "p1", "p4"])
    assert merged[0] == merged[1] == merged[2] == merged[4]
    assert len({merged[0], merged[3], merged[5]}) == 3
    with pytest.raises(ValueError, match="must be positive"):
        near_duplicate_groups(images, 0.0)


def test_split_csv_holds_out_mirrored_twins_together(tmp_path: Path):
    """Six training slices and their mirror images: a twin never stays in training when the other is held out."""
    (tmp_path / "images").mkdir()
    rows = ["file,label,split,mask"]
    for index in range(6):
        for suffix, image in (("", asymmetric_slice(index)), ("_mirrored", asymmetric_slice(index)[:, ::-1])):
            name = f"images/s{index}{suffix}.png"
            Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / name)
            rows.append(f"{name},0,train,")
    Image.fromarray((asymmetric_slice(9) * 255).astype(np.uint8)).save(tmp_path / "images" / "test.png")
    rows.append("images/test.png,0,test,")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "twins.csv").write_text("\n".join(rows) + "\n")

    def held_out(**kwargs) -> list[str]:
        """The held-out training slices, by the slice they mirror or are."""
        settings = {"val_split_mode": "lesions", "val_split_ratio": 0.34, "seed": 0, "num_workers": 0}
        datamodule = SplitCSV(tmp_path, "twins", val_cache_dir=str(tmp_path / "cache"), **settings | kwargs)
        datamodule.setup()
        sources = set(datamodule.val_data.samples.source)
        assert len(datamodule.train_data) + len(sources) == 12
        return sorted(Path(source).stem.removesuffix("_mirrored") for source in sources)

    grouped = held_out(val_group_near_duplicates=3.0)
    assert len(grouped) == 4
    assert grouped[0::2] == grouped[1::2]  # 2 of the 6 pairs, both twins of each
    alone = held_out()
    assert len(alone) == 4
    assert len(set(alone)) > 2  # without the grouping, single slices: twins split between training and validation
    with pytest.raises(ValueError, match="val_group_near_duplicates needs val_split_mode='lesions'"):
        SplitCSV(tmp_path, "twins", val_group_near_duplicates=3.0)
    with pytest.raises(ValueError, match="distance in grey levels > 0"):
        SplitCSV(tmp_path, "twins", val_split_mode="lesions", val_split_ratio=0.3, val_group_near_duplicates=-1)


def test_best_epoch_keeps_and_restores_the_best_weights():
    model = torch.nn.Linear(2, 1)
    best = BestEpoch()
    best.update(torch.tensor([0.1, 0.9]), torch.tensor([0, 1]), None, None)
    assert best.compute() == {"image_auroc": 1.0, "selection": 1.0}
    assert best.consider({"image_auroc": 0.8, "selection": 0.8}, 0, model)
    kept = model.weight.detach().clone()
    torch.nn.init.constant_(model.weight, 5.0)
    assert not best.consider({"image_auroc": 0.7, "selection": 0.7}, 1, model)
    assert best.best_metrics == {"image_auroc": 0.8, "selection": 0.8}

    # A fit resumed from a checkpoint continues the same selection.
    resumed = BestEpoch()
    resumed.load_state_dict(best.state_dict())
    assert not resumed.consider({"selection": 0.75}, 2, model)
    assert resumed.restore(model) == 0
    torch.testing.assert_close(model.weight, kept)


def test_proxyano_selects_its_epoch_on_lesion_validation_only(patients_tree: Path):
    from anomalib.engine import Engine

    torch.manual_seed(0)
    model = ProxyAno(image_size=32, widths=[4, 8], memory_size=0, proxy="blur", lr_schedule="cosine")
    engine = Engine(max_epochs=3, default_root_dir=patients_tree / "run", enable_progress_bar=False, logger=False)
    engine.fit(model, datamodule=lesion_datamodule(patients_tree))
    assert model.best_epoch.best_epoch in {0, 1, 2}
    # the cosine schedule ran over the trainer's 3 epochs: after the last one the rate sits at its 1 % floor
    assert engine.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01e-3)
    assert "val_selection" in engine.trainer.callback_metrics
    state = model.best_epoch.best_state
    for name, value in model.model.state_dict().items():
        torch.testing.assert_close(value, state[name])
    # a validation set drawn from the test split never selects
    gradient = [{"error": "gradient", "map_sigma": 2.0}]
    other = ProxyAno(image_size=32, widths=[4, 8], memory_size=0, proxy="blur", score_candidates=gradient)
    from_test = SplitCSV(root=patients_tree, split_csv="patients", num_workers=0, val_split_mode="same_as_test")
    Engine(max_epochs=1, default_root_dir=patients_tree / "run2", enable_progress_bar=False, logger=False).fit(
        other, datamodule=from_test
    )
    assert other.best_epoch.best_epoch is None
    assert other.selected_scoring is None
    assert other.model.scoring.error == "l1"  # nor chooses a scoring


def test_proxyano_never_keeps_an_epoch_before_select_from_epoch(patients_tree: Path):
    from anomalib.engine import Engine

    torch.manual_seed(0)
    model = ProxyAno(image_size=32, widths=[4, 8], memory_size=0, proxy="blur", select_from_epoch=2)
    engine = Engine(max_epochs=3, default_root_dir=patients_tree / "run", enable_progress_bar=False, logger=False)
    engine.fit(model, datamodule=lesion_datamodule(patients_tree))
    assert model.best_epoch.best_epoch == 2  # epochs 0 and 1 were validated (curves) but not eligible
    late = ProxyAno(image_size=32, widths=[4, 8], memory_size=0, proxy="blur", select_from_epoch=5)
    Engine(max_epochs=1, default_root_dir=patients_tree / "run2", enable_progress_bar=False, logger=False).fit(
        late, datamodule=lesion_datamodule(patients_tree)
    )
    assert late.best_epoch.best_epoch is None  # nothing eligible: the last epoch's weights stay
    for value in (-1, 1.5, True):
        with pytest.raises(ValueError, match="select_from_epoch must be a non-negative integer"):
            ProxyAno(image_size=32, widths=[4, 8], select_from_epoch=value)


def test_proxyano_chooses_its_scoring_with_the_epoch_and_keeps_it_through_a_checkpoint(patients_tree: Path):
    from anomalib.engine import Engine

    torch.manual_seed(0)
    candidates = [
        {"error": "l1", "map_sigma": 1.0, "relative": False, "error_blur_sigma": 0.0, "topk": 0.01},
        {"error": "gradient", "map_sigma": 2.0, "relative": True, "error_blur_sigma": 0.0, "topk": 0.01},
        {"error": "l1", "map_sigma": 1.0, "relative": False, "error_blur_sigma": 2.0, "topk": 0.05},
    ]
    model = ProxyAno(image_size=32, widths=[4, 8], memory_size=0, proxy="blur", score_candidates=candidates)
    engine = Engine(max_epochs=2, default_root_dir=patients_tree / "run", enable_progress_bar=False, logger=False)
    engine.fit(model, datamodule=lesion_datamodule(patients_tree))
    metrics = engine.trainer.callback_metrics
    readings = [float(metrics[f"val_selection_candidate{index}"]) for index in (0, 1, 2)]
    assert len(set(readings)) == 3  # the scorings read the same reconstructions differently
    chosen = model.selected_scoring
    assert chosen is not None
    assert model.model.scoring == chosen  # restored with the epoch's weights: testing and export use it
    assert chosen._asdict() in candidates
    assert model.best_epoch.best_metrics["selection"] >= max(readings) - 1e-9  # best over epochs and scorings

    # Another scoring in the checkpoint wins over the constructor's (what load_from_checkpoint and export see).
    path = patients_tree / "chosen.ckpt"
    engine.trainer.save_checkpoint(path)
    loaded = ProxyAno.load_from_checkpoint(path)
    assert loaded.model.scoring == chosen
    assert loaded.selected_scoring == chosen


def test_weight_averaging_validates_and_keeps_the_averaged_networks(patients_tree: Path):
    from anomalib.engine import Engine

    torch.manual_seed(0)
    model = ProxyAno(image_size=32, widths=[4, 8], memory_size=0, proxy="blur", weight_averaging=0.9)
    runs = []
    trained_net, averaged_net = model.model, model.averaged
    for label, network in (("trained", trained_net), ("averaged", averaged_net)):
        network.irm.register_forward_hook(lambda module, args, out, label=label: runs.append((label, module.training)))
    engine = Engine(max_epochs=2, default_root_dir=patients_tree / "run", enable_progress_bar=False, logger=False)
    engine.fit(model, datamodule=lesion_datamodule(patients_tree))
    assert ("averaged", False) in runs  # validation ran the averaged networks ...
    assert ("trained", False) not in runs  # ... and never the trained ones
    assert ("averaged", True) not in runs  # which only the optimiser's steps move
    assert model.model is trained_net
    assert model.averaged is averaged_net
    # After the fit: the kept epoch's (averaged) weights in the model; only the model's own weights train.
    state = model.best_epoch.best_state
    for name, value in model.model.state_dict().items():
        torch.testing.assert_close(value, state[name])
    assert all(not parameter.requires_grad for parameter in model.averaged.parameters())
    assert all(parameter.requires_grad for parameter in model.model.parameters())


@pytest.mark.parametrize("batchnorm", ["average", "copy"])
def test_weight_averaging_is_a_warmed_up_moving_average(batchnorm):
    torch.manual_seed(0)
    model = ProxyAno(
        image_size=32, widths=[4, 8], memory_size=0, proxy="blur", weight_averaging=0.75, averaged_batchnorm=batchnorm
    )
    start = {name: value.clone() for name, value in model.model.state_dict().items()}
    weights, variances = 0.0, 1.0  # where the average should be, by the recursion it follows
    for step in range(12):
        with torch.no_grad():
            for parameter in model.model.parameters():
                parameter.add_(1.0)
            for name, buffer in model.model.named_buffers():
                if "running_var" in name:
                    buffer.mul_(0.5)
        model.on_train_batch_end(None, None, step)
        decay = min(0.75, (1 + step) / (10 + step))  # warm-up: 0.1, 0.18, ... until 0.75
        weights = decay * weights + (1 - decay) * (step + 1)
        variances = decay * variances + (1 - decay) * 0.5 ** (step + 1)
    assert int(model.averaged_updates) == 12
    trained = model.model.state_dict()
    for name, parameter in model.averaged.named_parameters():
        torch.testing.assert_close(parameter, start[name] + weights)
    for name, buffer in model.averaged.named_buffers():
        if "running_var" in name:
            expected = start[name] * variances if batchnorm == "average" else trained[name]
            torch.testing.assert_close(buffer, expected)
    with pytest.raises(ValueError, match=r"weight_averaging must be an EMA decay in \[0, 1\)"):
        ProxyAno(image_size=32, widths=[4, 8], weight_averaging=1.0)
    with pytest.raises(ValueError, match="averaged_batchnorm must be one of average, copy"):
        ProxyAno(image_size=32, widths=[4, 8], weight_averaging=0.5, averaged_batchnorm="recompute")


@pytest.mark.parametrize(
    "candidate",
    [
        {"error": "ssim", "map_sigma": 1.0},
        {"error": "l1"},
        {"error": "l1", "map_sigma": -1},
        {"error": "l1", "map_sigma": 1, "relative": "yes"},
        {"error": "l1", "map_sigma": 1, "sign": "both"},
        "l1",
    ],
)
def test_score_candidates_are_checked_when_built(candidate):
    with pytest.raises(ValueError, match=r"error|map_sigma|score candidate|relative"):
        ProxyAno(image_size=32, widths=[4, 8], memory_size=0, proxy="blur", score_candidates=[candidate])


def test_every_reconstruction_model_logs_label_free_validation_without_selecting(patients_tree: Path):
    """The baselines' training curves carry the same validation AUROCs; only ProxyAno keeps a best epoch."""
    from anomalib.engine import Engine

    from proxyano_plugin import Autoencoder

    torch.manual_seed(0)
    model = Autoencoder(image_size=32, base_width=4, hidden_size=32)
    engine = Engine(max_epochs=1, default_root_dir=patients_tree / "ae", enable_progress_bar=False, logger=False)
    engine.fit(model, datamodule=lesion_datamodule(patients_tree))
    metrics = engine.trainer.callback_metrics
    assert {"val_image_auroc", "val_pixel_auroc", "val_selection"} <= set(metrics)
    assert 0 <= float(metrics["val_image_auroc"]) <= 1
    assert model.best_epoch.best_epoch is None


def test_the_shipped_lgg_config_builds_lesion_validation_by_patient(patients_tree: Path):
    from testing_utils import parse_data

    config = REPO / "configs" / "data" / "lgg_flair.yaml"
    datamodule = parse_data(
        "--config",
        str(config),
        "--data.root",
        str(patients_tree),
        "--data.split_csv",
        "patients",
        "--data.num_workers",
        "0",
        "--data.val_cache_dir",
        str(patients_tree / "cache"),
    )
    assert datamodule.label_free_validation
    assert datamodule.val_group_column == "patient"
    assert datamodule.val_lesion_appearance == "flair"
    datamodule.setup()
    assert len(datamodule.val_data) == 3  # 15 % of 6 training patients: one patient, held out whole
