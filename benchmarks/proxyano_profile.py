"""Where ProxyAno's inference time goes, per module, at several input sizes (issue 15, item 1).

Builds the default network (``ProxyAno()``'s arguments, or others given with ``--set``; random weights: the
cost does not depend on them) and times one eval-mode forward pass of a batch, split by module with forward
hooks: the PEM's encoder, memory and decoder, the IRM's encoder and decoder, and the scoring head (error map,
smoothing, top-k), which is what the hooks leave of the whole pass. Sizes run interleaved round by round so
machine load hits them alike; the table gives medians over rounds, each module's share of the pass, and its
FLOPs (``torch.utils.flop_counter``, two per multiply-add).

    OMP_NUM_THREADS=1 python benchmarks/proxyano_profile.py --sizes 64 128 256 --batch-size 32 --repeats 5
    OMP_NUM_THREADS=1 python benchmarks/proxyano_profile.py --sizes 64 --set 'widths=[4,8,16,32]' --set memory_size=500
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from proxyano_plugin import ProxyAno


def timed_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The parts whose time is reported, by name (the scoring head is the remainder)."""
    inner = model.model
    parts = {"pem.encoder": inner.pem.encoder, "pem.decoder": inner.pem.decoder}
    if len(inner.pem.memories):
        parts["pem.memory"] = inner.pem.memories
    parts |= {"irm.encoder": inner.irm.encoder, "irm.decoder": inner.irm.decoder}
    return parts


@contextmanager
def module_timer(parts: dict[str, nn.Module], seconds: dict[str, float]) -> Iterator[None]:
    """Add each part's forward wall time to ``seconds`` (a ModuleList is timed through its children)."""
    handles, started = [], {}
    for name, module in parts.items():
        for child in module if isinstance(module, nn.ModuleList) else [module]:

            def before(_module: nn.Module, _args: object, key: int = id(child)) -> None:
                started[key] = time.perf_counter()

            def after(_module: nn.Module, _args: object, _out: object, key: int = id(child), part: str = name) -> None:
                seconds[part] += time.perf_counter() - started.pop(key)

            handles += [child.register_forward_pre_hook(before), child.register_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def flops_by_part(model: ProxyAno, images: torch.Tensor, parts: dict[str, nn.Module]) -> dict[str, float]:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.model(images)
    by_module = counter.get_flop_counts()
    total = sum(by_module.get("Global", {}).values())
    result = {}
    for name, module in parts.items():
        children = module if isinstance(module, nn.ModuleList) else [module]
        paths = [path for path, sub in model.model.named_modules() if any(sub is child for child in children)]
        result[name] = sum(sum(by_module.get(f"ProxyAnoModel.{path}", {}).values()) for path in paths)
    result["scoring"] = total - sum(result.values())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=JSON", help="a ProxyAno argument, e.g. 'widths=[4,8,16,32]'"
    )
    args = parser.parse_args()
    # As benchmarks/proxyano_sweep.py reads its --set: values are JSON (strings quoted).
    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    models = {size: ProxyAno(image_size=size, **overrides).eval() for size in args.sizes}
    batches = {size: torch.rand(args.batch_size, 3, size, size) for size in args.sizes}
    parts = {size: timed_modules(model) for size, model in models.items()}
    samples: dict[int, dict[str, list[float]]] = {size: defaultdict(list) for size in args.sizes}
    for round_index in range(args.repeats + 1):
        for size in args.sizes:
            seconds: dict[str, float] = defaultdict(float)
            with module_timer(parts[size], seconds), torch.no_grad():
                start = time.perf_counter()
                models[size].model(batches[size])
                total = time.perf_counter() - start
            if round_index == 0:
                continue  # warm-up
            seconds["scoring"] = total - sum(seconds.values())
            seconds["total"] = total
            for name, value in seconds.items():
                samples[size][name].append(value)

    setting = f"batch {args.batch_size}, {args.threads} thread(s), medians of {args.repeats} rounds"
    print(f"ProxyAno network {overrides or '(defaults)'}, eval forward, {setting}")
    for size in args.sizes:
        flops = flops_by_part(models[size], batches[size], parts[size])
        total = statistics.median(samples[size]["total"])
        per_image = sum(flops.values()) / args.batch_size / 1e6
        print(f"\n== {size} px: {args.batch_size / total:.0f} img/s, {per_image:.0f} MFLOP/image")
        print(f"{'part':14} {'ms/batch':>9} {'share':>6} {'MFLOP/img':>10} {'GFLOP/s':>8}")
        for name in [*parts[size], "scoring"]:
            median = statistics.median(samples[size][name])
            mflop = flops.get(name, 0.0) / args.batch_size / 1e6
            rate = flops.get(name, 0.0) / median / 1e9 if median > 0 else float("nan")
            print(f"{name:14} {median * 1e3:9.1f} {median / total:6.1%} {mflop:10.1f} {rate:8.1f}")


if __name__ == "__main__":
    main()
