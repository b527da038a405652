"""Superpixel proxy: speed and output quality of our backends against scikit-image's plain per-image ``slic``.

Run:  python benchmarks/proxy_speed.py [--size 256] [--repeats 5] [--mri-dir DIR]

Images: real brain MR slices (``--mri-dir``; by default the project's shared benchmark copy, when present)
plus scikit-image's camera, moon and coins (grayscale) and astronaut, coffee and chelsea (RGB), all resized
to ``--size``. Methods run interleaved within each repeat so that machine load hits them alike; the table
gives medians over repeats, and speed-ups are ratios of medians measured in this same run.

Quality is measured against the reference's labels and superpixel mean image (SI), per image, averaged:
- detail: mean |SI - image| in grey levels (0-255): how much of the image the proxy keeps;
- SI diff: mean |SI - reference SI|;
- BR: boundary recall, the share of reference superpixel boundaries within 2 px of the method's;
- UE: under-segmentation error (Neubert and Protzel 2012): the sum, over reference superpixels g and the
  method's superpixels s touching g, of min(|s & g|, |s - g|), per pixel; 0 when every superpixel lies
  within one reference superpixel (two equally fine segmentations score well above 0).
"Same output" means the differences are no larger than the reference's own variability, shown by the
row "skimage, mirrored input" (scikit-image on the left-right mirrored image, mirrored back).
Speed is given as wall-clock throughput and as CPU time per image (process time, all threads): on a
shared machine the CPU time is the steadier measure of the work done.

A last section measures whether the per-image backends release the GIL, which decides threads against
processes for spreading images over cores: how long a sleeping thread waits for the GIL while the call
runs in another thread, next to a call that releases it (sleep) and a long C call that holds it (sorting a
list). Unlike a throughput comparison, this does not need idle cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data
from skimage.segmentation import find_boundaries, slic

from proxyano_plugin.proxies import SuperpixelProxy, superpixel_mean

DEFAULT_MRI_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain_tumor_mri" / "normal"


def load_images(size: int, mri_dir: Path | None, mri_count: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Grayscale ``[N, 1, S, S]`` and RGB ``[M, 3, S, S]`` batches in [0, 1], and a description of them."""

    def resize(image: np.ndarray) -> np.ndarray:
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255

    gray = [resize(image) for image in (data.camera(), data.moon(), data.coins())]
    source = "scikit-image camera, moon, coins"
    if mri_dir is not None and mri_dir.is_dir():
        files = sorted(mri_dir.glob("*.png"))
        files = files[:: max(1, len(files) // mri_count)][:mri_count]
        gray += [resize(cv2.imread(str(file), cv2.IMREAD_GRAYSCALE)) for file in files]
        source = f"{len(files)} MR slices from {mri_dir}, " + source
    rgb = [resize(image) for image in (data.astronaut(), data.coffee(), data.chelsea())]
    gray_batch = torch.from_numpy(np.stack(gray)).unsqueeze(1)
    rgb_batch = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).contiguous()
    return gray_batch, rgb_batch, f"{source} (grayscale); astronaut, coffee, chelsea (RGB); {size} px"


def skimage_reference(images: torch.Tensor, proxy: SuperpixelProxy) -> tuple[np.ndarray, np.ndarray]:
    """Labels and SI the plain way: scikit-image's ``slic`` image by image, then a NumPy mean per label.

    Parameters are translated exactly as ``SuperpixelProxy(backend="skimage")`` does.
    """
    labels, means = [], []
    for image in images.permute(0, 2, 3, 1).numpy():
        gray = image.shape[-1] == 1
        compactness = proxy.compactness * (1 if gray else 100)  # our colour scale: CIELAB / 100
        label = slic(
            image[..., 0] if gray else image,
            n_segments=proxy.n_segments,
            compactness=compactness,
            max_num_iter=proxy.iterations,
            channel_axis=None if gray else -1,
            start_label=0,
        )
        counts = np.bincount(label.ravel())
        mean = np.stack(
            [np.bincount(label.ravel(), image[..., c].ravel()) / counts for c in range(image.shape[-1])], -1
        )
        labels.append(label)
        means.append(mean[label])
    return np.stack(labels), np.stack(means).transpose(0, 3, 1, 2)


def mirrored_reference(images: torch.Tensor, proxy: SuperpixelProxy) -> tuple[np.ndarray, np.ndarray]:
    """The reference on left-right mirrored images, mirrored back: its own variability."""
    labels, means = skimage_reference(images.flip(-1), proxy)
    return labels[..., ::-1].copy(), means[..., ::-1].copy()


def ours(images: torch.Tensor, proxy: SuperpixelProxy) -> tuple[np.ndarray, np.ndarray]:
    labels = proxy.labels(images)
    return labels.numpy(), superpixel_mean(images, labels).numpy()


def run_fast_slic(images: torch.Tensor, proxy: SuperpixelProxy, compactness: float) -> tuple[np.ndarray, np.ndarray]:
    """PyPI's fast-slic (uint8 RGB only; grayscale replicated), a fresh model per image (it warm-starts)."""
    from fast_slic import Slic

    labels = []
    for image in images.permute(0, 2, 3, 1).numpy():
        image_8bit = np.ascontiguousarray(np.broadcast_to(np.rint(image * 255).astype(np.uint8), (*image.shape[:2], 3)))
        model = Slic(num_components=proxy.n_segments, compactness=compactness, num_threads=1)
        labels.append(model.iterate(image_8bit, max_iter=proxy.iterations).astype(np.int64))
    labels_tensor = torch.from_numpy(np.stack(labels))
    return labels_tensor.numpy(), superpixel_mean(images, labels_tensor).numpy()


def quality(images: np.ndarray, labels: np.ndarray, means: np.ndarray, reference: tuple[np.ndarray, np.ndarray]):
    """Per-image averages of detail, SI diff, boundary recall, under-segmentation error, segment count."""
    ref_labels, ref_means = reference
    kernel = np.ones((5, 5), np.uint8)
    recall, leak = [], []
    for label, ref in zip(labels, ref_labels, strict=True):
        ref_edges = find_boundaries(ref, mode="inner")
        near = cv2.dilate(find_boundaries(label, mode="inner").astype(np.uint8), kernel) > 0
        recall.append((ref_edges & near).sum() / max(ref_edges.sum(), 1))
        pairs, overlap = np.unique(ref.ravel().astype(np.int64) * (label.max() + 1) + label.ravel(), return_counts=True)
        sizes = np.bincount(label.ravel())[pairs % (label.max() + 1)]
        leak.append(np.minimum(overlap, sizes - overlap).sum() / label.size)
    return {
        "detail": 255 * float(np.abs(means - images).mean()),
        "SI diff": 255 * float(np.abs(means - ref_means).mean()),
        "BR": float(np.mean(recall)),
        "UE": float(np.mean(leak)),
        "segments": float(np.mean([len(np.unique(label)) for label in labels])),
    }


def gil_wait(call: Callable[[], object], seconds: float = 1.0) -> tuple[float, float]:
    """Median and 90th-percentile delay (s) for the main thread to get the GIL back while ``call`` runs.

    The main thread sleeps 1 ms at a time while another thread runs ``call`` over and over; waking up needs
    the GIL, so the delay beyond the 1 ms is ~0 when ``call`` releases it and up to a whole call when not.
    """
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            call()

    worker = threading.Thread(target=work)
    worker.start()
    delays, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        time.sleep(0.001)
        delays.append(time.perf_counter() - start - 0.001)
    stop.set()
    worker.join()
    delays.sort()
    return statistics.median(delays), delays[int(0.9 * len(delays))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mri-dir", type=Path, default=DEFAULT_MRI_DIR)
    parser.add_argument("--mri-count", type=int, default=16)
    parser.add_argument(
        "--torch-threads", type=int, nargs="+", default=[1], help="intra-op thread counts to run the torch backend with"
    )
    parser.add_argument("--fast-slic-compactness", type=float, default=5.0)
    args = parser.parse_args()

    gray, rgb, description = load_images(args.size, args.mri_dir, args.mri_count)
    count = len(gray) + len(rgb)
    threads = torch.get_num_threads()
    proxy = SuperpixelProxy()
    print(f"Images: {description}; {count} in all. Proxy: {proxy.cache_key}")
    print(f"torch {torch.__version__} (default {threads} intra-op threads); median of {args.repeats} repeats\n")

    def with_threads(n: int, run: Callable) -> Callable:
        def call(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            torch.set_num_threads(n)
            try:
                return run(images)
            finally:
                torch.set_num_threads(threads)

        return call

    skimage_backend = SuperpixelProxy(backend="skimage")
    methods: dict[str, Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]] = {
        "skimage slic + mean, per image (reference)": lambda x: skimage_reference(x, proxy),
        "ours, backend='skimage' (threads)": lambda x: ours(x, skimage_backend),
    }
    for n in args.torch_threads:
        methods[f"ours, backend='torch', {n} thread{'s' * (n > 1)}"] = with_threads(n, lambda x: ours(x, proxy))
    if importlib.util.find_spec("fast_slic") is not None:  # optional: installed in a throwaway environment
        name = f"fast-slic 0.4 (compactness {args.fast_slic_compactness:g}), 1 thread"
        methods[name] = lambda x: run_fast_slic(x, proxy, args.fast_slic_compactness)
    else:
        print("(fast-slic not installed: its row is skipped)\n")

    outputs = {name: [run(gray), run(rgb)] for name, run in methods.items()}  # warm-up, and quality inputs
    wall: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, run in methods.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run(gray)
            run(rgb)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)

    reference_name = next(iter(methods))
    references = outputs[reference_name]
    rows = {name: outputs[name] for name in methods}
    rows["skimage, mirrored input (its own variability)"] = [
        mirrored_reference(gray, proxy),
        mirrored_reference(rgb, proxy),
    ]
    base, base_cpu = statistics.median(wall[reference_name]), statistics.median(cpu[reference_name])
    header = (
        f"| {'method':<46} | img/s | speed-up | CPU ms/img | CPU speed-up | detail | SI diff | BR    | UE    "
        "| segments |"
    )
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for name, (gray_out, rgb_out) in rows.items():
        scores = [
            quality(images.numpy(), *output, reference)
            for images, output, reference in ((gray, gray_out, references[0]), (rgb, rgb_out, references[1]))
        ]
        merged = {key: (scores[0][key] * len(gray) + scores[1][key] * len(rgb)) / count for key in scores[0]}
        if name in wall:
            median, median_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
            speed = (
                f"{count / median:5.1f} | {base / median:7.2f}x | {1000 * median_cpu / count:10.1f} | "
                f"{base_cpu / median_cpu:11.2f}x"
            )
        else:
            speed = f"{'-':>5} | {'-':>8} | {'-':>10} | {'-':>12}"
        print(
            f"| {name:<46} | {speed} | {merged['detail']:6.2f} | {merged['SI diff']:7.2f} | "
            f"{merged['BR']:.3f} | {merged['UE']:.3f} | {merged['segments']:8.1f} |"
        )

    image = gray[0, 0].numpy()
    numbers = np.random.default_rng(0).random(300_000).tolist()
    print("\nGIL check: delay for another thread to get the GIL while the call runs (median / 90th percentile):")
    checks = {
        "time.sleep (releases the GIL)": lambda: time.sleep(0.005),
        "skimage slic, one image": lambda: slic(image, n_segments=proxy.n_segments, channel_axis=None),
        "cv2.GaussianBlur, one image": lambda: cv2.GaussianBlur(image, (0, 0), 2.0),
        "sorted(list) (holds the GIL)": lambda: sorted(numbers),
    }
    for name, call in checks.items():
        median, slow = gil_wait(call)
        print(f"  {name:<32} {1000 * median:7.2f} ms / {1000 * slow:7.2f} ms")


if __name__ == "__main__":
    main()
