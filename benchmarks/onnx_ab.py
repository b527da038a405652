"""Side-by-side ONNX Runtime throughput of exported models, timed round-robin (issue 15).

The `speed` suite times its rows one after the other, each in its own minute of the machine; on a shared VM the
clock drifts between minutes and moves a row by 10-20 % from one run to the next. This script loads every model
once and times them in turn, round after round, so drift hits them alike: medians and quartiles per model, and
each model's throughput relative to the first. Use it to compare variants of one network (export each from its
own checkout, e.g. a ``git worktree`` of the commit before a change, with ``PYTHONPATH=<worktree>``); quote the
`speed` suite for the issue's ratios.

    python benchmarks/onnx_ab.py export ProxyAno --size 64 --output exports/overlay \\
        --set space_to_depth=2 --set memory_size=256 --set skip_merge='"add"' --set refine_width=8
    python benchmarks/onnx_ab.py export Autoencoder --size 64 --output exports/autoencoder
    OMP_NUM_THREADS=1 python benchmarks/onnx_ab.py time exports/overlay exports/autoencoder --size 64 \\
        --images ../shared/data/brain_tumor_mri/normal
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = ("ProxyAno", "Autoencoder")


def export(model_name: str, size: int, overrides: dict, output: Path) -> Path:
    """Export the untrained model as ``anomalib export`` does (pre- and post-processing in the graph) to ``output``."""
    import torch

    from proxyano_plugin import Autoencoder, ProxyAno

    torch.manual_seed(0)
    model_class = {"ProxyAno": ProxyAno, "Autoencoder": Autoencoder}[model_name]
    model = model_class(image_size=size, **overrides).eval()
    with tempfile.TemporaryDirectory() as workdir:
        path = model.to_onnx(Path(workdir), input_size=(size, size))
        shutil.copytree(path.parent, output, dirs_exist_ok=True)  # the graph and its external weights
    return output / path.name


def batch_of_images(folder: Path | None, size: int, batch_size: int) -> np.ndarray:
    """``batch_size`` images of ``folder`` (sorted names, repeated if too few) as RGB in [0, 1], or uniform noise."""
    if folder is None:
        return np.random.default_rng(0).random((batch_size, 3, size, size), dtype=np.float32)
    import cv2

    files = sorted(path for path in folder.iterdir() if path.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if not files:
        msg = f"no .png or .jpg images in {folder}"
        raise SystemExit(msg)
    images = []
    for path in (files * batch_size)[:batch_size]:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            msg = f"cannot read {path}"
            raise SystemExit(msg)
        image = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), (size, size), interpolation=cv2.INTER_AREA)
        images.append(image.transpose(2, 0, 1).astype(np.float32) / 255)
    return np.stack(images)


def time_round_robin(
    models: list[Path], images: np.ndarray, rounds: int, runs_per_round: int, threads: int
) -> dict[Path, list[float]]:
    """Seconds per batch of each exported model (a folder holding one ``.onnx``), ``rounds`` readings each."""
    import onnxruntime

    sessions = {}
    for folder in models:
        graphs = sorted(folder.glob("*.onnx"))
        if len(graphs) != 1:
            msg = f"{folder} must hold exactly one .onnx file (an `export` output), found {len(graphs)}"
            raise SystemExit(msg)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(graphs[0]), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: images}
        for _ in range(3):  # warm-up: first runs allocate and pack weights
            session.run(None, feed)
        sessions[folder] = (session, feed)
    seconds: dict[Path, list[float]] = {folder: [] for folder in models}
    for _ in range(rounds):
        for folder, (session, feed) in sessions.items():
            started = time.perf_counter()
            for _ in range(runs_per_round):
                session.run(None, feed)
            seconds[folder].append((time.perf_counter() - started) / runs_per_round)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    to_onnx = commands.add_parser("export", help="export one untrained model to a folder")
    to_onnx.add_argument("model", choices=MODELS)
    to_onnx.add_argument("--size", type=int, default=64)
    to_onnx.add_argument("--output", type=Path, required=True)
    to_onnx.add_argument("--set", action="append", default=[], metavar="NAME=JSON", help="a model argument")
    timing = commands.add_parser("time", help="time exported models round-robin")
    timing.add_argument("models", type=Path, nargs="+", help="folders written by `export`")
    timing.add_argument("--size", type=int, default=64)
    timing.add_argument("--batch-size", type=int, default=32)
    timing.add_argument("--rounds", type=int, default=20)
    timing.add_argument("--runs-per-round", type=int, default=5)
    timing.add_argument("--threads", type=int, default=1)
    timing.add_argument("--images", type=Path, help="a folder of images (default: uniform noise)")
    args = parser.parse_args()
    if args.command == "export":
        # As benchmarks/proxyano_sweep.py reads its --set: values are JSON (strings quoted).
        overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
        print(export(args.model, args.size, overrides, args.output))
        return
    images = batch_of_images(args.images, args.size, args.batch_size)
    seconds = time_round_robin(args.models, images, args.rounds, args.runs_per_round, args.threads)
    print(
        f"ONNX Runtime, {args.threads} thread(s), batch {args.batch_size}, {args.size} px, "
        f"{args.rounds} rounds of {args.runs_per_round} runs; images/s: median (quartiles), ratio to the first"
    )
    reference = statistics.median(seconds[args.models[0]])
    for folder, readings in seconds.items():
        low, high = np.percentile(readings, [75, 25])  # slower quartile of time = lower throughput
        median = statistics.median(readings)
        speed = args.batch_size / median
        quartiles = f"({args.batch_size / low:.0f}-{args.batch_size / high:.0f})"
        print(f"{folder}  {speed:8.0f}  {quartiles}  {reference / median:.2f}x")


if __name__ == "__main__":
    main()
