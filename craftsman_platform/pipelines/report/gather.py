"""What the dataset report shows, gathered from a preprocessing output: the manifest (every object,
however many) and a bounded gallery read from the shards.

The manifest gives counts, reasons and distributions in streaming passes (bounded memory at 10M
rows: a few bytes per row are kept for the gallery's pick). Pictures come from at
most `gallery` objects: the worst by Chamfer first, then an even spread over the rest (a stable
hash of the uid, so two reports of one output show the same objects), plus failed objects (no
shard read: they have no sample). Shards are opened as seekable tars: the reader skips the other
members' bytes instead of streaming them.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from craftsman_platform.pipelines.storage import Output
from craftsman_platform.shapedata.manifest import STATUSES, manifest_batches, manifest_columns
from craftsman_platform.shapedata.sample import CAMERAS, read_npy, view_member
from craftsman_platform.shapedata.views import SET_SIZE

THUMB_PX, DETAIL_PX, CLOUD_PX = 96, 160, 200
HISTOGRAMS = ("chamfer", "sign_agreement", "parts_lost", "n_faces", "time_load", "time_watertight",
              "time_sample", "time_render", "time_write")  # fmt: skip
GALLERY_COLUMNS = ("uid", "status", "reason", "message", "chamfer", "sign_agreement", "parts_lost", "n_faces",
                   "lvis_category", "watertight_method", "shard", "source", "caption")  # fmt: skip
COUNTED = ("uid", "status", "reason", "message", "origin", "lvis_category", "chamfer", "n_captions")
EXAMPLES_PER_REASON = 3


def _present(out: Output, names) -> list[str]:
    have = set(manifest_columns(out.url, out.storage_options))
    return [c for c in dict.fromkeys(names) if c in have]


def _batches(out: Output, names):
    return manifest_batches(out.url, _present(out, names), out.storage_options)


def scan(out: Output) -> tuple[dict, dict[str, np.ndarray]]:
    """One streaming pass over the manifest, in bounded memory whatever its size: (counts by status,
    by failure reason with example uids and messages, by source, by LVIS category; what the gallery
    picks from per row: ok, failed, Chamfer and a stable hash of the uid)."""
    stats: dict = {"objects": 0, "status": Counter(), "reasons": {}, "categories": {}, "origins": {},
                   "captions": Counter()}  # fmt: skip
    keep: dict[str, list] = {"ok": [], "failed": [], "chamfer": [], "uid_hash": []}
    for batch in _batches(out, COUNTED):
        table = pa.Table.from_batches([batch])
        status = table.column("status")
        stats["objects"] += table.num_rows
        stats["status"].update(dict(zip(*_groups(table, ["status"]))))
        failed = table.filter(pc.equal(status, "failed"))
        for uid, reason, message in zip(*(failed.column(c).to_pylist() for c in ("uid", "reason", "message"))):
            entry = stats["reasons"].setdefault(reason or "unknown", {"count": 0, "examples": []})
            entry["count"] += 1
            if len(entry["examples"]) < EXAMPLES_PER_REASON:
                entry["examples"].append({"uid": uid, "message": message or ""})
        for column, target in (("origin", "origins"), ("lvis_category", "categories")):
            if column in table.column_names:
                for (name, state), n in zip(*_groups(table, [column, "status"])):
                    if name is not None or column == "origin":
                        entry = stats[target].setdefault(name or "unknown", Counter({"objects": 0}))
                        entry["objects"] += n
                        entry[state] += n
        if "n_captions" in table.column_names:  # ok objects with and without a caption (text-conditioned training)
            ok_captions = pc.fill_null(table.column("n_captions").filter(pc.equal(status, "ok")), 0)
            with_caption = pc.sum(pc.greater(ok_captions, 0)).as_py() or 0
            stats["captions"].update({"with": with_caption, "without": len(ok_captions) - with_caption})
        keep["ok"].append(pc.equal(status, "ok").to_numpy(zero_copy_only=False))
        keep["failed"].append(pc.equal(status, "failed").to_numpy(zero_copy_only=False))
        chamfer = table.column("chamfer") if "chamfer" in table.column_names else pa.nulls(table.num_rows, pa.float64())
        keep["chamfer"].append(chamfer.to_numpy(zero_copy_only=False).astype(float))
        keep["uid_hash"].append(uid_hash(table.column("uid").to_pylist()))
    stats["status"] = dict(stats["status"].most_common())
    stats["captions"] = dict(stats["captions"])
    for target in ("origins", "categories"):
        stats[target] = {k: {"objects": v["objects"], **{s: v[s] for s in STATUSES}} for k, v in stats[target].items()}
    empty = {"ok": bool, "failed": bool, "chamfer": float, "uid_hash": np.uint32}
    return stats, {k: np.concatenate(v) if v else np.zeros(0, empty[k]) for k, v in keep.items()}


def _groups(table: pa.Table, keys: list[str]) -> tuple[list, list[int]]:
    """(key values, counts) of the rows grouped by `keys` (tuples for several keys)."""
    grouped = table.group_by(keys).aggregate([([], "count_all")])
    values = [grouped.column(k).to_pylist() for k in keys]
    return (list(zip(*values)) if len(keys) > 1 else values[0]), grouped.column("count_all").to_pylist()


def uid_hash(uids: list[str]) -> np.ndarray:
    return np.fromiter((zlib.crc32(str(u).encode()) for u in uids), np.uint32, len(uids))


def histograms(out: Output, bins: int = 30) -> dict[str, dict | None]:
    """A histogram of each of HISTOGRAMS over the ok objects, one column at a time."""
    found = {}
    for name in HISTOGRAMS:
        values = []
        for batch in _batches(out, ["status", name]) if name in _present(out, [name]) else []:
            ok = batch.column(1).filter(pc.equal(batch.column(0), "ok"))
            values.append(ok.to_numpy(zero_copy_only=False).astype(float))
        found[name] = histogram(np.concatenate(values), bins) if values else None
    return found


def histogram(values: np.ndarray, bins: int = 30) -> dict | None:
    """Bin edges and counts of the finite values (None when there are none)."""
    finite = values.astype(float)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return None
    lo, hi = float(finite.min()), float(finite.max())
    n, edges = np.histogram(finite, bins=bins if hi > lo else 1, range=(lo, hi if hi > lo else lo + 1))
    return {"edges": edges.tolist(), "counts": n.tolist(), "n": int(len(finite)), "median": float(np.median(finite))}


def pick_gallery(picks_from: dict[str, np.ndarray], size: int) -> list[int]:
    """Row indices: ok objects, the worst half of `size` by Chamfer then a spread (by `uid_hash`);
    failed ones up to a quarter. `picks_from`: per row `ok`, `failed`, `chamfer`, `uid_hash`."""
    ok = np.flatnonzero(picks_from["ok"])
    chamfer = picks_from["chamfer"][ok]
    worst = ok[_smallest(-np.where(np.isfinite(chamfer), chamfer, -1.0), size // 2)]
    rest = picks_from["ok"].copy()
    rest[worst] = False
    rest = np.flatnonzero(rest)
    spread = rest[_smallest(picks_from["uid_hash"][rest], size - len(worst))]
    failed = np.flatnonzero(picks_from["failed"])[: max(size // 4, 0)]
    return [int(i) for i in (*worst, *spread, *failed)]


def _smallest(keys: np.ndarray, m: int) -> np.ndarray:
    """Positions of the `m` smallest keys in order, ties by position (a stable sort's first m), without
    sorting all of them (10M rows: a partition, then a sort of the few below its threshold)."""
    if m <= 0 or not len(keys):
        return np.zeros(0, np.int64)
    candidates = np.flatnonzero(keys <= np.partition(keys, m - 1)[m - 1]) if m < len(keys) else np.arange(len(keys))
    return candidates[np.lexsort((candidates, keys[candidates]))[:m]]


def gallery_rows(out: Output, picks: list[int]) -> list[dict]:
    """The manifest rows (GALLERY_COLUMNS) at these row indices, in their order."""
    wanted, found, offset = set(picks), {}, 0
    for batch in _batches(out, GALLERY_COLUMNS):
        index = np.arange(offset, offset + batch.num_rows)
        hit = np.flatnonzero(np.isin(index, list(wanted)))
        for i, row in zip(hit, batch.take(pa.array(hit)).to_pylist() if len(hit) else []):
            found[offset + int(i)] = {k: row.get(k) for k in GALLERY_COLUMNS}
        offset += batch.num_rows
    return [found[i] for i in picks]


def read_pictures(out: Output, rows: list[dict]) -> dict[str, dict]:
    """{uid: {"thumb": PNG, "views": [PNG x SET_SIZE], "cloud": PNG}} for the rows that have a sample."""
    return {uid: _pictures(m) for uid, m in read_members(out, rows).items()}


def read_members(out: Output, rows: list[dict]) -> dict[str, dict[str, bytes]]:
    """{uid: {member: bytes}}: the first view set, surface points and cameras of the rows' samples."""
    wanted: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row["status"] == "ok" and row.get("shard"):
            wanted[row["shard"]].add(str(row["uid"]))
    members = {view_member(v) for v in range(SET_SIZE)} | {"surface.npy", CAMERAS}
    found: dict[str, dict[str, bytes]] = defaultdict(dict)
    for shard, uids in sorted(wanted.items()):
        with out.fs.open(out.path("shards/" + shard), "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
            for info in tar:  # headers only: the data of members not taken is seeked over
                uid, _, member = info.name.partition(".")
                if uid in uids and member in members:
                    found[uid][member] = tar.extractfile(info).read()
    return found


def _pictures(members: dict[str, bytes]) -> dict:
    views = [members[view_member(v)] for v in range(SET_SIZE) if view_member(v) in members]
    out = {"views": [_png(Image.open(io.BytesIO(v)), DETAIL_PX) for v in views]}
    out["thumb"] = _png(Image.open(io.BytesIO(views[0])), THUMB_PX) if views else None
    out["cloud"] = (
        _png(point_cloud_image(read_npy(members["surface.npy"])), CLOUD_PX) if "surface.npy" in members else None
    )
    return out


def _png(image: Image.Image, px: int) -> bytes:
    image = image.convert("RGBA")
    image.thumbnail((px, px))
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def point_cloud_image(points: np.ndarray, px: int = CLOUD_PX) -> Image.Image:
    """Surface points seen from the front-right, nearer points darker, each a 2x2 dot (no renderer needed)."""
    xyz = points[:, :3].astype(np.float32)
    yaw, pitch = np.radians(35.0), np.radians(20.0)
    rot_y = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    view = xyz @ (rot_x @ rot_y).T
    scale = (px - 8) / max(float(np.ptp(view[:, :2], axis=0).max()), 1e-6)
    uv = ((view[:, :2] - view[:, :2].min(axis=0)) * scale + 4).astype(int)
    depth = (view[:, 2] - view[:, 2].min()) / max(float(np.ptp(view[:, 2])), 1e-6)
    canvas = np.full((px, px), 255, np.uint8)
    order = np.argsort(depth)  # far first, near drawn over
    shade = (40 + 170 * depth[order]).astype(np.uint8)
    u, v = uv[order, 0], px - 1 - uv[order, 1]
    for du in (0, 1):
        for dv in (0, 1):
            canvas[np.clip(v - dv, 0, px - 1), np.clip(u + du, 0, px - 1)] = shade
    return Image.fromarray(canvas)
