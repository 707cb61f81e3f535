"""A pack: compact training data for one task, derived from an archive by `craft pack`
(docs/data-format.md, "Packs"). Written by pipelines/pack, read by training and evaluation.

    PACK/pack.json           kind, source shards (names, sizes, config hash), selection, recipe,
                             the VAE's identity (latents), and the shard of every (part, chunk)
    PACK/shards/shard-N.tar  N = part * chunks + chunk; part = the archive shard it came from
    PACK/manifest.parquet    one row per object packed

Every object is stored as `chunks` small samples, one per chunk series, so that a sample reads a
step's worth of bytes and an epoch reads one series: in epoch e, part p is read from chunk
(e + p) % chunks (see `Pack.epoch_urls`), so every epoch sees fresh points (vae) or another view
set and surface subset (latents), and neighbouring parts see different chunks in the same epoch.

Sample members of a pack shard:
  vae:      points.npy: float16, one flat array = a disjoint slice of the archive's surface (n_surface,
            6), vol (n_vol, 4) and near (n_near, 4) rows, concatenated (one member, one header to
            parse: the loader's cost per sample is mostly per member); sizes in pack.json's recipe
  latents:  mean.npy, logvar.npy (num_latents, embed_dim): the VAE posterior of one surface chunk;
            rgb_000.png .. rgb_003.png: one 4-view set already through shapedata/views.py
            (RGB, size x size); cameras.json: their c2w; captions.json: the object's captions (if any)
"""

from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass

import numpy as np
from PIL import Image

from craftsman_platform.errors import ConfigError, MissingInput
from craftsman_platform.shapedata.captions import decode_captions, encode_captions
from craftsman_platform.shapedata.sample import CAPTIONS, npy_bytes, read_npy, view_member

PACK_FILE = "pack.json"
PACK_VERSION = 1
KINDS = ("vae", "latents")
MEAN, LOGVAR, POINTS = "mean.npy", "logvar.npy", "points.npy"
POINT_LAYOUT = (("surface", 6), ("vol", 4), ("near", 4))  # a vae sample's arrays, in points.npy order
LATENT_MEMBERS = (MEAN, LOGVAR, "cameras.json", CAPTIONS)


def pack_shard_index(part: int, chunk: int, chunks: int) -> int:
    return part * chunks + chunk


# ---------------------------------------------------------------------------------------------
# vae samples
# ---------------------------------------------------------------------------------------------


def encode_vae_sample(arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    """{surface, vol, near: float16 (n, 6|4)} -> the one member of a vae pack sample."""
    flat = np.concatenate([arrays[name].astype(np.float16).ravel() for name, _ in POINT_LAYOUT])
    return {POINTS: npy_bytes(flat)}


def decode_vae_sample(raw: dict, recipe: dict) -> dict[str, np.ndarray]:
    """A vae pack sample -> {surface, vol, near} float16 arrays, sized by the pack's recipe."""
    flat = read_npy(raw[POINTS])
    out, start = {}, 0
    for name, width in POINT_LAYOUT:
        n = recipe[f"num_{name}"] * width
        out[name] = flat[start : start + n].reshape(-1, width)
        start += n
    if start != len(flat):
        raise ValueError(f"{raw.get('__key__')}: points.npy holds {len(flat)} values, the recipe {start}")
    return out


# ---------------------------------------------------------------------------------------------
# Latents samples
# ---------------------------------------------------------------------------------------------


def encode_latent_sample(
    mean: np.ndarray, logvar: np.ndarray, images: np.ndarray, c2w: np.ndarray, dtype: str, captions: list[str] = ()
):
    """Members of one latents sample: posterior (in `dtype`), views (uint8 (V, 3, S, S)) as RGB PNGs,
    the object's captions (when it has some)."""
    members = {MEAN: npy_bytes(mean.astype(dtype)), LOGVAR: npy_bytes(logvar.astype(dtype))}
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).save(buf, format="PNG", compress_level=6)
        members[view_member(i)] = buf.getvalue()
    members["cameras.json"] = json.dumps({"c2w": np.asarray(c2w).tolist()}).encode()
    if captions:
        members[CAPTIONS] = encode_captions(captions)
    return members


