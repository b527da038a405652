"""CachedProxy: per-image hits and misses, invalidation, disk round trip, output validation."""

import os
from pathlib import Path

import pytest
import torch

from proxyano_plugin.proxies import BlurProxy, CachedProxy, ProxyOutputError, SuperpixelProxy


class CountingProxy:
    """Adds ``offset``; records the batch sizes it was called with. ``offset`` is mutable on purpose."""

    name = "counting"

    def __init__(self, offset: float = 0.5) -> None:
        self.offset = offset
        self.batches: list[int] = []

    @property
    def cache_key(self) -> str:
        return f"counting(offset={self.offset!r})"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(images))
        return images + self.offset


class BrokenProxy:
    """Returns a wrong shape or NaN, to check CachedProxy's output validation."""

    name = "broken"
    cache_key = "broken()"

    def __init__(self, fault: str) -> None:
        self.fault = fault

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.fault == "shape":
            return images[..., :-1]
        output = images.clone()
        output[-1, 0, 0, 0] = float("nan")
        return output


def _images(count: int, seed: int = 0, size: int = 6) -> torch.Tensor:
    return torch.rand(count, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_computes_only_the_misses_and_counts_them() -> None:
    proxy = CountingProxy()
    cached = CachedProxy(proxy)
    images = _images(4)
    torch.testing.assert_close(cached(images), images + 0.5)
    assert (cached.hits, cached.misses, proxy.batches) == (0, 4, [4])
    mixed = torch.cat([images[1:3], _images(2, seed=1)])
    torch.testing.assert_close(cached(mixed), mixed + 0.5)
    assert (cached.hits, cached.misses, proxy.batches) == (2, 6, [4, 2])  # one call for the 2 new images
    cached(images)
    assert (cached.hits, cached.misses, proxy.batches) == (6, 6, [4, 2])


def test_parameter_change_invalidates() -> None:
    proxy = CountingProxy()
    cached = CachedProxy(proxy)
    images = _images(2)
    cached(images)
    proxy.offset = 0.25
    torch.testing.assert_close(cached(images), images + 0.25)
    assert cached.misses == 4
    assert cached.cache_key == proxy.cache_key == "counting(offset=0.25)"


def test_content_not_identity_is_the_key() -> None:
    cached = CachedProxy(CountingProxy())
    images = _images(2)
    cached(images)
    cached(images.clone())
    assert cached.hits == 2
    changed = images.clone()
    changed[0, 0, 0, 0] += 1e-6
    cached(changed)
    assert (cached.hits, cached.misses) == (3, 3)
    cached(images.double())  # another dtype is another entry
    assert cached.misses == 5


def test_disk_cache_round_trip(tmp_path: Path) -> None:
    images = _images(3)
    first = CachedProxy(BlurProxy(sigma=1.0), cache_dir=tmp_path)
    expected = first(images)
    files = list(tmp_path.rglob("*"))
    assert len([f for f in files if f.suffix == ".npy"]) == 3
    assert not [f for f in files if f.suffix == ".tmp"]  # atomic writes leave nothing behind
    assert any("blur(sigma=1.0)" in f.parent.name for f in files if f.suffix == ".npy")

    class SameKey(CountingProxy):
        cache_key = "blur(sigma=1.0)"  # the blur proxy's key: its files must be read, nothing computed

    counting = SameKey()
    second = CachedProxy(counting, cache_dir=tmp_path)
    torch.testing.assert_close(second(images), expected)
    assert (second.hits, second.misses, counting.batches) == (3, 0, [])
    other = CachedProxy(BlurProxy(sigma=2.0), cache_dir=tmp_path)
    other(images)
    assert other.misses == 3


def test_memory_limit_evicts_least_recently_used() -> None:
    proxy = CountingProxy()
    cached = CachedProxy(proxy, max_items=2)
    a, b, c = _images(3).split(1)
    cached(a), cached(b), cached(a), cached(c)  # b is the least recently used when c arrives
    assert cached.hits == 1
    cached(a)
    cached(b)
    assert (cached.hits, cached.misses) == (2, 4)


def _resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident size from /proc")
def test_memory_stays_flat_over_augmented_epochs_and_repeated_images_still_hit() -> None:
    """50 epochs of 16 fixed and 48 always-new (augmented) 64 px images: the cache stays at its limit.

    Unbounded, it would gain 48 x 16 KB per epoch (30 MB over the last 40 epochs) and never hit them.
    """
    fixed = _images(16, size=64)
    cached = CachedProxy(CountingProxy(), max_items=64)
    resident = []
    for epoch in range(50):
        augmented = torch.rand(48, 1, 64, 64, generator=torch.Generator().manual_seed(epoch + 1))
        for batch in torch.cat([fixed, augmented]).split(32):
            torch.testing.assert_close(cached(batch), batch + 0.5)
        assert len(cached) <= 64
        resident.append(_resident_bytes())
    # Between two reads of a fixed image come at most 63 others, so the least-recently-used rule keeps it.
    assert (cached.hits, cached.misses) == (16 * 49, 16 + 48 * 50)
    assert resident[-1] - resident[9] < 10 * 2**20


def test_no_cache_calls_the_proxy_directly_without_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_hashing(image: torch.Tensor) -> str:
        raise AssertionError("hashed although nothing is cached")

    monkeypatch.setattr("proxyano_plugin.proxies.cache._digest", no_hashing)
    proxy = CountingProxy()
    cached = CachedProxy(proxy, max_items=0)
    assert not cached.caching
    images = _images(3)
    torch.testing.assert_close(cached(images), images + 0.5)
    cached(images)
    assert (cached.hits, cached.misses, len(cached), proxy.batches) == (0, 0, 0, [3, 3])


def test_cached_and_uncached_superpixel_proxies_are_identical() -> None:
    images = _images(6, size=32).expand(-1, 3, -1, -1)
    cached = CachedProxy(SuperpixelProxy())
    first = cached(images[:4])
    mixed = cached(images[2:])  # two hits, two misses computed as a batch of two
    uncached = CachedProxy(SuperpixelProxy(), max_items=0)(images)
    assert torch.equal(torch.cat([first, mixed[2:]]), uncached)


def test_returns_input_dtype_and_computes_on_cpu() -> None:
    seen = []

    class DeviceSpy(CountingProxy):
        def __call__(self, images: torch.Tensor) -> torch.Tensor:
            seen.append(images.device.type)
            return super().__call__(images)

    images = _images(2).double()
    result = CachedProxy(DeviceSpy())(images)
    assert result.dtype == torch.float64
    assert result.device == images.device
    assert seen == ["cpu"]


@pytest.mark.parametrize("max_items", [None, 0])
@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("shape", r"proxy broken\(\) returned \(2, 1, 6, 5\) for input \(2, 1, 6, 6\); must keep the input shape"),
        ("nan", r"proxy broken\(\) returned NaN or inf for 1 of 2 images"),
    ],
)
def test_bad_proxy_output_is_caught(fault: str, message: str, max_items: int | None) -> None:
    with pytest.raises(ProxyOutputError, match=message):
        CachedProxy(BrokenProxy(fault), max_items=max_items)(_images(2))


@pytest.mark.parametrize("max_items", [None, 0])
def test_non_finite_input_is_refused_before_computing(max_items: int | None) -> None:
    proxy = CountingProxy()
    images = _images(2)
    images[1, 0, 2, 2] = float("inf")
    with pytest.raises(ValueError, match=r"proxy counting\(offset=0.5\): the input images contain NaN or inf"):
        CachedProxy(proxy, max_items=max_items)(images)
    assert proxy.batches == []


def test_refuses_non_proxies_and_bad_limits() -> None:
    with pytest.raises(TypeError, match="CachedProxy needs a ProxyExtractor"):
        CachedProxy(lambda images: images)
    with pytest.raises(ValueError, match="max_items must be None or a non-negative integer"):
        CachedProxy(CountingProxy(), max_items=-1)
