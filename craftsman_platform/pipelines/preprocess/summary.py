"""The end of a `craft preprocess` run: counts, reasons, duplicates, quality, stage medians and
throughput, read from the output's manifest column by column (bounded memory at 10M objects)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow.compute as pc

from craftsman_platform.pipelines.preprocess.object_job import STAGES
from craftsman_platform.pipelines.storage import Output
from craftsman_platform.shapedata.manifest import manifest_batches

QUALITY = ("chamfer", "sign_agreement", "parts_lost", *(f"time_{s}" for s in STAGES))


def ok_values(out: Output, column: str) -> np.ndarray:
    """`column` of the ok rows, as floats (nulls left out)."""
    parts = []
    for batch in manifest_batches(out.url, ["status", column], out.storage_options):
        values = batch.column(1).filter(pc.equal(batch.column(0), "ok")).drop_null()
        parts.append(values.to_numpy(zero_copy_only=False).astype(np.float64))
    return np.concatenate(parts) if parts else np.zeros(0)


def summarize(out: Output, seconds: float, processed: int, workers: int) -> dict:
    """Counts, reasons, duplicates by source, quality distributions, stage medians and this run's throughput."""
    status, reasons, methods, by_origin = Counter(), Counter(), Counter(), {}
    for batch in manifest_batches(out.url, ["status", "reason", "watertight_method", "origin"], out.storage_options):
        cols = {name: batch.column(name).to_pylist() for name in batch.schema.names}
        status.update(cols["status"])
        reasons.update(r for s, r in zip(cols["status"], cols["reason"]) if s == "failed")
        methods.update(m for s, m in zip(cols["status"], cols["watertight_method"]) if s == "ok")
        for s, origin in zip(cols["status"], cols["origin"]):
            entry = by_origin.setdefault(origin or "unknown", Counter())
            entry[s] += 1
    values = {name: ok_values(out, name) for name in QUALITY}

    def med(name):
        v = values[name]
        return float(np.median(v)) if len(v) else None

    def pct(name, q):
        v = np.sort(values[name])
        return float(v[min(len(v) - 1, int(q * len(v)))]) if len(v) else None

    sign = values["sign_agreement"]
    return {
        "objects": status["ok"] + status["failed"],
        "ok": status["ok"],
        "failed": status["failed"],
        "duplicates": status["duplicate"],  # listed objects whose content another object holds
        "reasons": dict(reasons),
        "by_origin": {k: dict(v) for k, v in sorted(by_origin.items())},
        "watertight_methods": dict(methods),
        "chamfer": {"median": med("chamfer"), "p90": pct("chamfer", 0.9)},
        "sign_agreement": {"min": float(sign.min()) if len(sign) else None, "median": med("sign_agreement")},
        "parts_lost_total": int(values["parts_lost"].sum()),
        "stage_median_seconds": {s: med(f"time_{s}") for s in STAGES},
        "this_run": {
            "processed": processed,
            "seconds": seconds,  # Ray start excluded
            "workers": workers,  # the most objects that ran at once
            "objects_per_second": processed / seconds if seconds > 0 else None,
        },
    }


def format_summary(s: dict) -> str:
    lines = [f"objects {s['objects']}: ok {s['ok']}, failed {s['failed']}"]
    lines += [f"  failed {reason:<20} {n}" for reason, n in sorted(s["reasons"].items())]
    if s["duplicates"]:
        per = ", ".join(f"{o} {c['duplicate']}" for o, c in s["by_origin"].items() if c.get("duplicate"))
        lines.append(f"duplicates (not processed: same content as a kept object) {s['duplicates']}: {per}")
    if s["ok"]:
        lines.append(f"watertight methods: {s['watertight_methods']}; source parts lost: {s['parts_lost_total']}")
        lines.append(
            f"chamfer median {s['chamfer']['median']:.4f} p90 {s['chamfer']['p90']:.4f}; "
            f"sign agreement min {s['sign_agreement']['min']:.4f} median {s['sign_agreement']['median']:.4f}"
        )
        lines.append(
            "stage medians (s): "
            + ", ".join(f"{k} {v:.2f}" for k, v in s["stage_median_seconds"].items() if v is not None)
        )
    listing = s.get("listing")
    if listing:
        lines.append(
            f"listing: {listing['listed']} listed in {listing['seconds']:.1f} s, {listing['to_process']} to process, "
            f"{listing['new_duplicates']} new duplicates"
        )
    run = s["this_run"]
    if run["processed"]:
        lines.append(
            f"this run: {run['processed']} objects in {run['seconds']:.1f} s, up to {run['workers']} at once "
            f"({run['objects_per_second']:.2f} objects/s; per object the driver received "
            f"{run['driver_bytes_per_object']:.0f} bytes and used {run['driver_cpu_ms_per_object']:.2f} ms of CPU)"
        )
    return "\n".join(lines)
