"""Target normal maps for the refiner, with their cameras and masks.

Three sources, one convention (docs/data-format.md, "Cameras"; OpenCV axes, world-frame normals
stored as (n + 1) / 2 * 255):
  * a folder laid out like an archive sample: `cameras.json` and `normal_000.png`, ... (masks
    from `rgb_000.png`'s alpha or `mask_000.png` when present);
  * a folder of canonical views like `craft generate` takes: `front.png`, `right.png`, `back.png`,
    `left.png` normal maps (any of them) at the canonical cameras;
  * an archive object: `archive=SHARDS uid=UID`.
Where no mask is given, background pixels are those encoding no unit normal: black (0, 0, 0), as
the archive renderer writes, or white, as normal-map generators write.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from craftsman_platform.errors import ConfigError, MissingInput
from craftsman_platform.shapedata.cameras import DEFAULT_DISTANCE, DEFAULT_FOV_DEG, canonical_c2w, intrinsics
from craftsman_platform.shapedata.sample import CAMERAS, expand_urls, normal_member, open_shards, view_member
from craftsman_platform.shapedata.views import VIEW_NAMES

log = logging.getLogger("craft.refine")


class BadNormalMaps(ConfigError):
    """Normal maps that cannot be used as they are: the message names the file and the problem."""


@dataclass
class NormalView:
    """One target view: unit world-frame normals inside `mask`, and the camera that saw them."""

    normal: np.ndarray  # (H, W, 3) float32, unit length inside the mask, 0 outside
    mask: np.ndarray  # (H, W) bool
    c2w: np.ndarray  # (4, 4) OpenCV camera-to-world
    K: np.ndarray  # (3, 3) pixel intrinsics
    name: str = ""

    @property
    def size(self) -> tuple[int, int]:
        return self.mask.shape


def decode_normals(img: np.ndarray, name: str, mask: np.ndarray | None = None) -> NormalView:
    """A normal map image (H, W, 3 or 4) uint8 -> normals and mask (camera left for the caller)."""
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise BadNormalMaps(f"{name}: a normal map is an RGB or RGBA image, got shape {img.shape}")
    rgb = img[..., :3].astype(np.float32)
    if mask is None:
        if img.shape[2] == 4:
            mask = img[..., 3] > 127
        else:
            mask = ~(np.all(img[..., :3] == 0, axis=2) | np.all(img[..., :3] == 255, axis=2))
    if mask.shape != img.shape[:2]:
        raise BadNormalMaps(
            f"{name}: its mask is {mask.shape[1]}x{mask.shape[0]}, the map {img.shape[1]}x{img.shape[0]}"
        )
    n = rgb / 127.5 - 1.0
    length = np.linalg.norm(n, axis=2, keepdims=True)
    n = np.where(mask[..., None], n / np.maximum(length, 1e-6), 0.0).astype(np.float32)
    return NormalView(normal=n, mask=mask, c2w=np.eye(4), K=np.eye(3), name=name)


def usable(views: list[NormalView], where: str) -> list[NormalView]:
    """The views whose masks hold a pixel of the object (a thin part seen edge-on may show none);
    an error when none does."""
    empty = [v.name for v in views if not v.mask.any()]
    if empty and len(empty) == len(views):
        raise BadNormalMaps(f"{where}: every mask is empty ({len(views)} views): no pixel of the object to refine with")
    if empty:
        log.warning("refine: %d view(s) with an empty mask left out: %s", len(empty), ", ".join(empty))
    return [v for v in views if v.mask.any()]


def _with_camera(view: NormalView, c2w: np.ndarray, K: np.ndarray, width: int, height: int) -> NormalView:
    if view.size != (height, width):
        raise BadNormalMaps(
            f"{view.name}: the image is {view.size[1]}x{view.size[0]}, its camera says {width}x{height}"
        )
    view.c2w, view.K = np.asarray(c2w, dtype=np.float64), np.asarray(K, dtype=np.float64)
    return view


def _read_png(raw: bytes | Path) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(raw) if isinstance(raw, bytes) else raw))


def views_from_sample(members: dict[str, bytes], where: str) -> list[NormalView]:
    """Views of an archive-like set of members (cameras.json + normal_NNN.png [+ rgb/mask])."""
    cams = json.loads(members[CAMERAS])["views"]
    views = []
    for i, cam in enumerate(cams):
        key = normal_member(i)
        if key not in members:
            continue
        mask = None
        mask_key = f"mask_{i:03d}.png"
        if view_member(i) in members:
            rgba = _read_png(members[view_member(i)])
            mask = rgba[..., 3] > 127 if rgba.ndim == 3 and rgba.shape[2] == 4 else None
        elif mask_key in members:
            mask = _read_png(members[mask_key]) > 127
            mask = mask if mask.ndim == 2 else mask[..., 0]
        view = decode_normals(_read_png(members[key]), f"{where}/{key}", mask)
        views.append(_with_camera(view, cam["c2w"], cam["K"], cam["width"], cam["height"]))
    if not views:
        raise BadNormalMaps(f"{where}: cameras.json lists {len(cams)} views but no normal_NNN.png is there")
    return usable(views, where)


def views_from_folder(folder: str | Path) -> list[NormalView]:
    """Normal maps of a folder (archive-like with cameras.json, or canonical front/right/back/left)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInput(f"normals={folder}: no such folder")
    if (folder / CAMERAS).exists():
        members = {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix in (".png", ".json")}
        return views_from_sample(members, str(folder))
    found = [(i, folder / f"{name}.png") for i, name in enumerate(VIEW_NAMES) if (folder / f"{name}.png").exists()]
    if not found:
        raise BadNormalMaps(
            f"normals={folder}: no cameras.json (with normal_000.png, ...) and no canonical "
            f"{', '.join(n + '.png' for n in VIEW_NAMES)}: the cameras of the maps are unknown"
        )
    c2w = canonical_c2w(DEFAULT_DISTANCE)
    views = []
    for i, path in found:
        view = decode_normals(_read_png(path), str(path))
        h, w = view.size
        views.append(_with_camera(view, c2w[i], intrinsics(w, h, DEFAULT_FOV_DEG), w, h))
    return usable(views, str(folder))


def views_from_archive(shards: str, uid: str) -> list[NormalView]:
    """The normal renders of one archive object (the whole object's views, with their cameras)."""
    files = wds.tariterators.tar_file_expander(
        open_shards(({"url": u} for u in expand_urls(shards)), wds.reraise_exception)
    )
    for raw in wds.tariterators.group_by_keys(files):
        if raw.get("__key__") == uid:
            if CAMERAS not in raw:
                raise BadNormalMaps(f"{shards}: object {uid} has no cameras.json")
            return views_from_sample(raw, f"{shards}:{uid}")
    raise MissingInput(f"{shards}: no object {uid}")


def views_from_arrays(normals: list[np.ndarray], c2ws: list[np.ndarray], Ks: list[np.ndarray]) -> list[NormalView]:
    """Normal map images (uint8) with their cameras, e.g. from a front end in memory."""
    if not (len(normals) == len(c2ws) == len(Ks)):
        raise BadNormalMaps(f"{len(normals)} normal maps but {len(c2ws)} cameras and {len(Ks)} intrinsics")
    views = []
    for i, (img, c2w, K) in enumerate(zip(normals, c2ws, Ks)):
        view = decode_normals(np.asarray(img), f"normal map {i}")
        views.append(_with_camera(view, c2w, K, view.size[1], view.size[0]))
    return usable(views, "normal maps")
