"""Blur, edges and identity proxies against direct OpenCV references."""

import cv2
import numpy as np
import pytest
import torch

from proxyano_plugin.proxies import BlurProxy, EdgesProxy, IdentityProxy


def _images(channels: int) -> torch.Tensor:
    images = torch.rand(3, channels, 24, 20, generator=torch.Generator().manual_seed(channels))
    images[..., 8:16, 5:12] += 0.5  # a bright square: edges to find
    return images.clamp(0, 1)


def _per_image(images: torch.Tensor, function) -> torch.Tensor:
    """Reference: ``function`` on each [H, W] channel of each image with plain OpenCV calls."""
    out = [[function(channel) for channel in image] for image in images.numpy()]
    return torch.from_numpy(np.asarray(out, dtype=np.float32))


@pytest.mark.parametrize("channels", [1, 3])
def test_blur_is_opencv_gaussian_blur(channels: int) -> None:
    images = _images(channels)
    expected = _per_image(images, lambda channel: cv2.GaussianBlur(channel, (0, 0), 1.5))
    torch.testing.assert_close(BlurProxy(sigma=1.5)(images), expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_sobel_edges_are_the_scaled_opencv_gradient_magnitude(channels: int) -> None:
    images = _images(channels)

    def sobel(channel: np.ndarray) -> np.ndarray:
        gx, gy = cv2.Sobel(channel, cv2.CV_32F, 1, 0), cv2.Sobel(channel, cv2.CV_32F, 0, 1)
        return np.clip(np.sqrt(gx**2 + gy**2) / 4, 0, 1)

    edges = EdgesProxy()(images)
    torch.testing.assert_close(edges, _per_image(images, sobel))
    assert float(edges.min()) >= 0
    assert float(edges.max()) <= 1


def test_full_contrast_step_reads_one() -> None:
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1
    assert float(EdgesProxy()(step)[0, 0, 4, 3]) == pytest.approx(1.0)


def test_canny_and_both_match_opencv() -> None:
    images = _images(1)

    def canny(channel: np.ndarray) -> np.ndarray:
        image_8bit = np.clip(np.rint(channel * 255), 0, 255).astype(np.uint8)
        return (cv2.Canny(image_8bit, 0.1 * 1020, 0.3 * 1020, L2gradient=True) > 0).astype(np.float32)

    canny_edges = EdgesProxy(method="canny", low=0.1, high=0.3)(images)
    torch.testing.assert_close(canny_edges, _per_image(images, canny))
    assert set(torch.unique(canny_edges).tolist()) <= {0.0, 1.0}
    both = EdgesProxy(method="both", low=0.1, high=0.3)(images)
    torch.testing.assert_close(both, torch.maximum(canny_edges, EdgesProxy()(images)))


def test_outputs_keep_dtype_and_are_deterministic() -> None:
    images = _images(3).double()
    for proxy in (BlurProxy(), EdgesProxy(method="both"), IdentityProxy()):
        first = proxy(images)
        assert first.dtype == torch.float64
        assert first.shape == images.shape
        assert torch.equal(first, proxy(images))


def test_identity_returns_a_copy() -> None:
    images = _images(1)
    proxy = IdentityProxy()(images)
    assert torch.equal(proxy, images)
    proxy += 1
    assert not torch.equal(proxy, images)


def test_cache_keys_and_parameter_checks() -> None:
    assert BlurProxy(sigma=2).cache_key == "blur(sigma=2.0)"
    assert EdgesProxy().cache_key == "edges(method='sobel',low=0.05,high=0.15)"
    assert IdentityProxy().cache_key == "identity()"
    with pytest.raises(ValueError, match="sigma must be a positive number, got 0"):
        BlurProxy(sigma=0)
    with pytest.raises(ValueError, match="method must be 'sobel', 'canny' or 'both'"):
        EdgesProxy(method="laplace")
    with pytest.raises(ValueError, match=r"low \(0.5\) must not exceed high \(0.2\)"):
        EdgesProxy(low=0.5, high=0.2)