def _rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).transpose(2, 0, 1)


def decode_latent_sample(raw: dict, views: int) -> dict:
    """A latents sample's raw members -> float32 mean/logvar, uint8 images (views, 3, S, S) and c2w
    (none when views=0: a text-conditioned run reads no views), captions."""
    c2w = np.asarray(json.loads(raw["cameras.json"])["c2w"], dtype=np.float32) if views else np.zeros((0, 4, 4))
    if len(c2w) < views:
        raise ValueError(f"{raw.get('__key__')}: {len(c2w)} views stored, {views} wanted")
    images = np.stack([_rgb(raw[view_member(i)]) for i in range(views)]) if views else np.zeros((0, 3, 1, 1))
    mean, logvar = read_npy(raw[MEAN]).astype(np.float32), read_npy(raw[LOGVAR]).astype(np.float32)
    if not (np.isfinite(mean).all() and np.isfinite(logvar).all()):
        raise ValueError(f"{raw.get('__key__')}: non-finite values in the stored posterior")
    return {
        "mean": mean,
        "logvar": logvar,
        "images": images,
        "c2w": c2w[:views],
        "captions": decode_captions(raw.get(CAPTIONS)),
    }


# ---------------------------------------------------------------------------------------------
# Reading a pack
# ---------------------------------------------------------------------------------------------


@dataclass
class Pack:
    root: str  # the pack's folder or URL
    info: dict  # pack.json

    @property
    def kind(self) -> str:
        return self.info["kind"]

    @property
    def chunks(self) -> int:
        return int(self.info["recipe"]["chunks"])

    @property
    def recipe(self) -> dict:
        return self.info["recipe"]

    def series(self) -> list[list[str]]:
        """Shard URLs per part, one per chunk: [[part 0 chunk 0, chunk 1, ...], ...]."""
        parts = self.info["parts"]
        return [[posixpath.join(self.root, "shards", name) for name in p["shards"]] for p in parts]

    def epoch_urls(self, epoch: int, chunk_filter=None) -> list[str]:
        """The shards epoch `epoch` reads: part p from chunk (epoch + p) % chunks (of the chunks kept
        by `chunk_filter`, e.g. the canonical view set only)."""
        kept = [c for c in range(self.chunks) if chunk_filter is None or chunk_filter(c)]
        return [shards[kept[(epoch + p) % len(kept)]] for p, shards in enumerate(self.series())]

    def archive_urls(self) -> list[str]:
        """The archive shards the pack was made from (evaluation scores on the full objects)."""
        base = self.info["source"]["url"].rstrip("/")
        return [posixpath.join(base, "shards", s["name"]) for s in self.info["source"]["shards"]]

    def uids(self) -> set[str]:
        """The objects packed (PACK's manifest rows with status ok)."""
        from craftsman_platform.shapedata.manifest import read_manifest

        table = read_manifest(self.root, ["uid", "status"]).to_pandas()
        return set(table.loc[table["status"] == "ok", "uid"])


def pack_root(spec: str | None) -> str | None:
    """The pack a data spec names (its folder, URL or pack.json), or None for archive shards."""
    if not spec or "," in spec or any(c in spec for c in "*?[{"):
        return None
    root = spec.removesuffix("/" + PACK_FILE).removesuffix(PACK_FILE).rstrip("/") or "."
    import fsspec

    fs, path = fsspec.core.url_to_fs(root)
    return root if fs.exists(posixpath.join(path, PACK_FILE)) else None


def open_pack(root: str) -> Pack:
    """Read PACK/pack.json; an unfinished or unknown pack is refused."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(root)
    try:
        info = json.loads(fs.cat_file(posixpath.join(path, PACK_FILE)))
    except FileNotFoundError:
        raise MissingInput(f"{root}: no {PACK_FILE} (not a pack)") from None
    if info.get("kind") not in KINDS or info.get("version") != PACK_VERSION:
        raise ConfigError(f"{root}/{PACK_FILE}: kind {info.get('kind')!r}, version {info.get('version')}: not a pack")
    if not info.get("complete"):
        raise ConfigError(f"{root} is an unfinished pack: run the same `craft pack` command again to finish it")
    return Pack(root.rstrip("/"), info)
