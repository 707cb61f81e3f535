"""Condition images from users: view files in front/right/back/left order, background handling.
(Turning an image into the conditioner's input is shapedata.views.condition_image, for every path.)"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from PIL import Image

from craftsman_platform.errors import ConfigError, MissingInput
from craftsman_platform.shapedata.sample import view_member
from craftsman_platform.shapedata.views import VIEW_NAMES

log = logging.getLogger("craft.generate")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
BACKGROUND_MODES = ("auto", "always", "never")


class BackgroundRemovalUnavailable(RuntimeError):
    pass


def find_views(images: list[str], extra: dict[str, Optional[str]]) -> dict[str, Path]:
    """{'front': path, ...} from a folder (files named front/right/back/left.*, else the first 4
    in sorted order), or a list in front/right/back/left order, plus optional per-view paths."""
    paths: dict[str, Path] = {}
    if len(images) == 1 and Path(images[0]).is_dir():
        folder = Path(images[0])
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        named = {p.stem.lower(): p for p in files}
        if "front" in named:
            paths = {v: named[v] for v in VIEW_NAMES if v in named}
        else:
            paths = dict(zip(VIEW_NAMES, files))
    else:
        if len(images) > 4:
            raise ConfigError(f"images: at most 4 views (front, right, back, left), got {len(images)}")
        paths = {v: Path(p) for v, p in zip(VIEW_NAMES, images)}
    for view, path in extra.items():
        if path:
            paths[view] = Path(path)
    if "front" not in paths:
        raise ConfigError("images: no front view (give images=[front.png,...] or a folder with front.png)")
    for view, path in paths.items():
        if not path.is_file():
            raise MissingInput(f"{view} view: {path} does not exist")
    return paths


def has_alpha(img: Image.Image) -> bool:
    """Whether the image carries its own mask (RGBA, LA, or a palette with a transparent entry)."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)


def remove_background(img: Image.Image, mode: str) -> Image.Image:
    """Images with alpha are used as they are. Others go through rembg when its model is available locally;
    otherwise 'auto' warns and keeps the image, 'always' fails."""
    if mode not in BACKGROUND_MODES:
        raise ConfigError(f"remove_background must be one of {BACKGROUND_MODES}, got {mode!r}")
    if has_alpha(img) or mode == "never":
        return img
    try:
        import rembg  # optional: `pip install rembg` and its u2net model in ~/.u2net

        model = Path(os.environ.get("U2NET_HOME", "~/.u2net")).expanduser() / "u2net.onnx"
        if not model.exists():
            raise BackgroundRemovalUnavailable(f"rembg's model is not at {model} (it cannot be downloaded here)")
        return rembg.remove(img, session=rembg.new_session("u2net"))
    except (ImportError, BackgroundRemovalUnavailable) as err:
        msg = (
            f"background removal unavailable ({err}); give RGBA images with a transparent background, "
            "or install rembg with its u2net model"
        )
        if mode == "always":
            raise BackgroundRemovalUnavailable(msg) from err
        log.warning("%s; using the image as it is", msg)
        return img


def export_views(shards: str, out: str, match: str = "") -> Path:
    """Write the 4 canonical views (front/right/back/left.png, RGBA) of the first object in `shards`
    whose uid contains `match`: example inputs for `craft generate`."""
    import glob
    import io

    import webdataset as wds

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for sample in wds.WebDataset(sorted(glob.glob(shards)), shardshuffle=False, empty_check=False):
        if match in sample["__key__"]:
            for i, name in enumerate(VIEW_NAMES):
                Image.open(io.BytesIO(sample[view_member(i)])).save(folder / f"{name}.png")
            (folder / "uid.txt").write_text(sample["__key__"] + "\n")
            return folder
    raise FileNotFoundError(f"no object with {match!r} in its uid in {shards}")


if __name__ == "__main__":
    import sys

    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m craftsman_platform.inference.images SHARD_GLOB OUT_DIR [UID_SUBSTRING]")
    print(export_views(*sys.argv[1:]))
