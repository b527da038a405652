"""Reproduce (or rule out) the DataLoader-worker hang seen on a lent GPU machine, in one call (issue 13, item 4).

On an NVIDIA H200 machine (2026-11-26) every harness run with ``num_workers > 0`` stalled before its first
epoch while ``num_workers: 0`` ran. This script prints what the suspects depend on (``/dev/shm`` size, start
methods, thread settings, versions) and then trains ProxyAno for a few batches under several loader settings,
each in its own process with a deadline. A variant that misses its deadline gets a ``py-spy dump`` of its
process tree (when ``py-spy`` is installed: carry its wheel, see benchmarks/README.md) before it is killed.
The summary says which settings finish; the harness's default path (``harness``) comes first.

Variants (anomalib's datamodules build their loaders with ``num_workers`` only: fork start, no pinned memory,
workers restarted every epoch):

- ``harness``: ``proxyano-bench run`` of a one-run suite (forkserver-started run process, then workers forked
  from it after CUDA is up): exactly the path that stalled.
- ``harness-forkserver``: the same suite with ``loader_start_method: forkserver`` (workers from a clean process).
- ``fork``: ``Engine.fit`` in a plain process, anomalib's loaders as they are.
- ``spawn`` / ``forkserver``: the workers started with that method instead of fork.
- ``fork-persistent``: fork, with ``persistent_workers=True`` (no worker restart at the epoch boundary).
- ``fork-pinned``: fork, with ``pin_memory=True`` (the host-to-GPU copy path Lightning would use).

    python benchmarks/loader_hang.py                          # BrainMRIDemo, 4 workers, 120 s per variant
    python benchmarks/loader_hang.py --parallel               # all variants at once: one deadline in all
    python benchmarks/loader_hang.py --workers 8 --deadline 300 --root ../shared/data/lgg_flair \\
        --split-csv patients_seed0 --variants harness spawn

Exit status 0 when every variant finished, 1 otherwise. Runs on CPUs too (then it only checks the script).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import yaml

VARIANTS = ("harness", "harness-forkserver", "fork", "spawn", "forkserver", "fork-persistent", "fork-pinned")
HARNESS_START_METHODS = {"harness": "default", "harness-forkserver": "forkserver"}
LOADER_SETTINGS = {
    "fork": {},
    "spawn": {"multiprocessing_context": "spawn"},
    "forkserver": {"multiprocessing_context": "forkserver"},
    "fork-persistent": {"persistent_workers": True},
    "fork-pinned": {"pin_memory": True},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers (default: %(default)s)")
    parser.add_argument("--batches", type=int, default=20, help="training batches per variant (default: %(default)s)")
    parser.add_argument(
        "--deadline", type=float, default=120.0, help="seconds a variant may take (default: %(default)s)"
    )
    parser.add_argument("--root", help="a SplitCSV dataset root (default: the BrainMRIDemo)")
    parser.add_argument("--split-csv", help="its split CSV, e.g. patients_seed0")
    parser.add_argument(
        "--parallel", action="store_true", help="run the variants at the same time (on a machine with many cores)"
    )
    parser.add_argument("--child", choices=tuple(LOADER_SETTINGS), help=argparse.SUPPRESS)
    return parser.parse_args()


def environment() -> dict[str, object]:
    """What the suspects depend on: shared memory, start methods, threads, versions, the GPU."""
    import torch

    shm = shutil.disk_usage("/dev/shm") if Path("/dev/shm").exists() else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "dev_shm_total_mb": round(shm.total / 2**20) if shm else None,
        "dev_shm_free_mb": round(shm.free / 2**20) if shm else None,
        "default_start_method": multiprocessing.get_start_method(allow_none=True)
        or multiprocessing.get_context().get_start_method(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "open_files_limit": _open_files_limit(),
        "py_spy": shutil.which("py-spy"),
    }


def _open_files_limit() -> int | None:
    try:
        import resource

        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError):
        return None


def datamodule_arguments(args: argparse.Namespace) -> tuple[str, dict[str, object]]:
    if args.root:
        init = {"root": str(Path(args.root).resolve()), "split_csv": args.split_csv, "val_split_mode": "same_as_test"}
        return "proxyano_plugin.data.SplitCSV", init
    return "proxyano_plugin.BrainMRIDemo", {}


def child(args: argparse.Namespace) -> None:
    """Train ProxyAno for ``--batches`` batches with the variant's loader settings (runs in its own process)."""
    import torch.utils.data
    from anomalib.data.datamodules.base import image as anomalib_image
    from anomalib.engine import Engine

    from proxyano_plugin import ProxyAno
    from proxyano_plugin.bench.validation import import_class

    anomalib_image.DataLoader = partial(torch.utils.data.DataLoader, **LOADER_SETTINGS[args.child])
    class_path, init = datamodule_arguments(args)
    datamodule = import_class(class_path, "AnomalibDataModule", "datamodule")(
        **init, train_batch_size=16, eval_batch_size=16, num_workers=args.workers
    )
    engine = Engine(
        max_epochs=2,  # two epochs: workers are torn down and started again between them
        limit_train_batches=max(1, args.batches // 2),
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    engine.fit(ProxyAno(proxy_kwargs={"n_segments": 1000}), datamodule=datamodule)


def harness_suite(args: argparse.Namespace, directory: Path, start_method: str) -> Path:
    """A one-run suite of the shipped ProxyAno with ``--workers`` loader workers, as the failing runs had."""
    class_path, init = datamodule_arguments(args)
    suite = {
        "name": "loader-hang",
        "seeds": [0],
        "image_size": 64,
        "max_epochs": 2,
        "train_batch_size": 16,
        "eval_batch_size": 16,
        "num_workers": args.workers,
        "loader_start_method": start_method,
        "trainer_args": {"limit_train_batches": max(1, args.batches // 2), "limit_val_batches": 0},
        "timing": {"batch_size": 8, "warmup": 1, "repeats": 2},
        "examples": 0,
        "run_timeout_s": args.deadline,
        "models": [
            {
                "name": "ProxyAno",
                "class_path": "proxyano_plugin.ProxyAno",
                "init_args": {"proxy_kwargs": {"n_segments": 1000}},
            }
        ],
        "datasets": [{"name": "data", "class_path": class_path, "init_args": init}],
    }
    path = directory / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    tree, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        children = Path(f"/proc/{parent}/task/{parent}/children")
        if children.exists():
            found = [int(c) for c in children.read_text().split()]
            tree += found
            frontier += found
    return tree


def dump_stacks(pid: int) -> str:
    """py-spy stacks of the process tree, or why there are none."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        return "py-spy not installed: pip install the wheel carried with the data (benchmarks/README.md)"
    dumps = []
    for member in process_tree(pid):
        result = subprocess.run([py_spy, "dump", "--pid", str(member)], capture_output=True, text=True, timeout=60)
        dumps.append(f"--- pid {member}\n{result.stdout}{result.stderr}")
    return "\n".join(dumps)


def run_variant(variant: str, args: argparse.Namespace, directory: Path) -> dict[str, object]:
    harness = variant in HARNESS_START_METHODS
    if harness:
        suite = harness_suite(args, directory, HARNESS_START_METHODS[variant])
        command = [
            sys.executable,
            "-m",
            "proxyano_plugin.bench.cli",
            "run",
            str(suite),
            "--output",
            str(directory / "out"),
        ]
        deadline = args.deadline + 60  # the run's own timeout fires first and records how far it got
    else:
        command = [sys.executable, __file__, "--child", variant, "--workers", str(args.workers)]
        command += ["--batches", str(args.batches)] + (
            ["--root", args.root, "--split-csv", args.split_csv] if args.root else []
        )
        deadline = args.deadline
    log = directory / f"{variant}.log"
    start = time.perf_counter()
    with log.open("w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=deadline)
            stacks = None
        except subprocess.TimeoutExpired:
            stacks = dump_stacks(process.pid)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
    seconds = time.perf_counter() - start
    tail = log.read_text(errors="replace").splitlines()[-15:]
    records = _harness_records(directory / "out") if harness else []
    finished = code == 0 and (not harness or (bool(records) and all(r["status"] == "ok" for r in records)))
    return {
        "variant": variant,
        "finished": finished,
        # The start method the harness reported using (None: the platform's default).
        "harness_loader_start_method": [r.get("loader_start_method") for r in records] if harness else None,
        "exit_code": code,
        "seconds": round(seconds, 1),
        "log_tail": tail,
        "stacks": stacks,
    }


def _harness_records(output: Path) -> list[dict[str, object]]:
    records = output / "records.jsonl"
    return [json.loads(line) for line in records.read_text().splitlines()] if records.exists() else []


def main() -> int:
    args = parse_args()
    if args.root and not args.split_csv:
        sys.exit("--root needs --split-csv")
    if args.child:
        child(args)
        return 0
    print(json.dumps({"environment": environment()}, indent=1), flush=True)
    with tempfile.TemporaryDirectory(prefix="loader-hang-") as tmp:

        def run_one(variant: str) -> dict[str, object]:
            directory = Path(tmp) / variant
            directory.mkdir()
            result = run_variant(variant, args, directory)
            print(json.dumps(result, indent=1), flush=True)
            return result

        with ThreadPoolExecutor(max_workers=len(args.variants) if args.parallel else 1) as pool:
            results = list(pool.map(run_one, args.variants))
    print("\nvariant            finished  seconds")
    for result in results:
        print(f"{result['variant']:<18} {'yes' if result['finished'] else 'NO':<9} {result['seconds']}")
    return 0 if all(result["finished"] for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
