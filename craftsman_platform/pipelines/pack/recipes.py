"""What a pack stores of one archive sample: the per-object recipes of `craft pack`.

vae: each point array is cut into `chunks` disjoint random slices of a step's size (a seeded
permutation per object; an array with fewer points than chunks x size is permuted again for the
rest), so an epoch reads one small slice per object and the next epoch another.

latents: chunk c encodes surface slice c with the VAE (eval mode: deterministic queries) and keeps
view set c % sets through the one image path (shapedata/views.py), so every chunk is another
(points, views) pair of the object, as the archive's `data.view_set=random` draws them.
"""

from __future__ import annotations

import numpy as np

from craftsman_platform.geometry.sampling import object_rng
from craftsman_platform.shapedata.sample import NEAR, SURFACE, VOL, read_npy
from craftsman_platform.shapedata.views import SET_SIZE, shard_views

POINT_MEMBERS = {"surface": SURFACE, "vol": VOL, "near": NEAR}


def chunk_indices(n_points: int, size: int, chunks: int, rng: np.random.Generator) -> np.ndarray:
    """(chunks, size) indices into an array of n_points: disjoint while the points last."""
    if n_points == 0:
        raise ValueError("empty point array")
    need = size * chunks
    perms = [rng.permutation(n_points) for _ in range(-(-need // n_points))]
    return np.concatenate(perms)[:need].reshape(chunks, size)


def point_chunks(raw: dict, sizes: dict[str, int], chunks: int, seed: int) -> list[dict[str, np.ndarray]]:
    """The archive sample's point arrays cut into `chunks` slices: [{name: float16 array}, ...]."""
    rng = object_rng(seed, raw["__key__"] + "/pack")
    out: list[dict[str, np.ndarray]] = [{} for _ in range(chunks)]
    for name, size in sizes.items():
        arr = read_npy(raw[POINT_MEMBERS[name]])
        for c, idx in enumerate(chunk_indices(len(arr), size, chunks, rng)):
            out[c][name] = arr[idx]
    return out


def chunk_views(raw: dict, chunk: int, sets: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """View set `chunk % sets` of an archive sample through the one image path: uint8 (4, 3, S, S), c2w."""
    first = SET_SIZE * (chunk % sets)
    return shard_views(raw, range(first, first + SET_SIZE), size)


class Encoder:
    """The VAE encoder of a latents pack: posteriors of surface chunks, in batches, on one device."""

    def __init__(self, checkpoint: str, device: str = "auto"):
        import torch

        from craftsman_platform.models.checkpoints import load_vae

        self.torch = torch
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.vae, _, _ = load_vae(checkpoint, prefer_ema=True, device=self.device)

    def posterior(self, points: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """points (B, N, 6) float16/32 -> (mean, logvar) float32 (B, num_latents, embed_dim)."""
        means, logvars = [], []
        with self.torch.no_grad():
            for i in range(0, len(points), batch_size):
                x = self.torch.from_numpy(points[i : i + batch_size].astype(np.float32)).to(self.device)
                post = self.vae.posterior(x)
                means.append(post.mean.float().cpu().numpy())
                logvars.append(post.logvar.float().cpu().numpy())
        return np.concatenate(means), np.concatenate(logvars)


_ENCODERS: dict[tuple[str, str], Encoder] = {}


def cached_encoder(checkpoint: str, device: str) -> Encoder:
    """One encoder per worker process and checkpoint (Ray reuses worker processes across tasks)."""
    key = (checkpoint, device)
    if key not in _ENCODERS:
        _ENCODERS[key] = Encoder(checkpoint, device)
    return _ENCODERS[key]
