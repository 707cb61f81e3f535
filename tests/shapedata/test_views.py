"""One image path: the same RGBA view gives the same conditioner input through training, evaluation,
generation and the app; odd inputs (non-square, grayscale, 16-bit) are converted, never stretched."""

from __future__ import annotations

import glob
import io

import numpy as np
import pytest
import webdataset as wds
from PIL import Image, ImageDraw

from craftsman_platform.evaluation.objects import ObjectReader
from craftsman_platform.evaluation.scoring import canonical_views
from craftsman_platform.inference.app import save_uploads
from craftsman_platform.inference.generate import GenerateConfig, load_views
from craftsman_platform.shapedata.sample import view_member
from craftsman_platform.shapedata.views import VIEW_NAMES, condition_image
from craftsman_platform.training.config import DataConfig
from craftsman_platform.training.decode import decode_sample, member_filter

SIZE = 48


@pytest.fixture(scope="module")
def duck(tiny_shards) -> dict:
    for sample in wds.WebDataset(sorted(glob.glob(str(tiny_shards / "shards" / "*.tar"))), shardshuffle=False):
        if "duck" in sample["__key__"]:
            return sample
    raise AssertionError("no duck in the tiny shards")


def test_the_same_view_is_the_same_tensor_through_all_four_paths(duck, tiny_shards, tmp_path):
    # training: the loader's decode of the raw members (canonical set), as the stream delivers them
    raw = {k: v for k, v in duck.items() if k.startswith("__") or member_filter("diffusion")(f"x.{k}")}
    cfg = DataConfig(view_set="canonical", image_size=SIZE, num_surface=64, num_vol=64, num_near=64)
    training = decode_sample(raw, cfg, "diffusion", np.random.default_rng(0))["images"]
    # evaluation: held-out objects read from the shards
    sample = next(s for s in ObjectReader(str(tiny_shards / "shards" / "*.tar"), views=True) if "duck" in s["__key__"])
    evaluation = canonical_views(sample, SIZE)[0]
    # generation: the views as a user's files
    rgba = [Image.open(io.BytesIO(duck[view_member(i)])) for i in range(4)]
    files = tmp_path / "files"
    files.mkdir()
    for name, img in zip(VIEW_NAMES, rgba):
        img.save(files / f"{name}.png")
    generation, mask, _ = load_views(GenerateConfig(checkpoint="unused", images=[str(files)]), SIZE)
    # the app: the browser's uploads saved, then generate's path
    paths = save_uploads(tmp_path / "app", rgba)
    app, _, _ = load_views(
        GenerateConfig(
            checkpoint="unused",
            images=[paths["front"]],
            right_view=paths["right"],
            back_view=paths["back"],
            left_view=paths["left"],
        ),
        SIZE,
    )
    assert training.dtype == np.uint8 and training.shape == (4, 3, SIZE, SIZE) and mask.all()
    for other in (evaluation, generation, app):
        assert np.array_equal(training, other)


def test_transparent_pixels_become_white_whatever_rgb_they_hold():
    arr = np.zeros((32, 32, 4), dtype=np.uint8)  # black, fully transparent ...
    arr[8:24, 8:24] = (200, 30, 30, 255)  # ... around an opaque red square
    out = condition_image(Image.fromarray(arr, "RGBA"), 32)
    assert (out[:, 0, 0] == 255).all() and tuple(out[:, 16, 16]) == (200, 30, 30)


def test_non_square_inputs_are_padded_around_the_object_not_stretched():
    img = Image.new("RGBA", (120, 60), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((70, 10, 110, 50), fill=(0, 0, 255, 255))  # a disc right of centre
    out = condition_image(img, 60)
    assert out.shape == (3, 60, 60)
    blue = (out[2] > 200) & (out[0] < 80)
    rows, cols = np.nonzero(blue)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert abs(height - width) <= 1  # still round: the aspect is kept
    assert abs(0.5 * (rows.min() + rows.max()) - 29.5) <= 1.5  # centred vertically by the padding
    assert out[:, 0, :].min() == 255  # padding is white


@pytest.mark.parametrize(
    "mode, value, expected", [("L", 128, 128), ("I;16", 65535, 255), ("I;16", 32896, 128), ("LA", 90, 90), ("P", 3, 3)]
)
def test_grayscale_palette_and_16_bit_inputs_are_converted(mode, value, expected):
    if mode == "I;16":
        img = Image.fromarray(np.full((16, 16), value, dtype=np.uint16), "I;16")
    elif mode == "LA":
        img = Image.fromarray(
            np.stack([np.full((16, 16), value, np.uint8), np.full((16, 16), 255, np.uint8)], -1), "LA"
        )
    elif mode == "P":
        img = Image.fromarray(np.full((16, 16), value, dtype=np.uint8), "P")
        img.putpalette([c for i in range(256) for c in (i, i, i)])
    else:
        img = Image.fromarray(np.full((16, 16), value, dtype=np.uint8), mode)
    out = condition_image(img, 16)
    assert out.dtype == np.uint8 and out.shape == (3, 16, 16)
    assert abs(int(out[0, 8, 8]) - expected) <= 1 and (out[0] == out[1]).all()
