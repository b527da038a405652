"""Measure issue-2 targets: ProxyAno on the embedded BrainMRIDemo, several seeds.

Per seed: fit and test wall time, image/pixel AUROC (anomalib's evaluator), peak RSS of this process.
Then inference throughput of the eval-mode torch model at batch 32, 128 px, medians of repeats.

    python benchmarks/demo_targets.py --seeds 0 1 2 --config configs/model/proxyano.yaml
"""

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import lightning
import torch
import yaml
from anomalib.engine import Engine

from proxyano_plugin import BrainMRIDemo, ProxyAno


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def throughput(model_kwargs: dict, image_size: int, batch: int, repeats: int) -> float:
    """Images/s of the exported inference path (torch model, eval mode) on random input."""
    model = ProxyAno(**{**model_kwargs, "image_size": image_size}).model.eval()
    images = torch.rand(batch, 3, image_size, image_size)
    timings = []
    with torch.inference_mode():
        model(images)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(images)
            timings.append(time.perf_counter() - start)
    return batch / statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        type=Path,
        nargs="+",
        default=[Path("configs/model/proxyano.yaml"), Path("configs/model/proxyano_demo.yaml")],
        help="model configs, later ones overriding earlier ones' init args (as anomalib's repeated --config)",
    )
    parser.add_argument("--data-config", type=Path, default=Path("configs/data/brain_mri_demo.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--max-epochs", type=int, default=None, help="default: the data config's trainer.max_epochs, else the model's"
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=YAML", help="override model init args")
    parser.add_argument("--output", type=Path, default=None, help="append one JSON line per seed here")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()

    configs = [yaml.safe_load(path.read_text()) for path in args.config]
    config = configs[0]
    model_kwargs = {key: value for part in configs for key, value in part["model"].get("init_args", {}).items()}
    for item in args.set:
        key, value = item.split("=", 1)
        model_kwargs[key] = yaml.safe_load(value)
    data_config = yaml.safe_load(args.data_config.read_text())
    data_kwargs = data_config["data"].get("init_args", {})
    # as anomalib composes them: the data config (given last) sets the demo's length over the model config's
    max_epochs = args.max_epochs or {**config["trainer"], **data_config.get("trainer", {})}["max_epochs"]
    check_every = config["trainer"].get("check_val_every_n_epoch", 1)

    for seed in args.seeds:
        lightning.seed_everything(seed)
        model = ProxyAno(**model_kwargs)
        engine = Engine(
            max_epochs=max_epochs,
            check_val_every_n_epoch=check_every,
            logger=False,
            default_root_dir=Path("results/demo_targets"),
            enable_progress_bar=False,
        )
        datamodule = BrainMRIDemo(**data_kwargs)
        start = time.perf_counter()
        engine.fit(model, datamodule=datamodule)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        metrics = engine.test(model, datamodule=datamodule, verbose=False)[0]
        test_s = time.perf_counter() - start
        record = {
            "seed": seed,
            "max_epochs": max_epochs,
            "overrides": args.set,
            "fit_s": round(fit_s, 1),
            "test_s": round(test_s, 1),
            "peak_rss_mb": round(peak_rss_mb()),
            **{name: round(float(value), 4) for name, value in metrics.items()},
        }
        print(json.dumps(record), flush=True)
        if args.output:
            with args.output.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    if not args.skip_throughput:
        rate = throughput(model_kwargs, image_size=128, batch=32, repeats=5)
        print(json.dumps({"inference_images_per_s": round(rate, 1), "batch": 32, "image_size": 128}))


if __name__ == "__main__":
    main()
