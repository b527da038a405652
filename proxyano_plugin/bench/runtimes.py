"""Inference speed of a run's model in the forms users deploy it in, beside the eager torch model.

``timing.runtimes`` adds, to the eager FP32 torch model that is always timed:

- ``torch-bf16``: the same module under ``torch.autocast`` to bfloat16, on the run's device;
- ``torch-compile``: the same module through ``torch.compile`` (static shapes, compiled before timing), on the
  run's device;
- ``onnxruntime`` / ``openvino``: the model exported the way ``anomalib export`` does it (``to_onnx`` /
  ``to_openvino``, FP32, at the run's input size; pre- and post-processing inside the graph), on CPU runs only:
  beside a GPU's eager numbers, CPU runtimes would mislead.

Each is timed on the same pre-processed test images, batch 1 and ``timing.batch_size``, with as many threads as
torch uses, and reports how far its scores and maps are from the eager FP32 model's (``max_score_diff``,
``max_map_diff``): a path that changes the numbers must not look fast without saying so. A runtime that is not
installed or fails is recorded with its error, and the run stays ok.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

RUNTIMES = ("torch", "torch-bf16", "torch-compile", "onnxruntime", "openvino")
ON_DEVICE = RUNTIMES[1:3]  # the torch module itself, on the run's device
EXPORTED = RUNTIMES[3:]  # need pip install "proxyano-plugin[export]"; timed on CPUs


def measure_runtimes(
    model: Any, images: Any, timing: Any, workdir: Path, device: Any, sync: Callable[[], None]
) -> dict[str, dict[str, Any]]:
    """``{runtime: {"latency_ms", "throughput_ips", "max_score_diff", "max_map_diff"} or {"error"}}``."""
    import torch

    wanted = [name for name in timing.runtimes if name in ON_DEVICE or (name in EXPORTED and device.type == "cpu")]
    if not wanted:
        return {}
    images = images.float().to(device)
    batch = torch.cat([images] * math.ceil(timing.batch_size / len(images)))[: timing.batch_size]
    threads = torch.get_num_threads()
    size = tuple(batch.shape[-2:])
    measured = {}
    # The torch model alone (as the eager throughput is measured), then the whole Lightning model with pre- and
    # post-processing inside, as exported (``wanted`` holds exported runtimes only on CPU runs). One FP32
    # reference per module.
    for module, kind in ((model.model.to(device).eval(), ON_DEVICE), (model.eval(), EXPORTED)):
        names = [name for name in wanted if name in kind]
        if not names:
            continue
        with torch.inference_mode():
            reference = module(batch)
        for name in names:
            if name in ON_DEVICE:
                load = partial(_on_device, name, module, device)
            else:
                load = partial(_load_exported, name, module, size, workdir, threads)
            measured[name] = _measure(name, load, batch, reference, timing, sync)
    return measured


def _measure(
    name: str, load: Callable[[], Callable[[Any], Any]], batch: Any, reference: Any, timing: Any, sync: Any
) -> dict[str, Any]:
    import torch

    try:
        infer = load()
        with torch.inference_mode():
            outputs = infer(batch)
            infer(batch[:1])  # compiles the batch-1 graph of torch-compile before timing
            single = median_seconds(lambda: infer(batch[:1]), timing, sync)
            full = median_seconds(lambda: infer(batch), timing, sync)
    except Exception as error:  # a runtime that cannot run this model is a finding, not a failed run
        message = " ".join(str(error).split())[:300] or type(error).__name__
        print(f"{name}: not measured: {message}", file=sys.stderr)
        return {"error": f"{type(error).__name__}: {message}"}
    return {
        "latency_ms": single * 1e3,
        "throughput_ips": timing.batch_size / full,
        "max_score_diff": _max_diff(_output(outputs, "pred_score"), reference.pred_score),
        "max_map_diff": _max_diff(_output(outputs, "anomaly_map"), reference.anomaly_map),
    }


def _on_device(name: str, net: Any, device: Any) -> Callable[[Any], Any]:
    """The torch module as ``name`` runs it: under bf16 autocast, or compiled."""
    import torch

    if name == "torch-compile":
        return torch.compile(net, dynamic=False)

    def autocast(batch: Any) -> Any:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return net(batch)

    return autocast


def _output(outputs: Any, name: str) -> Any:
    return outputs.get(name) if isinstance(outputs, dict) else getattr(outputs, name, None)


def _load_exported(name: str, model: Any, size: tuple[int, int], workdir: Path, threads: int) -> Callable[[Any], dict]:
    """Export ``model`` for runtime ``name`` and return a function from a CPU tensor batch to named outputs."""
    if name == "onnxruntime":
        import onnxruntime

        path = model.to_onnx(workdir, input_size=size)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        input_name = session.get_inputs()[0].name
        return lambda batch: dict(zip(names, session.run(None, {input_name: batch.numpy()}), strict=True))
    import openvino

    path = model.to_openvino(workdir, input_size=size)
    # FP32 inference: OpenVINO's CPU plugin defaults to bf16 where the CPU has it (AVX512-BF16, AMX), which
    # changed ProxyAno's scores by 5e-4 here; a speed bought that way is not the exported model's.
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    core = openvino.Core()
    # Names from the exported model: a reshaped one may report an output under a merged tensor's other name.
    names = [output.get_any_name() for output in core.read_model(str(path)).outputs]
    requests: dict[tuple[int, ...], Any] = {}

    def infer(batch: Any) -> dict:
        # One model compiled per input shape, as a deployment with a fixed batch runs it: the exported graph's
        # batch axis is dynamic, and the CPU plugin's dynamic-shape path ran ProxyAno at 64 px 1.4x slower.
        shape = tuple(batch.shape)
        if shape not in requests:
            network = core.read_model(str(path))
            network.reshape(list(shape))
            compiled = core.compile_model(network, "CPU", config)
            requests[shape] = (compiled.outputs, compiled.create_infer_request())
        outputs, request = requests[shape]
        results = request.infer({0: batch.numpy()})
        return {name: results[output] for name, output in zip(names, outputs, strict=True)}

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


def _max_diff(other: Any, eager: Any) -> float | None:
    if other is None or eager is None:
        return None
    import torch

    eager = eager.detach().cpu().double()
    other = torch.as_tensor(other).detach().cpu().double().reshape(eager.shape)
    return float((other - eager).abs().max())
