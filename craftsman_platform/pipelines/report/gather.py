"""What the dataset report shows, gathered from a preprocessing output: the manifest (every object,
however many) and a bounded gallery read from the shards.

The manifest gives counts, reasons and distributions in one columnar read. Pictures come from at
most `gallery` objects: the worst by Chamfer first, then an even spread over the rest (a stable
hash of the uid, so two reports of one output show the same objects), plus failed objects (no
shard read: they have no sample). Shards are opened as seekable tars: the reader skips the other
members' bytes instead of streaming them.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from collections import defaultdict

import numpy as np
from PIL import Image

from craftsman_platform.pipelines.storage import Output
from craftsman_platform.shapedata.manifest import STATUSES, manifest_columns
from craftsman_platform.shapedata.manifest import read_manifest as read_columns
from craftsman_platform.shapedata.sample import CAMERAS, read_npy, view_member
from craftsman_platform.shapedata.views import SET_SIZE

THUMB_PX, DETAIL_PX, CLOUD_PX = 96, 160, 200
HISTOGRAMS = ("chamfer", "sign_agreement", "parts_lost", "n_faces", "time_load", "time_watertight",
              "time_sample", "time_render", "time_write")  # fmt: skip
GALLERY_COLUMNS = ("uid", "status", "reason", "message", "chamfer", "sign_agreement", "parts_lost", "n_faces",
                   "lvis_category", "watertight_method", "shard", "source")  # fmt: skip
READ = (*GALLERY_COLUMNS, *HISTOGRAMS, "origin", "duplicate_of")
EXAMPLES_PER_REASON = 3


def read_manifest(out: Output) -> dict[str, np.ndarray]:
    """The manifest's columns the report uses (numpy object or float arrays), either layout; columns an
    older output lacks are absent."""
    present = set(manifest_columns(out.url, out.storage_options))
    table = read_columns(out.url, [c for c in dict.fromkeys(READ) if c in present], out.storage_options)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def counts(cols: dict[str, np.ndarray]) -> dict:
    """By status, by failure reason (with example uids and messages), by LVIS category."""
    status = cols["status"]
    out: dict = {"objects": len(status), "status": _tally(status), "reasons": {}, "categories": {}, "origins": {}}
    failed = np.flatnonzero(status == "failed")
    for i in failed:
        reason = cols["reason"][i] or "unknown"
        entry = out["reasons"].setdefault(reason, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < EXAMPLES_PER_REASON:
            entry["examples"].append({"uid": cols["uid"][i], "message": cols["message"][i] or ""})
    if "origin" in cols:  # by source: listed objects, and what became of them (duplicates were not processed)
        origin = np.where(cols["origin"] == None, "unknown", cols["origin"])  # noqa: E711 - numpy elementwise
        for name in np.unique(origin.astype(str)):
            mine = status[origin == name]
            out["origins"][str(name)] = {"objects": len(mine), **{k: int(np.sum(mine == k)) for k in STATUSES}}
    if "lvis_category" in cols:
        cats = cols["lvis_category"]
        ok = status == "ok"
        for cat, n in _tally(cats[cats != None]).items():  # noqa: E711 - numpy elementwise
            out["categories"][cat] = {"objects": n, "ok": int(np.sum(ok & (cats == cat)))}
    return out


def _tally(values: np.ndarray) -> dict[str, int]:
    names, n = np.unique(values.astype(str), return_counts=True)
    return {str(k): int(v) for k, v in sorted(zip(names, n), key=lambda kv: -kv[1])}


def histogram(values: np.ndarray, bins: int = 30) -> dict | None:
    """Bin edges and counts of the finite values (None when there are none)."""
    finite = values.astype(float)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return None
    lo, hi = float(finite.min()), float(finite.max())
    n, edges = np.histogram(finite, bins=bins if hi > lo else 1, range=(lo, hi if hi > lo else lo + 1))
    return {"edges": edges.tolist(), "counts": n.tolist(), "n": int(len(finite)), "median": float(np.median(finite))}


def pick_gallery(cols: dict[str, np.ndarray], size: int) -> list[int]:
    """Row indices: ok objects, the worst half of `size` by Chamfer then a spread; failed ones up to a quarter."""
    status = cols["status"]
    ok = np.flatnonzero(status == "ok")
    chamfer = cols["chamfer"][ok].astype(float) if "chamfer" in cols else np.zeros(len(ok))
    chamfer = np.where(np.isfinite(chamfer), chamfer, -1.0)
    worst = ok[np.argsort(-chamfer, kind="stable")][: size // 2]
    rest = np.setdiff1d(ok, worst)
    spread = sorted(rest, key=lambda i: zlib.crc32(str(cols["uid"][i]).encode()))[: size - len(worst)]
    failed = np.flatnonzero(status == "failed")[: max(size // 4, 0)]
    return [int(i) for i in (*worst, *spread, *failed)]


def read_pictures(out: Output, cols: dict[str, np.ndarray], rows: list[int]) -> dict[str, dict]:
    """{uid: {"thumb": PNG, "views": [PNG x SET_SIZE], "cloud": PNG}} for the rows that have a sample."""
    return {uid: _pictures(m) for uid, m in read_members(out, cols, rows).items()}


def read_members(out: Output, cols: dict[str, np.ndarray], rows: list[int]) -> dict[str, dict[str, bytes]]:
    """{uid: {member: bytes}}: the first view set, surface points and cameras of the rows' samples."""
    wanted: dict[str, set[str]] = defaultdict(set)
    for i in rows:
        if cols["status"][i] == "ok" and cols["shard"][i]:
            wanted[cols["shard"][i]].add(str(cols["uid"][i]))
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
