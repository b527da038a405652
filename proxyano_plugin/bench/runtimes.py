"""Inference speed of a run's exported model in the runtimes users deploy with, beside the eager torch model.

With ``timing.runtimes`` listing ``onnxruntime`` and/or ``openvino``, the trained model is exported the way
``anomalib export`` does it (``to_onnx`` / ``to_openvino``, FP32, at the run's input size; pre- and
post-processing inside the graph) and timed on the same pre-processed test images, batch 1 and
``timing.batch_size``, with as many threads as torch uses. Each runtime also reports how far its scores and
maps are from the eager model's (``max_score_diff``, ``max_map_diff``): an export that changes the numbers
must not look fast. Measured on CPUs only: on a GPU run the eager numbers are the GPU's, and comparing them with
CPU runtimes would mislead. A runtime that is not installed or fails is recorded with its error, and the run
stays ok.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RUNTIMES = ("torch", "onnxruntime", "openvino")
EXPORTED = RUNTIMES[1:]  # need pip install "proxyano-plugin[export]"


def measure_runtimes(model: Any, images: Any, timing: Any, workdir: Path) -> dict[str, dict[str, Any]]:
    """``{runtime: {"latency_ms", "throughput_ips", "max_score_diff", "max_map_diff"} or {"error"}}``."""
    import torch

    wanted = [name for name in timing.runtimes if name in EXPORTED]
    if not wanted:
        return {}
    model = model.cpu().eval()
    images = images.float().cpu()
    batch = torch.cat([images] * math.ceil(timing.batch_size / len(images)))[: timing.batch_size]
    with torch.inference_mode():
        reference = model(batch)
    threads = torch.get_num_threads()
    return {name: _measure(name, model, batch, reference, timing, workdir, threads) for name in wanted}


def _measure(
    name: str, model: Any, batch: Any, reference: Any, timing: Any, workdir: Path, threads: int
) -> dict[str, Any]:
    try:
        infer = _load(name, model, tuple(int(s) for s in batch.shape[-2:]), workdir, threads)
        outputs = infer(batch.numpy())
        single = median_seconds(lambda: infer(batch[:1].numpy()), timing)
        full = median_seconds(lambda: infer(batch.numpy()), timing)
    except Exception as error:  # a runtime that cannot run this model is a finding, not a failed run
        message = " ".join(str(error).split())[:300] or type(error).__name__
        print(f"{name}: not measured: {message}", file=sys.stderr)
        return {"error": f"{type(error).__name__}: {message}"}
    return {
        "latency_ms": single * 1e3,
        "throughput_ips": timing.batch_size / full,
        "max_score_diff": _max_diff(outputs.get("pred_score"), reference.pred_score),
        "max_map_diff": _max_diff(outputs.get("anomaly_map"), reference.anomaly_map),
    }


def _load(name: str, model: Any, size: tuple[int, int], workdir: Path, threads: int) -> Callable[[Any], dict]:
    """Export ``model`` for runtime ``name`` and return a function from a numpy batch to named outputs."""
    if name == "onnxruntime":
        import onnxruntime

        path = model.to_onnx(workdir, input_size=size)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        input_name = session.get_inputs()[0].name
        return lambda batch: dict(zip(names, session.run(None, {input_name: batch}), strict=True))
    import openvino

    path = model.to_openvino(workdir, input_size=size)
    # FP32 inference: OpenVINO's CPU plugin defaults to bf16 where the CPU has it (AVX512-BF16, AMX), which
    # changed ProxyAno's scores by 5e-4 here; a speed bought that way is not the exported model's.
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    compiled = openvino.Core().compile_model(str(path), "CPU", config)
    names = [output.get_any_name() for output in compiled.outputs]
    request = compiled.create_infer_request()

    def infer(batch: Any) -> dict:
        results = request.infer({0: batch})
        return {name: results[output] for name, output in zip(names, compiled.outputs, strict=True)}

    return infer


def median_seconds(call: Callable[[], Any], timing: Any, sync: Callable[[], None] = lambda: None) -> float:
    """Median wall time of ``call`` over ``timing.repeats`` calls after ``timing.warmup`` (``sync``: wait for
    the device after each)."""
    for _ in range(timing.warmup):
        call()
    sync()
    times = []
    for _ in range(timing.repeats):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _max_diff(exported: Any, eager: Any) -> float | None:
    if exported is None or eager is None:
        return None
    import numpy as np

    eager = eager.detach().cpu().numpy()
    return float(np.abs(np.asarray(exported, dtype=np.float64).reshape(eager.shape) - eager).max())
