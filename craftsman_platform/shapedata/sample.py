"""One object as a WebDataset sample: member names, dtypes and encodings, written by `craft
preprocess` and read by training, evaluation and inference (docs/data-format.md, "Sample members").

Arrays are `.npy` (float16, read with allow_pickle=False), views PNG (RGBA colour, RGB normals,
16-bit depth), cameras and metadata JSON. Shard lists are expanded here too, one way for all readers.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import webdataset as wds

from craftsman_platform.errors import ConfigError, MissingInput
from craftsman_platform.shapedata.png import png_bytes

# ---------------------------------------------------------------------------------------------
# Member names
# ---------------------------------------------------------------------------------------------

POINT_ARRAYS = ("surface", "sharp", "vol", "near")  # float16 (N, 6) surface/sharp: xyz + normal; (N, 4) xyz + sdf
SURFACE, SHARP, VOL, NEAR = (f"{name}.npy" for name in POINT_ARRAYS)
CAMERAS = "cameras.json"
META = "meta.json"
CAPTIONS = "captions.json"  # a JSON list of the object's captions (absent: none); shapedata/captions.py
DEPTH_SCALE = 10_000.0  # stored uint16 = round(depth * DEPTH_SCALE); 0 = no hit; max 6.5535 units
REMOTE_PREFIXES = ("pipe:", "s3://", "gs://", "http://", "https://", "memory://")


# uids are sample keys: WebDataset splits member names at the first dot, so keys hold no dots
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def sanitize_uid(name: str) -> str:
    """A readable, collision-resistant uid: the name without its extension reduced to
    [A-Za-z0-9_-] (its last 80 characters), plus a hash of the whole name (extension included,
    so `chair.obj` and `chair.stl` stay two objects)."""
    stem = name.rsplit(".", 1)[0] if "." in name.rsplit("/", 1)[-1] else name
    readable = _UNSAFE.sub("_", stem).strip("_")[-80:].strip("_") or "object"
    return f"{readable}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:8]}"


def view_member(i: int) -> str:
    """The member holding view i's RGBA colour image."""
    return f"rgb_{i:03d}.png"


def normal_member(i: int) -> str:
    return f"normal_{i:03d}.png"


def depth_member(i: int) -> str:
    return f"depth_{i:03d}.png"


def is_view_member(member: str) -> bool:
    return member.startswith("rgb_") and member.endswith(".png")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


@dataclass
class View:
    """One rendered view, as the shards store it."""

    rgba: np.ndarray  # (H, W, 4) uint8, white background, alpha = mask
    normal: np.ndarray  # (H, W, 3) uint8: (n + 1) / 2 * 255, world frame; 0 where no hit
    depth: np.ndarray  # (H, W) uint16: planar depth * DEPTH_SCALE; 0 where no hit
    c2w: np.ndarray  # (4, 4) OpenCV camera-to-world (shapedata/cameras.py)
    K: np.ndarray  # (3, 3) pixel intrinsics


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def cameras_json(views: list[View]) -> dict:
    return {
        "convention": "opencv",
        "depth_scale": DEPTH_SCALE,
        "views": [
            {"c2w": v.c2w.tolist(), "K": v.K.tolist(), "width": int(v.rgba.shape[1]), "height": int(v.rgba.shape[0])}
            for v in views
        ],
    }


def encode_sample(arrays: dict[str, np.ndarray], views: list[View]) -> dict[str, bytes]:
    """The members of one object's sample but its meta.json: point arrays (float16), views, cameras."""
    unknown = set(arrays) - set(POINT_ARRAYS)
    if unknown:
        raise ValueError(f"not sample arrays: {sorted(unknown)} (expected {POINT_ARRAYS})")
    not_half = [name for name, arr in arrays.items() if arr.dtype != np.float16]
    if not_half:  # the sampler rounds to float16 itself, keeping every sdf's sign (geometry/sampling.py)
        raise ValueError(f"sample arrays must be float16 already: {not_half}")
    members = {f"{name}.npy": npy_bytes(arr) for name, arr in arrays.items()}
    for i, v in enumerate(views):
        members[view_member(i)] = png_bytes(v.rgba)
        members[normal_member(i)] = png_bytes(v.normal)
        members[depth_member(i)] = png_bytes(v.depth)
    members[CAMERAS] = json.dumps(cameras_json(views)).encode()
    return members


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_npy(raw: bytes) -> np.ndarray:
    """A `.npy` member; pickled object arrays are refused."""
    return np.load(io.BytesIO(raw), allow_pickle=False)


def read_cameras(sample: dict) -> list[dict]:
    """The per-view camera entries ({'c2w', 'K', 'width', 'height'}) of a sample's raw members."""
    return json.loads(sample[CAMERAS])["views"]


def _is_glob(item: str) -> bool:
    return any(c in item for c in "*?[")


def _remote_glob(pattern: str) -> list[str]:
    import fsspec

    fs, _ = fsspec.core.url_to_fs(pattern)
    protocol = pattern.split("://", 1)[0]
    return sorted(f"{protocol}://{p}" for p in fs.glob(pattern))


def expand_urls(spec: str | None) -> list[str]:
    """Comma-separated paths, globs, brace patterns or URLs -> sorted shard list (an error if empty)."""
    if not spec:
        raise ConfigError("data.train_shards / data.eval_shards is empty: give a glob such as OUT/shards/*.tar")
    urls: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        for item in wds.shardlists.expand_urls(part):  # brace expansion
            if item.startswith(REMOTE_PREFIXES) and not (_is_glob(item) and "://" in item):
                urls.append(item)
            elif item.startswith(REMOTE_PREFIXES):  # s3://bucket/out/shards/*.tar: listed through fsspec
                found = _remote_glob(item)
                if not found:
                    raise MissingInput(f"no shard matches {item!r}")
                urls.extend(found)
            else:
                found = sorted(glob.glob(item))
                if not found:
                    raise MissingInput(f"no shard matches {item!r}")
                urls.extend(found)
    return urls


def open_shards(srcs: Iterator[dict], handler) -> Iterator[dict]:
    """{'url'} -> {'url', 'stream'}: local paths, pipe: and http(s) through webdataset's gopen,
    other schemes (s3://, gs://, memory://, ...) through fsspec."""
    import fsspec

    for src in srcs:
        url = src["url"]
        try:
            fsspec_url = "://" in url and not url.startswith(("http://", "https://"))
            stream = fsspec.open(url, "rb").open() if fsspec_url else wds.gopen(url, "rb")
            yield {"url": url, "stream": stream}
        except Exception as exn:
            if not handler(exn):
                raise
