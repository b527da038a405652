"""Which of the demo's validation lesions a saved sweep model finds, by the generator's lesion kind.

    python benchmarks/results/proxyano-sweep-jitter-cpu/lesion_kinds.py demo-trans-s0.pt [--root CACHE]

For each lesion slice: the share of the validation set's normal slices that score below it (1 = above every
normal slice), averaged per kind and for lesions under / over 60 pixels at the model's size.
"""

import argparse
import collections
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/, for the sweep's loader
from proxyano_sweep import load_split

from proxyano_plugin import BrainMRIDemo, ProxyAno
from proxyano_plugin.data.demo_generator import further_subjects


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("state", help="a model saved by proxyano_sweep.py --save")
    parser.add_argument("--root", default=None, help="BrainMRIDemo cache folder")
    args = parser.parse_args()
    model = ProxyAno(proxy_kwargs={"n_segments": 1000})
    model.model.load_state_dict(torch.load(args.state, weights_only=True)["state"])
    model.eval()
    data = BrainMRIDemo(root=args.root, val_split_mode="lesions", val_subjects=8, val_lesions_before_scan=True)
    data.setup()
    images, labels, masks, _ = load_split(model, data.val_dataloader(), torch.device("cpu"))
    generated = further_subjects(data.spec, data.val_subjects, lesion_fraction=0.5)  # the set's own slices, in order
    with torch.no_grad():
        scores = model.model(images).pred_score.flatten().numpy()
    normal = scores[labels.numpy() == 0]
    by_kind = collections.defaultdict(list)
    for index, image in enumerate(generated):
        if image.mask is not None:
            by_kind[image.lesion].append((int(masks[index].sum()), float((normal < scores[index]).mean())))
    for kind, rows in sorted(by_kind.items()):
        area, rank = np.array(rows).T
        print(
            f"{kind}: {len(rows)} lesions, above {rank.mean():.2f} of the normal slices "
            f"(< 60 px: {rank[area < 60].mean():.2f}, >= 60 px: {rank[area >= 60].mean():.2f})"
        )


if __name__ == "__main__":
    main()
