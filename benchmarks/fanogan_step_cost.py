"""Where an f-AnoGAN training step spends its time on this CPU, against its FLOPs (issue 13, item 2).

For each network width, one process builds the networks the way ``proxyano_plugin.FAnoGAN`` does (grayscale,
64 px unless told otherwise) and measures, interleaved round by round so that other load on the machine hits
every variant alike:

- the three step types of training (a WGAN-GP critic step, the generator update that follows every
  ``critic_iterations`` of them, an izi_f encoder step) and inference, in PyTorch's default NCHW layout and
  with channels-last weights (what ``FAnoGAN`` uses on CPUs), plus, for attribution only, a critic step
  without the gradient penalty;
- their FLOPs (``torch.utils.flop_counter``; two per multiply-add) and the achieved GFLOP/s;
- a plain 3x3 convolution of the critic's costliest shape (forward and backward), the rate this CPU reaches
  on a conv of that size in the same process: the ceiling for a step made of such convolutions.

The steps are those of ``FAnoGAN``'s training (same losses, optimisers and ``requires_grad`` toggling) without
Lightning around them; ``--lightning-steps N`` also times N batches of a real ``Trainer.fit`` (the harness's
path) to show what Lightning adds. ``--profile`` prints torch.profiler's table of the costliest ops of the
critic step. ``--stages GAN_ITERATIONS ENCODER_ITERATIONS`` turns the medians into the training time of
such a run (steps times seconds per step).

    OMP_NUM_THREADS=1 python benchmarks/fanogan_step_cost.py --dims 16 --repeats 5 --profile
    OMP_NUM_THREADS=1 python benchmarks/fanogan_step_cost.py --dims 8 12 16 --stages 300 1000 --json cost.json

Timings on a shared machine are noisy: compare the ratios within one run (``ratio`` columns, medians of
per-round ratios), not absolute seconds across runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from proxyano_plugin.models.fanogan.loss import critic_loss, generator_loss, izif_loss
from proxyano_plugin.models.fanogan.torch_model import FAnoGANModel

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker, whose hooks break ``autograd.grad`` on a leaf input
    (the gradient penalty's interpolates): 'A leaf node was passed to _will_engine_execute_node'."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *args: object) -> None:
        return None


class StepFlops(FlopCounterMode):
    """FLOPs of anything, double backward included; totals only (no per-module table)."""

    def __init__(self) -> None:
        super().__init__(display=False)
        self.mod_tracker = _GlobalOnly()


def count_flops(step: Callable[[], object]) -> int:
    with StepFlops() as counter:
        step()
    return counter.get_total_flops()


@dataclass
class Networks:
    """The networks and optimisers of one FAnoGAN, with its step types as closures."""

    model: FAnoGANModel
    images: torch.Tensor
    critic_iterations: int = 5
    penalty_weight: float = 10.0
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # As FAnoGAN.configure_optimizers.
        betas = (0.0, 0.9)
        self.optimizers = {
            "generator": torch.optim.Adam(self.model.generator.parameters(), lr=1e-4, betas=betas),
            "critic": torch.optim.Adam(self.model.critic.parameters(), lr=1e-4, betas=betas),
            "encoder": torch.optim.RMSprop(self.model.encoder.parameters(), lr=5e-5, alpha=0.9, eps=1e-5),
        }

    def _fake(self) -> torch.Tensor:
        with torch.no_grad():
            return self.model.generator(self.model.sample_latent(self.images.shape[0], self.images.device))

    def critic_step(self, penalty: bool = True) -> None:
        """FAnoGAN._gan_step's critic half; ``penalty=False`` drops the gradient penalty (attribution only)."""
        generator, critic = self.model.generator.train(), self.model.critic.train()
        del generator
        fake = self._fake()
        if penalty:
            loss = critic_loss(critic, self.images, fake, self.penalty_weight).loss
        else:
            loss = critic(fake).mean() - critic(self.images).mean()
        if not torch.isfinite(loss):  # FAnoGAN checks every loss (a sync on GPUs)
            raise FloatingPointError(loss)
        self.optimizers["critic"].zero_grad()
        loss.backward()
        self.optimizers["critic"].step()

    def generator_step(self) -> None:
        """FAnoGAN._gan_step's generator half: critic and encoder frozen as Lightning's toggle_optimizer does."""
        frozen = (self.model.critic, self.model.encoder)
        for network in frozen:
            network.requires_grad_(False)
        z = self.model.sample_latent(self.images.shape[0], self.images.device)
        loss = generator_loss(self.model.critic, self.model.generator(z))
        self.optimizers["generator"].zero_grad()
        loss.backward()
        self.optimizers["generator"].step()
        for network in frozen:
            network.requires_grad_(True)

    def encoder_step(self) -> None:
        """FAnoGAN._encoder_step: izi_f with generator and critic frozen in eval mode."""
        for frozen in (self.model.generator, self.model.critic):
            frozen.eval().requires_grad_(False)
        self.model.encoder.train()
        reconstructions = self.model.generator(self.model.encoder(self.images))
        loss, _, _ = izif_loss(self.model.critic, self.images, reconstructions, self.model.kappa)
        self.optimizers["encoder"].zero_grad()
        loss.backward()
        self.optimizers["encoder"].step()
        for frozen in (self.model.generator, self.model.critic):
            frozen.train().requires_grad_(True)

    def inference(self) -> None:
        """The scoring path (eval mode, no gradients) on the same batch."""
        self.model.eval()
        with torch.no_grad():
            self.model(self.images.expand(-1, 3, -1, -1) * 0.5 + 0.5)
        self.model.train()


