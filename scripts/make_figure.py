"""Render the README figure: input, extracted proxy, predicted proxy, reconstruction, anomaly map, truth.

    python scripts/make_figure.py --ckpt results/ProxyAno/BrainMRIDemo/latest/weights/lightning/model.ckpt

Uses the test split of the embedded BrainMRIDemo (lesion slices) and writes docs/proxyano_demo.png.
"""

import argparse
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch.nn import functional as F  # noqa: N812

from proxyano_plugin import BrainMRIDemo, ProxyAno

COLUMNS = ("input", "extracted proxy", "predicted proxy", "reconstruction", "anomaly map", "ground truth")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="ProxyAno checkpoint trained on BrainMRIDemo")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--output", type=Path, default=Path("docs/proxyano_demo.png"))
    args = parser.parse_args()

    model = ProxyAno.load_from_checkpoint(args.ckpt).eval()
    datamodule = BrainMRIDemo(eval_batch_size=64)
    datamodule.prepare_data()
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    lesion = batch.gt_label.bool().nonzero().flatten()[: args.rows]
    with torch.no_grad():
        images = model.pre_processor(batch.image[lesion])
        parts = model.model.reconstruct(images)
        extracted = model.proxy_extractor(parts.image)
    masks = F.interpolate(batch.gt_mask[lesion].unsqueeze(1).float(), size=images.shape[-2:], mode="nearest")
    panels = (parts.image, extracted, parts.proxy, parts.reconstruction, parts.anomaly_map, masks)

    figure, axes = plt.subplots(len(lesion), len(COLUMNS), figsize=(2 * len(COLUMNS), 2 * len(lesion)))
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
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
