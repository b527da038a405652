"""Unit tests of the shared pixel-error functions (``proxyano_plugin.models.image_errors``)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from proxyano_plugin.models.image_errors import blur_matrix, gaussian_blur, gaussian_kernel


@pytest.mark.parametrize(("sigma", "shape"), [(1.0, (2, 3, 16, 24)), (3.0, (1, 1, 40, 20))])
def test_gaussian_blur_is_a_reflect_padded_gaussian_filter(sigma, shape):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(*shape, generator=generator)
    blurred = gaussian_blur(images, gaussian_kernel(sigma))
    # scipy's "mirror" is torch's "reflect" (the edge pixel not repeated); truncate=3 is gaussian_kernel's +-3 sigma.
    expected = ndimage.gaussian_filter(images.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=3.0)
    np.testing.assert_allclose(blurred.numpy(), expected, rtol=0, atol=1e-6)


def test_the_blur_matrix_holds_the_padding_and_blurs_gradients_back():
    kernel = gaussian_kernel(1.0)
    matrix = blur_matrix(10, kernel)
    torch.testing.assert_close(matrix.sum(dim=0), torch.ones(10))  # every output pixel: a weighted mean
    # Pixel 1 reaches pixel 0 directly and through its mirror image at -1.
    torch.testing.assert_close(matrix[1, 0], kernel[3 + 1] + kernel[3 - 1])
    images = torch.rand(1, 1, 10, 10, requires_grad=True)
    gaussian_blur(images, kernel).sum().backward()
    assert images.grad.abs().sum() > 0
