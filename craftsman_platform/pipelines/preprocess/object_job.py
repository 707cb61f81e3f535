"""One object through the whole pipeline: fetch -> geometry core -> render -> encoded sample.

Runs inside a Ray task. The sample goes to the shard writer of the task's node (writers.py); the
driver gets a small result: {"status": "ok", "uid", "row": manifest fields, "node", "shard",
"sealed": commit records of shards the writer finished} or {"status": "failed", "uid", "reason",
"message", "row"}, or {"status": "writer_lost", "uid", "node", "message"} when the node's writer
died. Only `TransientError` is raised (Ray retries it); every other failure is a record, so one
bad file never stops the job.
"""

from __future__ import annotations

import hashlib
import json
import resource
import time
import traceback

from craftsman_platform.errors import DiskFull
from craftsman_platform.geometry.mesh_io import MeshRejected
from craftsman_platform.geometry.pipeline import process_mesh
from craftsman_platform.geometry.render import Renderer
from craftsman_platform.geometry.sampling import object_rng
from craftsman_platform.pipelines.preprocess.config import PreprocessConfig
from craftsman_platform.pipelines.preprocess.sources import ObjectRef, TransientError
from craftsman_platform.pipelines.preprocess.sources.fetch import fetched
from craftsman_platform.pipelines.preprocess.sources.github import CloneFailed
from craftsman_platform.pipelines.writers import WriterLost, hand_to_writer
from craftsman_platform.shapedata.cameras import view_cameras
from craftsman_platform.shapedata.captions import encode_captions, from_metadata
from craftsman_platform.shapedata.sample import CAPTIONS, META, encode_sample

PIPELINE_VERSION = "0.1.0"
STAGES = ("load", "watertight", "sample", "render", "write")


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_object(ref: ObjectRef, cfg: PreprocessConfig, config_hash: str, writers: str) -> dict:
    """Process one object and hand its sample to this node's writer of group `writers`; the result
    for the driver. Raises only `TransientError`."""
    base = row_base(ref, config_hash)
    try:
        with fetched(ref, cfg.source, cfg.timeout_s) as path:
            source_sha = _sha256(path)
            if ref.listed_sha256 and source_sha != ref.listed_sha256:
                return failure(base, "sha256_mismatch", f"the fetched file's sha256 is {source_sha}, its listing "
                               f"says {ref.listed_sha256} (it changed since the listing was made)")  # fmt: skip
            geo = process_mesh(path, ref.uid, cfg.geometry)
        timings = dict(geo.timings)

        t = time.perf_counter()
        rc = cfg.render
        renderer = Renderer(geo.loaded.parts, rc.resolution, rc.resolution, rc.fov_deg, rc.lambert)
        # views get their own stream (seed + uid + "views") so changing sample counts keeps cameras
        views = [
            renderer.render(c2w)
            for c2w in view_cameras(
                rc.extra_sets, rc.distance, object_rng(cfg.geometry.sample.seed, ref.uid + "/views")
            )
        ]
        timings["render"] = time.perf_counter() - t

        t = time.perf_counter()
        members = encode_sample(geo.samples.float16(), views)
        captions = object_captions(ref, cfg.source.captions)
        if captions:
            members[CAPTIONS] = encode_captions(captions)
        timings["write"] = time.perf_counter() - t  # encoding the members
        record = geo.record()
        meta = {
            "uid": ref.uid,
            "source": ref.source,
            "origin": ref.origin,
            "listed_sha256": ref.listed_sha256,
            "source_sha256": source_sha,
            "file_type": ref.file_type,
            "annotations": ref.annotations or None,
            "captions": captions,
            "normalization": geo.loaded.normalization,
            "watertight": {
                k: record[f"watertight_{k}"]
                for k in ("method", "is_watertight", "chamfer", "parts_in", "parts_out", "parts_lost")
            },
            "sign_agreement": record["sign_agreement"],
            "counts": {k: record[f"n_{k}"] for k in ("surface", "sharp", "vol", "near")},
            "faces": record["faces"],  # of the input mesh
            "views": len(views),
            "timings": {s: timings[s] for s in STAGES},
            "pipeline_version": PIPELINE_VERSION,
            "config_hash": config_hash,
        }
        members[META] = json.dumps(meta).encode()
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this worker process so far
        row = {**manifest_row(meta), "worker_peak_rss_mb": peak_mb}
        ack = hand_to_writer(writers, members, row)
        return {"uid": ref.uid, "status": "ok", "row": row, "node": _node_id(), **ack}
    except (TransientError, DiskFull):  # retried; or the end of the job (no object is to blame)
        raise
    except WriterLost as e:
        return {"uid": ref.uid, "status": "writer_lost", "node": _node_id(), "message": str(e)}
    except MeshRejected as e:
        return failure(base, e.code, e.message)
    except CloneFailed as e:
        return failure(base, "clone_failed", str(e)[:500])
    except FileNotFoundError as e:
        return failure(base, "not_found", f"no such file or object: {e.filename or e}")
    except Exception as e:  # a bug or an unexpected library error: recorded, the job goes on
        tb = traceback.format_exception_only(type(e), e)[-1].strip()
        return failure(base, "error", tb[:500])


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def object_captions(ref: ObjectRef, captions: str | None) -> list[str]:
    """The object's captions: joined from the captions file by the listing, or from its metadata."""
    if ref.captions:
        return list(ref.captions)
    return from_metadata(ref.annotations) if captions == "metadata" else []


def row_base(ref: ObjectRef, config_hash: str) -> dict:
    """The manifest fields every row of the object has, whatever becomes of it."""
    return {
        "uid": ref.uid,
        "source": ref.source,
        "origin": ref.origin,
        "config_hash": config_hash,
        "listed_sha256": ref.listed_sha256,
        "license": (ref.annotations or {}).get("license"),
        "file_type": ref.file_type,
        "lvis_category": (ref.annotations or {}).get("lvis_category"),
        "caption": ref.captions[0] if ref.captions else None,
        "n_captions": len(ref.captions),
    }


def failure(base: dict, reason: str, message: str) -> dict:
    row = {**base, "status": "failed", "reason": reason, "message": message, "shard": None}
    return {"uid": base["uid"], "status": "failed", "reason": reason, "message": message, "row": row}


def manifest_row(meta: dict) -> dict:
    """The manifest columns of a successful object, derived from its meta.json alone."""
    wt = meta["watertight"]
    return {
        "uid": meta["uid"],
        "source": meta["source"],
        "origin": meta.get("origin"),  # absent in samples of older versions
        "listed_sha256": meta.get("listed_sha256"),
        "file_type": meta.get("file_type"),
        "status": "ok",
        "reason": None,
        "message": None,
        "shard": None,
        "config_hash": meta["config_hash"],
        "source_sha256": meta["source_sha256"],
        **{f"time_{s}": float(meta["timings"][s]) for s in STAGES},
        "watertight_method": wt["method"],
        "chamfer": wt["chamfer"],
        "parts_in": wt["parts_in"],
        "parts_out": wt["parts_out"],
        "parts_lost": wt["parts_lost"],
        "sign_agreement": meta["sign_agreement"],
        "n_sharp": meta["counts"]["sharp"],
        "n_faces": meta.get("faces"),  # of the input mesh (absent in samples of older versions)
        "views": meta["views"],
        # for `craft pack select=...`: Objaverse's LVIS category (when selected by category) and license
        "lvis_category": (meta.get("annotations") or {}).get("lvis_category"),
        "license": (meta.get("annotations") or {}).get("license"),
        "caption": (meta.get("captions") or [None])[0],
        "n_captions": len(meta.get("captions") or []),
    }