def build(dim: int, image_size: int, batch_size: int, layout: str, seed: int = 0) -> Networks:
    torch.manual_seed(seed)
    model = FAnoGANModel(in_channels=1, image_size=image_size, dim=dim).to(memory_format=LAYOUTS[layout])
    images = torch.rand(batch_size, 1, image_size, image_size) * 2 - 1
    return Networks(model, images)


def conv_reference(batch_size: int, channels: int, out_channels: int, size: int, layout: str) -> Callable[[], None]:
    """Forward and backward of one plain 3x3 conv: what this CPU does with a well-shaped convolution."""
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, out_channels, 3, padding=1).to(memory_format=LAYOUTS[layout])
    x = torch.randn(batch_size, channels, size, size).to(memory_format=LAYOUTS[layout]).requires_grad_(True)

    def step() -> None:
        conv(x).sum().backward()

    return step


def time_interleaved(
    variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of every variant, measured round by round (one call of each per round)."""
    for step in variants.values():
        for _ in range(warmup):
            step()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, step in variants.items():
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def profile_table(networks: Networks, steps: int = 3, rows: int = 20) -> str:
    """torch.profiler's costliest ops (self CPU time) over a few critic steps."""
    from torch.profiler import ProfilerActivity, profile

    networks.critic_step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            networks.critic_step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40)


