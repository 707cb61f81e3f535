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
from craftsman_platform.pipelines.preprocess.sources import ObjectRef, TransientError, local_copy
from craftsman_platform.pipelines.writers import WriterLost, hand_to_writer
from craftsman_platform.shapedata.cameras import view_cameras
from craftsman_platform.shapedata.sample import META, encode_sample

PIPELINE_VERSION = "0.1.0"
STAGES = ("load", "watertight", "sample", "render", "write")
# Failure reasons of the job itself (the loader's are craftsman_platform.geometry.mesh_io.REASONS)
JOB_REASONS = {
    "not_found": "the source does not exist (a missing file, HTTP 404, no such object in the bucket)",
    "fetch_failed": "the source could not be fetched after max_retries (DNS, refused or reset connection, "
    "network timeout, HTTP 5xx/408/429); retried again on the next run",
    "timeout": "no result within timeout_s; the worker was killed (retried with retry_failed=true)",
    "worker_crashed": "the worker process died (out of memory, lost node); retried again on the next run",
    "error": "an unexpected error in the pipeline or a library, with its message",
}
RETRIED_ON_RERUN = ("fetch_failed", "worker_crashed")


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_object(ref: ObjectRef, cfg: PreprocessConfig, config_hash: str, writers: str) -> dict:
    """Process one object and hand its sample to this node's writer of group `writers`; the result
    for the driver. Raises only `TransientError`."""
    base = {"uid": ref.uid, "source": ref.source, "config_hash": config_hash}
    try:
        with local_copy(ref.source, ref.cached) as path:
            source_sha = _sha256(path)
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
        timings["write"] = time.perf_counter() - t  # encoding the members
        record = geo.record()
        meta = {
            "uid": ref.uid,
            "source": ref.source,
            "source_sha256": source_sha,
            "annotations": ref.annotations or None,
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
        return {**base, "status": "ok", "row": row, "node": _node_id(), **ack}
    except (TransientError, DiskFull):  # retried; or the end of the job (no object is to blame)
        raise
    except WriterLost as e:
        return {**base, "status": "writer_lost", "node": _node_id(), "message": str(e)}
    except MeshRejected as e:
        return failure(base, e.code, e.message)
    except FileNotFoundError as e:
        return failure(base, "not_found", f"no such file or object: {e.filename or e}")
    except Exception as e:  # a bug or an unexpected library error: recorded, the job goes on
        tb = traceback.format_exception_only(type(e), e)[-1].strip()
        return failure(base, "error", tb[:500])


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def failure(base: dict, reason: str, message: str) -> dict:
    row = {
        "uid": base["uid"],
        "source": base["source"],
        "status": "failed",
        "reason": reason,
        "message": message,
        "shard": None,
        "config_hash": base["config_hash"],
    }
    return {**base, "status": "failed", "reason": reason, "message": message, "row": row}


def manifest_row(meta: dict) -> dict:
    """The manifest columns of a successful object, derived from its meta.json alone."""
    wt = meta["watertight"]
    return {
        "uid": meta["uid"],
        "source": meta["source"],
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
    }
