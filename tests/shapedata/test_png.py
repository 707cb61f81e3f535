"""The renders' PNG encoder (shapedata/png.py): Pillow decodes every kind it writes, bit for bit."""

import io

import numpy as np
import pytest
from PIL import Image

from craftsman_platform.shapedata.png import png_bytes


@pytest.mark.parametrize(
    "shape, dtype, mode",
    [
        ((37, 53), np.uint8, "L"),
        ((37, 53, 1), np.uint8, "L"),
        ((37, 53, 2), np.uint8, "LA"),
        ((37, 53, 3), np.uint8, "RGB"),
        ((37, 53, 4), np.uint8, "RGBA"),
        ((37, 53), np.uint16, "I;16"),
        ((1, 1, 4), np.uint8, "RGBA"),
    ],
)
def test_pillow_reads_back_the_same_pixels(shape, dtype, mode):
    rng = np.random.default_rng(0)
    image = rng.integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=dtype)
    image[: shape[0] // 2] = np.iinfo(dtype).max  # a flat half, as a render's background
    decoded = Image.open(io.BytesIO(png_bytes(image)))
    decoded.load()  # decompresses and checks every chunk's CRC
    assert decoded.mode == mode
    assert np.array_equal(np.asarray(decoded), image.reshape(shape[:2]) if image.ndim == 2 or shape[2] == 1 else image)


def test_a_flat_render_compresses_well():
    white = np.full((256, 256, 4), 255, dtype=np.uint8)
    assert len(png_bytes(white)) < 0.01 * white.nbytes


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4, 5), np.uint8),
        np.zeros((4, 4, 3), np.uint16),
        np.zeros((4, 4), np.float32),
        np.zeros((0, 4), np.uint8),
    ],
)
def test_what_it_cannot_write_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="png_bytes"):
        png_bytes(bad)
