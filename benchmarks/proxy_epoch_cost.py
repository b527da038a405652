"""What a proxy costs a ProxyAno training epoch: superpixel (or any proxy) against identity, cold and warm cache.

    python benchmarks/proxy_epoch_cost.py [--proxies superpixel blur edges] [--epochs 4] [--image-size 64]

Trains on the BrainMRIDemo training set with the model's own ``training_losses`` (no Lightning, no data
loading in the timed loop: the images are held as one tensor), one fresh model per proxy. Epoch 1 is the
cold cache (every proxy computed); the later epochs hit the cache. Proxies and the identity reference run
interleaved, epoch by epoch, so machine load hits them alike; the ratios are of medians measured in this
same run. Prints one JSON line per proxy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from proxyano_sweep import load_split, train_epoch  # beside this script

from proxyano_plugin import BrainMRIDemo, ProxyAno


def run_epoch(model: ProxyAno, optimizer: torch.optim.Optimizer, images: torch.Tensor, batch_size: int) -> float:
    start = time.perf_counter()
    train_epoch(model, optimizer, images, batch_size)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxies", nargs="+", default=["superpixel"])
    parser.add_argument("--epochs", type=int, default=4, help="1 cold + (epochs - 1) warm")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    data = BrainMRIDemo(train_batch_size=64)
    data.prepare_data()
    data.setup()
    images, _, _ = load_split(ProxyAno(image_size=args.image_size), data.train_dataloader(), torch.device("cpu"))
    names = ["identity", *args.proxies]
    models = {name: ProxyAno(image_size=args.image_size, proxy=name) for name in names}
    optimizers = {name: model.configure_optimizers() for name, model in models.items()}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.epochs):
        for name in names:
            seconds[name].append(run_epoch(models[name], optimizers[name], images, args.batch_size))
    identity_cold, identity_warm = seconds["identity"][0], statistics.median(seconds["identity"][1:])
    for name in args.proxies:
        cold, warm = seconds[name][0], statistics.median(seconds[name][1:])
        cache = models[name].proxy_extractor
        print(
            json.dumps(
                {
                    "proxy": name,
                    "images": images.shape[0],
                    "image_size": args.image_size,
                    "cold_epoch_s": round(cold, 2),
                    "warm_epoch_s": round(warm, 2),
                    "identity_cold_epoch_s": round(identity_cold, 2),
                    "identity_warm_epoch_s": round(identity_warm, 2),
                    "cold_ratio": round(cold / identity_cold, 3),
                    "warm_ratio": round(warm / identity_warm, 3),
                    "cache_hits": cache.hits,
                    "cache_misses": cache.misses,
                    "torch_threads": torch.get_num_threads(),
                }
            )
        )


if __name__ == "__main__":
    main()
