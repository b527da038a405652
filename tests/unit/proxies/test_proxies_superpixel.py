"""Superpixel proxy: the SI is the per-superpixel mean, both backends agree, torch SLIC internals are sound."""

import cv2
import numpy as np
import pytest
import torch
from kornia.color import rgb_to_lab
from skimage import data
from skimage.color import rgb2lab
from skimage.measure import label as connected_components

from proxyano_plugin.proxies import SuperpixelProxy, superpixel_mean
from proxyano_plugin.proxies.slic import enforce_connectivity, slic_grid


def _images(channels: int, size: int = 48, batch: int = 2) -> torch.Tensor:
    """Smooth blobs plus noise: structure for superpixels to follow, texture for them to erase."""
    generator = torch.Generator().manual_seed(channels)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    blobs = torch.stack([((xs - 0.3 * k) ** 2 + ys**2 < 0.3).float() for k in range(channels)])
    noise = 0.1 * torch.rand(batch, channels, size, size, generator=generator)
    return (0.2 + 0.6 * blobs + noise).clamp(0, 1)


@pytest.mark.parametrize("backend", ["torch", "skimage"])
@pytest.mark.parametrize("channels", [1, 3])
def test_si_is_the_mean_of_each_superpixel(backend: str, channels: int) -> None:
    proxy = SuperpixelProxy(n_segments=30, backend=backend)
    images = _images(channels)
    labels = proxy.labels(images)
    si = proxy(images)
    assert si.shape == images.shape
    assert labels.shape == (2, 48, 48)
    assert labels.dtype == torch.int64
    for image, image_labels, image_si in zip(images, labels, si, strict=True):
        assert int(image_labels.min()) == 0
        assert len(torch.unique(image_labels)) == int(image_labels.max()) + 1  # numbered 0..n-1
        for label in torch.unique(image_labels):
            inside = image_labels == label
            expected = image[:, inside].mean(dim=1, keepdim=True)
            torch.testing.assert_close(image_si[:, inside], expected.expand(-1, int(inside.sum())))


def test_superpixels_are_connected_and_follow_the_structure() -> None:
    images = _images(1, size=64)
    labels = SuperpixelProxy(n_segments=40).labels(images)
    for image_labels in labels.numpy():
        parts = connected_components(image_labels, connectivity=1, background=-1)
        assert parts.max() == image_labels.max() + 1  # one connected part per superpixel
    si = SuperpixelProxy(n_segments=40)(images)
    # Coarse content kept (far closer to the image than its global mean), fine texture gone.
    assert (si - images).abs().mean() < 0.5 * (images - images.mean()).abs().mean()
    assert si.diff(dim=-1).abs().mean() < 0.5 * images.diff(dim=-1).abs().mean()


@pytest.mark.parametrize("image", [data.camera(), data.astronaut()], ids=["gray", "rgb"])
def test_torch_backend_matches_skimage_closely(image: np.ndarray) -> None:
    """Same detail removed, and SIs that differ less than either differs from the image."""
    image = cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    images = torch.from_numpy(image).view(1, 64, 64, -1).permute(0, 3, 1, 2)
    ours = SuperpixelProxy(n_segments=40)(images)
    reference = SuperpixelProxy(n_segments=40, backend="skimage")(images)
    detail_removed = (reference - images).abs().mean()
    assert (ours - reference).abs().mean() < detail_removed
    assert abs(float((ours - images).abs().mean() / detail_removed) - 1) < 0.15


def test_output_keeps_dtype_and_is_deterministic() -> None:
    images = _images(3).double()
    proxy = SuperpixelProxy(n_segments=25)
    first, second = proxy(images), proxy(images)
    assert first.dtype == torch.float64
    assert torch.equal(first, second)
    # Per image: an image's proxy does not depend on the rest of its batch.
    torch.testing.assert_close(proxy(images[1:]), first[1:])
    assert proxy(images.half()).dtype == torch.float16


def test_rgb_to_lab_matches_skimage() -> None:
    """The Lab conversion (kornia's) is scikit-image's, which the ``"skimage"`` backend's ``slic`` uses."""
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = np.stack([rgb2lab(image) for image in rgb.permute(0, 2, 3, 1).numpy()])
    expected = torch.from_numpy(expected).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(rgb_to_lab(rgb), expected, atol=1e-3, rtol=0)


def test_grid_matches_skimage() -> None:
    # scikit-image: step round(sqrt(256 * 256 / 150)) = 21 from 10, i.e. 12 x 12 centres.
    assert slic_grid(256, 256, 150) == (12, 12, 21, 10)
    assert slic_grid(8, 8, 1000)[:2] == (8, 8)  # never more centres than pixels


def test_edge_cases_one_segment_constant_image_tiny_image() -> None:
    images = _images(1, size=16)
    torch.testing.assert_close(
        SuperpixelProxy(n_segments=1)(images), images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    )
    constant = torch.full((1, 3, 12, 12), 0.5)
    torch.testing.assert_close(SuperpixelProxy()(constant), constant)
    tiny = torch.rand(1, 1, 3, 5, generator=torch.Generator().manual_seed(1))
    assert SuperpixelProxy()(tiny).shape == tiny.shape


def test_small_fragments_join_an_earlier_neighbour() -> None:
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, :, 3:] = 1
    labels[0, 2, 1] = 1  # a 1-pixel fragment of superpixel 1 inside superpixel 0
    merged = enforce_connectivity(labels, min_size=3)
    expected = torch.zeros(1, 6, 6, dtype=torch.long)
    expected[0, :, 3:] = 1
    assert torch.equal(merged, expected)


def test_superpixel_mean_handles_label_gaps() -> None:
    images = torch.arange(8.0).view(1, 1, 2, 4)
    labels = torch.tensor([[[0, 0, 5, 5], [0, 0, 5, 9]]])
    expected = torch.tensor([[[[2.5, 2.5, 11 / 3, 11 / 3], [2.5, 2.5, 11 / 3, 7.0]]]])
    torch.testing.assert_close(superpixel_mean(images, labels), expected)


def test_cache_key_names_every_parameter() -> None:
    proxy = SuperpixelProxy(n_segments=100, compactness=0.1)
    assert proxy.cache_key == "superpixel(n_segments=100,compactness=0.1,colour='lab',backend='torch',iterations=10)"
    assert SuperpixelProxy(compactness=1).cache_key == SuperpixelProxy(compactness=1.0).cache_key
    assert SuperpixelProxy(n_segments=101).cache_key != SuperpixelProxy(n_segments=100).cache_key


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_segments": 0}, "n_segments must be a positive integer"),
        ({"n_segments": 10.5}, "n_segments must be a positive integer"),
        ({"compactness": -1}, "compactness must be a positive number"),
        ({"backend": "opencv"}, "backend must be one of 'torch', 'skimage'"),
        ({"colour": "hsv"}, "colour must be one of 'lab', 'rgb'"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SuperpixelProxy(**kwargs)


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        (torch.rand(1, 2, 8, 8), ValueError, r"C = 1 or 3, got shape \(1, 2, 8, 8\)"),
        (torch.rand(8, 8), ValueError, "expected a"),
        (torch.zeros(1, 1, 8, 8, dtype=torch.uint8), TypeError, "floating"),
        (np.zeros((1, 1, 8, 8)), TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs_are_refused(images: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        SuperpixelProxy()(images)
