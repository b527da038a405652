"""Render the README figure and measure the mechanism: is the predicted proxy sharp on normal tissue, wrong in lesions?

    python scripts/make_figure.py --ckpt results/ProxyAno/BrainMRIDemo/latest/weights/lightning/model.ckpt
    python scripts/make_figure.py --ckpt model.ckpt --root ../shared/data/lgg_flair --split-csv patients_seed0 \\
        --output docs/proxyano_lgg.png

Rows are lesion slices of the test split (the embedded BrainMRIDemo, or a ``SplitCSV`` dataset with masks);
columns: input, extracted proxy, predicted proxy, reconstruction, anomaly map, ground truth. Beside the PNG
it writes ``<output>.json`` with, over the whole test split:

- ``normal_proxy_psnr`` / ``normal_reconstruction_psnr``: PSNR (dB) of the predicted against the extracted
  proxy, and of the reconstruction against the image, on normal slices (high = normal anatomy reproduced);
- ``lesion_proxy_error`` / ``lesion_reconstruction_error`` against ``tissue_...`` counterparts: mean absolute
  error inside the lesion masks and in the rest of the head of the same slices (a working mechanism
  departs from the image much more inside lesions).
"""

import argparse
import json
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch.nn import functional as F  # noqa: N812

from proxyano_plugin import BrainMRIDemo, ProxyAno
from proxyano_plugin.data import SplitCSV

COLUMNS = ("input", "extracted proxy", "predicted proxy", "reconstruction", "anomaly map", "ground truth")
HEAD_THRESHOLD = 0.05  # pixels brighter than this (of [0, 1]) are head, for the "rest of the head" error


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB over the whole set, intensities in [0, 1]."""
    return float(10 * torch.log10(1 / F.mse_loss(prediction, target).clamp_min(1e-12)))


@torch.no_grad()
def run_test_split(model: ProxyAno, loader) -> dict[str, torch.Tensor]:
    """Images, proxies (extracted, predicted), reconstructions, maps, masks and labels of the whole test split."""
    keys = ("image", "extracted", "proxy", "reconstruction", "anomaly_map", "mask", "label")
    collected: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
    for batch in loader:
        parts = model.model.reconstruct(model.pre_processor(batch.image))
        size = parts.image.shape[-2:]
        masks = torch.zeros(len(parts.image), 1, *size)
        if batch.gt_mask is not None:
            masks = F.interpolate(batch.gt_mask.unsqueeze(1).float(), size=size, mode="nearest")
        values = (parts.image, model.proxy_extractor(parts.image), parts.proxy, parts.reconstruction)
        values += (parts.anomaly_map, masks, batch.gt_label.bool())
        for key, value in zip(keys, values, strict=True):
            collected[key].append(value)
    return {key: torch.cat(value) for key, value in collected.items()}


def diagnostics(split: dict[str, torch.Tensor]) -> dict[str, float]:
    """The numbers described in the module docstring."""
    normal = ~split["label"]
    lesion = split["mask"].bool() & split["label"].view(-1, 1, 1, 1)
    tissue = (split["image"] > HEAD_THRESHOLD) & ~split["mask"].bool() & split["label"].view(-1, 1, 1, 1)
    proxy_error = (split["proxy"] - split["extracted"]).abs()
    reconstruction_error = (split["reconstruction"] - split["image"]).abs()
    return {
        "normal_slices": int(normal.sum()),
        "lesion_slices": int(split["label"].sum()),
        "normal_proxy_psnr": psnr(split["proxy"][normal], split["extracted"][normal]),
        "normal_reconstruction_psnr": psnr(split["reconstruction"][normal], split["image"][normal]),
        "lesion_proxy_error": float(proxy_error[lesion].mean()),
        "tissue_proxy_error": float(proxy_error[tissue].mean()),
        "lesion_reconstruction_error": float(reconstruction_error[lesion].mean()),
        "tissue_reconstruction_error": float(reconstruction_error[tissue].mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="a ProxyAno checkpoint")
    parser.add_argument("--root", default=None, help="SplitCSV dataset root (default: the embedded BrainMRIDemo)")
    parser.add_argument("--split-csv", default=None, help="its split CSV (needs a mask column)")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--output", type=Path, default=Path("docs/proxyano_demo.png"))
    args = parser.parse_args()

    model = ProxyAno.load_from_checkpoint(args.ckpt).eval()
    if args.root:
        datamodule = SplitCSV(
            args.root,
            args.split_csv,
            eval_batch_size=64,
            num_workers=0,
            pixel_metrics=True,
            val_split_mode="same_as_test",
        )
    else:
        datamodule = BrainMRIDemo(eval_batch_size=64, num_workers=0, val_split_mode="same_as_test")
        datamodule.prepare_data()
    datamodule.setup("test")
    split = run_test_split(model, datamodule.test_dataloader())
    numbers = diagnostics(split)
    lesion = split["label"].nonzero().flatten()[: args.rows]
    panels = [split[key][lesion] for key in ("image", "extracted", "proxy", "reconstruction", "anomaly_map", "mask")]

    figure, axes = plt.subplots(len(lesion), len(COLUMNS), figsize=(2 * len(COLUMNS), 2 * len(lesion)), squeeze=False)
    for row in range(len(lesion)):
        for column, (title, panel) in enumerate(zip(COLUMNS, panels, strict=True)):
            axis = axes[row, column]
            style = {"cmap": "inferno"} if title == "anomaly map" else {"cmap": "gray", "vmin": 0, "vmax": 1}
            axis.imshow(panel[row, 0].cpu(), **style)
            axis.set_axis_off()
            if row == 0:
                axis.set_title(title, fontsize=9)
    figure.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=110)
    args.output.with_suffix(".json").write_text(json.dumps(numbers, indent=2) + "\n")
    print(json.dumps(numbers, indent=2))
    print(f"wrote {args.output} and {args.output.with_suffix('.json')}")


if __name__ == "__main__":
    main()
