"""DIR/report.html: one self-contained offline page (no network, no external files).

Metric curves over the evaluated checkpoints (inline SVG), a per-object table of the latest
checkpoint that sorts by any column (a few lines of inline JavaScript), and each object's
ground-truth views above the prediction rendered from the same cameras (inline PNG).
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

CURVE_W, CURVE_H, PAD = 320, 160, 28

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:22px} h2{font-size:17px;margin-top:28px}
.curves{display:flex;flex-wrap:wrap;gap:16px}
.curve{border:1px solid #ddd;padding:6px} .curve h3{font-size:13px;margin:0 0 4px}
table{border-collapse:collapse;font-size:13px} th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3;cursor:pointer;user-select:none} td.uid{text-align:left;font-family:monospace}
th.sorted-asc::after{content:" \\25B2"} th.sorted-desc::after{content:" \\25BC"}
img.render{max-width:100%;border:1px solid #eee}
.curve.single{width:180px} .curve .value{font-size:28px;margin:18px 0 4px}
"""

SORT_JS = """
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const table = th.closest('table'), body = table.tBodies[0];
  const asc = !th.classList.contains('sorted-asc');
  table.querySelectorAll('th').forEach(h => h.classList.remove('sorted-asc', 'sorted-desc'));
  th.classList.add(asc ? 'sorted-asc' : 'sorted-desc');
  const key = r => { const t = r.cells[col].dataset.value ?? r.cells[col].textContent; const n = parseFloat(t);
                     return isNaN(n) ? t : n; };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1); })
    .forEach(r => body.appendChild(r));
}));
"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return html.escape(str(v))


def svg_curve(name: str, steps: list[int], values: list[float]) -> str:
    """A small line chart of one metric against the checkpoint step."""
    pts = [(s, v) for s, v in zip(steps, values) if v is not None and not math.isnan(v)]
    if not pts:
        return f'<div class="curve"><h3>{html.escape(name)}</h3><p>no values</p></div>'
    if len(pts) == 1:  # one checkpoint: a value, not a lone dot on a made-up axis
        ((x, y),) = pts
        return (
            f'<div class="curve single" data-metric="{html.escape(name)}"><h3>{html.escape(name)}</h3>'
            f'<p class="value">{y:.4f}</p><p>at step {x} (one checkpoint so far)</p></div>'
        )
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1e-9
    sx = lambda x: PAD + (x - x0) / (x1 - x0) * (CURVE_W - 2 * PAD)  # noqa: E731
    sy = lambda y: CURVE_H - PAD - (y - y0) / (y1 - y0) * (CURVE_H - 2 * PAD)  # noqa: E731
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    dots = "".join(
        f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3"><title>step {x}: {y:.4f}</title></circle>' for x, y in pts
    )
    return (
        f'<div class="curve" data-metric="{html.escape(name)}"><h3>{html.escape(name)}</h3>'
        f'<svg width="{CURVE_W}" height="{CURVE_H}" role="img" aria-label="{html.escape(name)}">'
        f'<polyline fill="none" stroke="#1f6feb" stroke-width="2" points="{line}"/>{dots}'
        f'<text x="{PAD}" y="{CURVE_H - 6}" font-size="10">step {x0}</text>'
        f'<text x="{CURVE_W - PAD}" y="{CURVE_H - 6}" font-size="10" text-anchor="end">{x1}</text>'
        f'<text x="2" y="{PAD - 10}" font-size="10">{y1:.3g}</text>'
        f'<text x="2" y="{CURVE_H - PAD + 4}" font-size="10">{y0:.3g}</text></svg></div>'
    )


def _skipped(latest: dict) -> str:
    n = latest.get("skipped", 0)
    return f' <strong id="skipped">{n} unreadable shard(s) or sample(s) skipped.</strong>' if n else ""


def _image(path: Path) -> str:
    if not path.exists():
        return "<p>(no render)</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img class="render" alt="ground truth (top) and prediction (bottom)" src="data:image/png;base64,{data}">'


def write_report(out: Path, history: list[dict], latest: dict) -> Path:
    history = sorted(history, key=lambda h: h["step"])
    steps = [h["step"] for h in history]
    names = list(latest["metrics"])
    curves = "".join(svg_curve(n, steps, [h["metrics"].get(n) for h in history]) for n in names)
    rows = latest["rows"]
    cols = [k for k in rows[0] if k != "uid"] if rows else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["uid", *cols])
    body = "".join(
        "<tr>"
        + f'<td class="uid">{html.escape(r["uid"])}</td>'
        + "".join(f'<td data-value="{html.escape(str(r[c]))}">{_fmt(r[c])}</td>' for c in cols)
        + "</tr>"
        for r in rows
    )
    tag = f"step-{latest['step']:07d}"
    gallery = "".join(
        f'<h3 id="render-{html.escape(r["uid"])}">{html.escape(r["uid"])}</h3>'
        + (f'<p class="prompt">prompt: &ldquo;{html.escape(r["prompt"])}&rdquo;</p>' if r.get("prompt") else "")
        + f"{_image(out / 'renders' / tag / (r['uid'] + '.png'))}"
        for r in rows
    )
    summary = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in latest["metrics"].items())
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Evaluation report: {html.escape(latest["kind"])} step {latest["step"]}</title><style>{STYLE}</style></head><body>
<h1>Evaluation report: {html.escape(latest["kind"])} checkpoint at step {latest["step"]}</h1>
<p>{html.escape(latest["checkpoint"])} ({html.escape(latest["weights"])} weights),
{latest["objects"]} objects from data.eval_shards, {len(history)} checkpoint(s) evaluated.{_skipped(latest)}</p>
<h2>Latest checkpoint</h2><table id="summary">{summary}</table>
<h2>Metrics over checkpoints</h2><div class="curves" id="curves">{curves}</div>
<h2>Per object (click a column to sort)</h2>
<table class="sortable" id="objects"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>Ground truth (top) and prediction (bottom), same cameras</h2><div id="renders">{gallery}</div>
<script>{SORT_JS}</script></body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
