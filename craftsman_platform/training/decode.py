"""One training sample: which tar members a run reads, and how they decode into arrays (points,
views, posteriors, a caption) and batches. Used by the streams of training/data.py, in the loader's
worker processes."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from craftsman_platform.shapedata.captions import decode_captions
from craftsman_platform.shapedata.pack import LATENT_MEMBERS, POINTS, decode_latent_sample, decode_vae_sample
from craftsman_platform.shapedata.sample import CAMERAS, CAPTIONS, NEAR, SURFACE, VOL, is_view_member, read_npy
from craftsman_platform.shapedata.views import SET_SIZE, shard_views, view_sets
from craftsman_platform.training.config import DataConfig


def member_filter(kind: str, text: bool = False):
    """Tar members a task reads: others (normal and depth maps, sharp points, meta) are skipped while
    streaming, so they never reach the shuffle buffer. `kind`: vae or diffusion on an archive,
    vae_pack or latents on a pack; `text`: a text-conditioned diffusion run (captions, no views)."""
    wanted = {SURFACE, VOL, NEAR} | ({CAMERAS} if kind == "diffusion" else set())
    if kind in ("latents", "vae_pack"):
        wanted = set(LATENT_MEMBERS) if kind == "latents" else {POINTS}
    views = kind in ("diffusion", "latents") and not text
    if text:
        wanted = (wanted - {CAMERAS}) | {CAPTIONS}

    def select(name: str) -> bool:
        member = name.rsplit("/", 1)[-1].split(".", 1)[-1]
        return member in wanted or (views and is_view_member(member))

    return select


# ----------------------------------------------------------------------------------------------
# Decoding one sample
# ----------------------------------------------------------------------------------------------
def _subset(arr: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if len(arr) == 0:
        raise ValueError("empty point array")
    if len(arr) == n:  # a pack's chunk: already a random slice of the step's size
        out = arr.astype(np.float32)
    else:
        out = arr[rng.choice(len(arr), n, replace=len(arr) < n)].astype(np.float32)
    if not np.isfinite(out.sum()):  # a damaged member can still parse as an array: skip, count it (one pass)
        raise ValueError("non-finite values in a point array")
    return out


def _rotate(points: np.ndarray, rot: np.ndarray, with_normals: bool) -> np.ndarray:
    out = points.copy()
    out[:, :3] = points[:, :3] @ rot.T
    if with_normals:
        out[:, 3:6] = points[:, 3:6] @ rot.T
    return out


def decode_sample(raw: dict, cfg: DataConfig, kind: str, rng: np.random.Generator, recipe: dict | None = None) -> dict:
    """Raw tar members -> subsampled float32 arrays (+ uint8 views and c2w for diffusion); a vae pack's
    sample the same way (its arrays sized by the pack's `recipe`); a latents pack's sample -> its
    posterior, views and cameras."""
    text = cfg.condition == "text"
    if kind == "latents":
        sample = decode_latent_sample(raw, 0 if text else cfg.views)
        captions = sample.pop("captions")
        if text:
            return {"uid": raw["__key__"], "mean": sample["mean"], "logvar": sample["logvar"],
                    "caption": pick_caption(captions, rng)}  # fmt: skip
        return {"uid": raw["__key__"], **sample}
    if kind == "vae_pack":
        arrays = decode_vae_sample(raw, recipe)
    else:
        arrays = {name: read_npy(raw[member]) for name, member in (("surface", SURFACE), ("vol", VOL), ("near", NEAR))}
    surface = _subset(arrays["surface"], cfg.num_surface, rng)
    vol = _subset(arrays["vol"], cfg.num_vol, rng)
    near = _subset(arrays["near"], cfg.num_near, rng)
    rot = Rotation.random(random_state=rng).as_matrix().astype(np.float32) if cfg.rotation_augment else None
    if rot is not None:
        surface, vol, near = _rotate(surface, rot, True), _rotate(vol, rot, False), _rotate(near, rot, False)
    out = {"uid": raw["__key__"], "surface": surface, "vol": vol, "near": near}
    if kind == "diffusion" and text:
        out["caption"] = pick_caption(decode_captions(raw.get(CAPTIONS)), rng)
    elif kind == "diffusion":
        n_sets = view_sets(raw)
        if n_sets == 0:
            raise ValueError("no complete 4-view set in cameras.json")
        first = SET_SIZE * (int(rng.integers(n_sets)) if cfg.view_set == "random" else 0)
        images, c2w = shard_views(raw, range(first, first + cfg.views), cfg.image_size)
        if rot is not None:  # the cameras turn with the object: the images stay valid
            rot4 = np.eye(4, dtype=np.float32)
            rot4[:3, :3] = rot
            c2w = rot4 @ c2w
        out["images"], out["c2w"] = images, c2w
    return out


def pick_caption(captions: list[str], rng: np.random.Generator) -> str:
    """One of the object's captions for this step (a new draw each time it is read); an object
    without any trains with the empty prompt, the unconditional model's input."""
    return captions[int(rng.integers(len(captions)))] if captions else ""


def collate(samples: list[dict]) -> dict:
    batch = {"uid": [s["uid"] for s in samples]}
    for key in samples[0]:
        if key in ("uid", "caption"):
            batch[key] = [s[key] for s in samples]
        else:
            batch[key] = torch.from_numpy(np.stack([s[key] for s in samples]))
    return batch