def lightning_step_seconds(dim: int, batch_size: int, image_size: int, steps: int) -> dict[str, float]:
    """Median seconds per batch of a real ``Trainer.fit`` of FAnoGAN (critic-only batches, and those with the
    generator update), against which the bare steps above show Lightning's share."""
    import lightning
    from anomalib.data import ImageBatch
    from torch.utils.data import DataLoader

    from proxyano_plugin import FAnoGAN

    class BatchTimer(lightning.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_train_batch_start(self, *args: Any) -> None:
            self._start = time.perf_counter()

        def on_train_batch_end(self, *args: Any) -> None:
            self.seconds.append(time.perf_counter() - self._start)

    generator = torch.Generator().manual_seed(0)
    batches = [ImageBatch(image=torch.rand(batch_size, 3, image_size, image_size, generator=generator))]
    model = FAnoGAN(image_size=image_size, dim=dim, gan_iterations=max(steps // 5, 1), encoder_iterations=0)
    timer = BatchTimer()
    trainer = lightning.Trainer(
        max_epochs=-1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(model, train_dataloaders=DataLoader(batches * steps, batch_size=None))
    critic_only = [s for index, s in enumerate(timer.seconds[1:], start=2) if index % 5]
    with_generator = [s for index, s in enumerate(timer.seconds[1:], start=2) if index % 5 == 0]
    return {
        "critic_step_s": statistics.median(critic_only),
        "critic_plus_generator_step_s": statistics.median(with_generator) if with_generator else float("nan"),
        "batches": len(timer.seconds),
    }


def measure_width(args: argparse.Namespace, dim: int) -> dict[str, Any]:
    nets = {layout: build(dim, args.image_size, args.batch_size, layout) for layout in LAYOUTS}
    kinds = {
        "critic": lambda n: n.critic_step(),
        "generator": lambda n: n.generator_step(),
        "encoder": lambda n: n.encoder_step(),
        "inference": lambda n: n.inference(),
    }
    flops = {kind: count_flops(lambda kind=kind: kinds[kind](nets["nchw"])) for kind in kinds}
    flops["critic_without_penalty"] = count_flops(lambda: nets["nchw"].critic_step(penalty=False))
    reference_shape = (args.batch_size, dim, 2 * dim, args.image_size)  # the critic's first block, conv2
    variants: dict[str, Callable[[], object]] = {}
    for layout, networks in nets.items():
        for kind, run in kinds.items():
            variants[f"{kind}/{layout}"] = lambda run=run, networks=networks: run(networks)
        variants[f"conv_reference/{layout}"] = conv_reference(*reference_shape, layout)
    variants["critic_without_penalty/channels_last"] = lambda: nets["channels_last"].critic_step(penalty=False)
    reference_flops = 3 * 2 * args.batch_size * dim * 2 * dim * 9 * args.image_size**2  # fwd + 2x bwd
    seconds = time_interleaved(variants, args.repeats)
    rows = {}
    for name, values in seconds.items():
        kind, layout = name.split("/")
        flop = reference_flops if kind == "conv_reference" else flops[kind]
        rows[name] = {
            "median_s": statistics.median(values),
            "gflop": flop / 1e9,
            "gflop_per_s": flop / 1e9 / statistics.median(values),
            "nchw_over_this": median_ratio(seconds[f"{kind}/nchw"], values) if f"{kind}/nchw" in seconds else None,
            "seconds": values,
        }
    result: dict[str, Any] = {
        "dim": dim,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "reference_conv": f"3x3 conv {dim}->{2 * dim} channels at {args.image_size} px, batch {args.batch_size}",
        "steps": rows,
        "penalty_share_of_critic_time": 1
        - median_ratio(seconds["critic_without_penalty/channels_last"], seconds["critic/channels_last"]),
    }
    if args.stages:
        gan_iterations, encoder_iterations = args.stages
        critic_s = rows["critic/channels_last"]["median_s"]
        total = (
            gan_iterations * 5 * critic_s
            + gan_iterations * rows["generator/channels_last"]["median_s"]
            + encoder_iterations * rows["encoder/channels_last"]["median_s"]
        )
        result["training_estimate_s"] = {
            "gan_iterations": gan_iterations,
            "encoder_iterations": encoder_iterations,
            "seconds": total,
            "formula": "5 x gan_iterations x critic + gan_iterations x generator + encoder_iterations x encoder",
        }
    if args.profile:
        result["profile"] = profile_table(nets["channels_last"])
    if args.lightning_steps:
        result["lightning"] = lightning_step_seconds(dim, args.batch_size, args.image_size, args.lightning_steps)
    return result


def print_result(result: dict[str, Any]) -> None:
    print(f"\n== dim {result['dim']}, batch {result['batch_size']}, {result['image_size']} px ==")
    print(f"{'step':42s} {'median s':>9s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'nchw/this':>9s}")
    for name, row in result["steps"].items():
        ratio = "" if row["nchw_over_this"] is None else f"{row['nchw_over_this']:.2f}"
        print(f"{name:42s} {row['median_s']:9.3f} {row['gflop']:8.2f} {row['gflop_per_s']:8.1f} {ratio:>9s}")
    print(f"reference: {result['reference_conv']}")
    print(f"gradient penalty's share of a channels-last critic step: {result['penalty_share_of_critic_time']:.0%}")
    if "training_estimate_s" in result:
        estimate = result["training_estimate_s"]
        print(
            f"training estimate ({estimate['formula']}): {estimate['gan_iterations']} generator iterations, "
            f"{estimate['encoder_iterations']} encoder steps -> {estimate['seconds'] / 60:.1f} min"
        )
    if "lightning" in result:
        print(f"Trainer.fit: {result['lightning']}")
    if "profile" in result:
        print(result["profile"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[16], help="network widths (FAnoGAN's dim)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per variant (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--stages", type=int, nargs=2, metavar=("GAN_ITERATIONS", "ENCODER_ITERATIONS"))
    parser.add_argument("--profile", action="store_true", help="torch.profiler table of the critic step")
    parser.add_argument("--lightning-steps", type=int, default=0, help="also time N batches of Trainer.fit")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"threads": args.threads, "torch": torch.__version__, "widths": []}
    for dim in args.dims:
        result = measure_width(args, dim)
        print_result(result)
        results["widths"].append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
