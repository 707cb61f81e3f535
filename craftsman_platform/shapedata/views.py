"""Condition views: the one path from an image (a shard's RGBA render or a user's file) to what the
image conditioner takes, shared by training, evaluation, generation and the app.

    image (any mode) -> RGBA -> composited on white -> padded to square around the object
          -> resized to size x size (PIL bicubic, antialiased) -> uint8 (3, size, size)

The conditioner then scales to [0, 1] and applies CLIP's mean/std. Shards store views as
`rgb_NNN.png` (RGBA, the object's mask in alpha) with their cameras in `cameras.json`; views 0-3
are the canonical front, right, back and left set (docs/data-format.md).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from craftsman_platform.shapedata.sample import read_cameras, view_member

VIEW_NAMES = ("front", "right", "back", "left")  # the canonical set, in the order the models see it
SET_SIZE = len(VIEW_NAMES)
WHITE = 255


def to_rgba(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGBA: 16-bit and float grayscale rescaled, palettes and LA expanded."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        image = Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), "L")
    return image.convert("RGBA")


def _square_canvas(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Pad (H, W, 3) to a white square, keeping the aspect; the object (alpha > 0) is centred as far
    as the padding allows. Square inputs come back unchanged."""
    h, w = alpha.shape
    side = max(h, w)
    if h == w:
        return rgb
    rows, cols = np.nonzero(alpha > 0)
    centre = (0.5 * (rows.min() + rows.max()), 0.5 * (cols.min() + cols.max())) if len(rows) else (h / 2, w / 2)
    top = int(np.clip(round(side / 2 - centre[0]), 0, side - h))
    left = int(np.clip(round(side / 2 - centre[1]), 0, side - w))
    canvas = np.full((side, side, 3), WHITE, dtype=np.uint8)
    canvas[top : top + h, left : left + w] = rgb
    return canvas


def condition_image(image: Image.Image, size: int) -> np.ndarray:
    """One view as the conditioner's input: uint8 (3, size, size), object on white, aspect kept."""
    rgba = np.asarray(to_rgba(image), dtype=np.float32)
    alpha = rgba[..., 3:] / 255.0
    rgb = np.clip(rgba[..., :3] * alpha + WHITE * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)
    square = Image.fromarray(_square_canvas(rgb, alpha[..., 0]))
    if square.size != (size, size):
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(square).transpose(2, 0, 1).copy()


def shard_views(raw: dict, indices: list[int] | range, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Views `indices` of a shard sample (raw members): uint8 (V, 3, size, size) and c2w (V, 4, 4)."""
    cams = read_cameras(raw)
    images = np.stack([condition_image(Image.open(io.BytesIO(raw[view_member(i)])), size) for i in indices])
    c2w = np.stack([np.asarray(cams[i]["c2w"], dtype=np.float32) for i in indices])
    return images, c2w


def view_sets(raw: dict) -> int:
    """How many complete 4-view sets a shard sample holds."""
    return len(read_cameras(raw)) // SET_SIZE
