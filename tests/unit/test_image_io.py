"""The one image I/O module: stored bit depth and RGB order on reading, loud failures on writing."""

from pathlib import Path

import numpy as np
import pytest

from proxyano_plugin.image_io import decode_image, encode_png, write_png


def test_png16_round_trip_keeps_every_level(tmp_path: Path) -> None:
    image = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    write_png(tmp_path / "a.png", encode_png(image, "png16"))
    decoded = decode_image(tmp_path / "a.png")
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, encode_png(image, "png16"))


def test_colour_comes_back_rgb_without_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255  # OpenCV writes BGRA: channel 0 is blue
    write_png(tmp_path / "blue.png", rgba)
    decoded = decode_image(tmp_path / "blue.png")
    assert decoded.shape == (4, 4, 3)
    assert decoded[0, 0].tolist() == [0, 0, 200]


def test_failures_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"broken\.png cannot be decoded"):
        decode_image(tmp_path / "broken.png")
    with pytest.raises(ValueError, match=r"missing\.png cannot be read"):
        decode_image(tmp_path / "missing.png")
    with pytest.raises(OSError, match="could not write"):
        write_png(tmp_path / "no_such_folder" / "a.png", np.zeros((4, 4), np.uint8))
