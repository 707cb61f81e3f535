"""One pack task: an archive shard in, its chunk shards out (runs in a Ray task, on the workers).

The task streams the archive shard once, keeps the selected objects, writes one pack shard per
chunk it was asked for (named by the driver: part * chunks + chunk) through the shared shard
store's writer, and returns each shard's commit record for the driver to journal. Samples the
archive shard holds damaged are failure rows; the rest of the shard goes on.
"""

from __future__ import annotations

import numpy as np
import webdataset as wds

from craftsman_platform.pipelines.pack.config import PackConfig
from craftsman_platform.pipelines.pack.recipes import (
    POINT_MEMBERS,
    cached_encoder,
    chunk_views,
    point_chunks,
)
from craftsman_platform.pipelines.shardstore import ShardWriter
from craftsman_platform.pipelines.storage import Output
from craftsman_platform.shapedata.captions import decode_captions
from craftsman_platform.shapedata.pack import encode_latent_sample, encode_vae_sample, pack_shard_index
from craftsman_platform.shapedata.sample import CAMERAS, CAPTIONS, NEAR, SURFACE, VOL, is_view_member, open_shards


def _wanted(kind: str):
    names = {SURFACE, VOL, NEAR} if kind == "vae" else {SURFACE, CAMERAS, CAPTIONS}

    def select(name: str) -> bool:
        member = name.rsplit("/", 1)[-1].split(".", 1)[-1]
        return member in names or (kind == "latents" and is_view_member(member))

    return select


def archive_samples(url: str, kind: str, errors: list) -> "wds.Iterator":
    """The raw samples of one archive shard (only the members the recipe reads); errors collected."""

    def keep_going(exn: Exception) -> bool:
        errors.append(f"{type(exn).__name__}: {str(exn)[:200]}")
        return True

    files = wds.tariterators.tar_file_expander(
        open_shards(iter([{"url": url}]), keep_going), handler=keep_going, select_files=_wanted(kind)
    )
    return wds.tariterators.group_by_keys(files, handler=keep_going)


class _Latents:
    """Pending objects of a latents pack, encoded in batches of surface chunks."""

    def __init__(self, cfg: PackConfig, recipe: dict, encoder_actor):
        self.cfg, self.recipe, self.actor = cfg, recipe, encoder_actor
        self.pending: list[tuple[str, list, list, list]] = []  # (uid, [points per chunk], [(images, c2w)], captions)
        self.encoder = None if encoder_actor is not None else cached_encoder(cfg.vae_checkpoint, cfg.encode.device)

    def add(self, raw: dict, chunks: list[int], captions: list[str]) -> None:
        pts = point_chunks(raw, {"surface": self.recipe["num_surface"]}, self.recipe["chunks"], self.cfg.seed)
        views = [chunk_views(raw, c, self.recipe["view_sets"], self.recipe["image_size"]) for c in chunks]
        self.pending.append((raw["__key__"], [pts[c]["surface"] for c in chunks], views, captions))

    def ready(self) -> bool:
        return sum(len(p[1]) for p in self.pending) >= self.cfg.encode.batch_size

    def flush(self):
        """[(uid, [members per chunk])] of the pending objects, encoded."""
        if not self.pending:
            return []
        points = np.stack([p for _, pts, _, _ in self.pending for p in pts])
        if self.actor is not None:
            import ray

            mean, logvar = ray.get(self.actor.posterior.remote(points, self.cfg.encode.batch_size))
        else:
            mean, logvar = self.encoder.posterior(points, self.cfg.encode.batch_size)
        out, i = [], 0
        for uid, pts, views, captions in self.pending:
            members = []
            for images, c2w in views:
                members.append(encode_latent_sample(mean[i], logvar[i], images, c2w, self.cfg.encode.dtype, captions))
                i += 1
            out.append((uid, members, captions))
        self.pending = []
        return out


def pack_part(part: int, url: str, chunks: list[int], uids: dict, cfg: PackConfig, recipe: dict, encoder=None) -> dict:
    """Write chunks `chunks` of archive shard `url` (the objects `uids` names, with the captions given
    at pack time, or None for the archive's own). Returns
    {"part", "sealed": [{"shard", "bytes", "rows"}], "failed": [rows], "objects": n}."""
    writer = ShardWriter(Output(cfg.output_dir, cfg.storage_options))
    total = recipe["chunks"]
    index = {c: pack_shard_index(part, c, total) for c in chunks}
    rows: list[dict] = []
    failed: list[dict] = []
    errors: list[str] = []
    latents = _Latents(cfg, recipe, encoder) if cfg.kind == "latents" else None
    source_shard = url.rsplit("/", 1)[-1]

    def write(uid: str, members_per_chunk: list[dict], captions: list[str] = ()) -> None:
        for c, members in zip(chunks, members_per_chunk):
            writer.add(index[c], uid, members)
        rows.append({"uid": uid, "status": "ok", "source_shard": source_shard, "part": part,
                     "n_captions": len(captions)})  # fmt: skip

    for raw in archive_samples(url, cfg.kind, errors):
        uid = raw["__key__"]
        if uid not in uids:
            continue
        try:
            if latents is None:
                sizes = {name: recipe[f"num_{name}"] for name in POINT_MEMBERS}
                all_chunks = point_chunks(raw, sizes, total, cfg.seed)
                write(uid, [encode_vae_sample(all_chunks[c]) for c in chunks])
            else:
                given = uids[uid]
                latents.add(raw, chunks, given if given is not None else decode_captions(raw.get(CAPTIONS)))
        except Exception as exn:  # one damaged object: a failure row, the shard goes on
            failed.append(_failure(uid, source_shard, f"{type(exn).__name__}: {str(exn)[:300]}"))
        if latents is not None and latents.ready():  # an encoder failure fails the task (retried on rerun)
            for done_uid, members, captions in latents.flush():
                write(done_uid, members, captions)
    if latents is not None:
        for done_uid, members, captions in latents.flush():
            write(done_uid, members, captions)
    missing = set(uids) - {r["uid"] for r in rows} - {r["uid"] for r in failed}
    reason = errors[0] if errors else "not in the archive shard"
    failed += [_failure(uid, source_shard, f"unreadable in {source_shard}: {reason}") for uid in sorted(missing)]
    sealed = []
    for c in chunks:
        if rows:
            sealed.append(
                {**writer.seal(index[c]), "rows": [{"uid": r["uid"], "n_captions": r["n_captions"]} for r in rows]}
            )
    return {"part": part, "sealed": sealed, "failed": failed, "rows": rows, "objects": len(rows)}


def _failure(uid: str, shard: str, message: str) -> dict:
    return {"uid": uid, "status": "failed", "reason": "unreadable", "message": message, "source_shard": shard}
