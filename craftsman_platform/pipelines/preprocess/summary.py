"""The end of a `craft preprocess` run: counts, reasons, quality, stage medians and throughput."""

from __future__ import annotations

import statistics
from collections import Counter

from craftsman_platform.pipelines.preprocess.object_job import STAGES


def summarize(rows: list[dict], seconds: float, processed: int, workers: int) -> dict:
    """Counts, reasons, quality distributions, stage medians and this run's throughput."""
    ok = [r for r in rows if r["status"] == "ok"]

    def med(key):
        vals = [r[key] for r in ok if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    def pct(key, q):
        vals = sorted(r[key] for r in ok if r.get(key) is not None)
        return vals[min(len(vals) - 1, int(q * len(vals)))] if vals else None

    return {
        "objects": len(rows),
        "ok": len(ok),
        "failed": len(rows) - len(ok),
        "reasons": dict(Counter(r["reason"] for r in rows if r["status"] != "ok")),
        "watertight_methods": dict(Counter(r["watertight_method"] for r in ok)),
        "chamfer": {"median": med("chamfer"), "p90": pct("chamfer", 0.9)},
        "sign_agreement": {
            "min": min((r["sign_agreement"] for r in ok), default=None),
            "median": med("sign_agreement"),
        },
        "parts_lost_total": sum(r["parts_lost"] for r in ok),
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
    run = s["this_run"]
    if run["processed"]:
        lines.append(
            f"this run: {run['processed']} objects in {run['seconds']:.1f} s, up to {run['workers']} at once "
            f"({run['objects_per_second']:.2f} objects/s; per object the driver received "
            f"{run['driver_bytes_per_object']:.0f} bytes and used {run['driver_cpu_ms_per_object']:.2f} ms of CPU)"
        )
    return "\n".join(lines)
