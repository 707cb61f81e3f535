"""OUT/report.html: one self-contained page (no network, no external files) of a preprocessing output.

Counts by status and reason with examples, histograms (inline SVG), LVIS categories, and a gallery
whose cards carry their manifest row: a few lines of inline JavaScript sort and filter them and
open one object's detail (its views, its point cloud, its row).
"""

from __future__ import annotations

import base64
import html
import json
import math

from craftsman_platform.pipelines.report.gather import GALLERY_COLUMNS

HIST_W, HIST_H = 300, 120

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222} h1{font-size:22px} h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;font-size:13px} th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3} td.n{text-align:right} code{font-size:12px}
.hists{display:flex;flex-wrap:wrap;gap:14px} .hist{border:1px solid #ddd;padding:6px}
.hist h3{font-size:13px;margin:0 0 4px}
.controls{margin:10px 0;display:flex;gap:10px;flex-wrap:wrap;font-size:13px}
.gallery{display:flex;flex-wrap:wrap;gap:8px}
.card{width:112px;border:1px solid #ddd;padding:4px;font-size:11px;cursor:pointer;overflow:hidden}
.card.failed{background:#fff3f3} .card img{width:96px;height:96px;object-fit:contain;display:block}
.card .nopic{width:96px;height:96px;display:flex;align-items:center;justify-content:center;color:#a00}
#detail{position:fixed;top:5%;left:10%;right:10%;max-height:85%;overflow:auto;background:#fff;border:2px solid #444;
padding:14px;display:none} #detail img{border:1px solid #eee;margin:2px}
"""

SCRIPT = """
const cards = [...document.querySelectorAll('.card')];
const rowOf = c => JSON.parse(c.dataset.row);
function apply() {
  const status = document.getElementById('f-status').value, reason = document.getElementById('f-reason').value;
  const cat = document.getElementById('f-category').value, text = document.getElementById('f-uid').value.toLowerCase();
  const maxc = parseFloat(document.getElementById('f-chamfer').value);
  const [key, dir] = document.getElementById('sort').value.split(':');
  let shown = 0;
  cards.forEach(c => { const r = rowOf(c);
    const ok = (!status || r.status === status) && (!reason || r.reason === reason) && (!cat || r.lvis_category === cat)
      && (!text || r.uid.toLowerCase().includes(text)) && (isNaN(maxc) || (r.chamfer ?? Infinity) <= maxc);
    c.style.display = ok ? '' : 'none'; shown += ok; });
  const val = c => { const v = rowOf(c)[key]; return v === null || v === undefined ? -Infinity : v; };
  cards.slice().sort((a, b) => (val(a) > val(b) ? 1 : val(a) < val(b) ? -1 : 0) * (dir === 'desc' ? -1 : 1))
    .forEach(c => c.parentNode.appendChild(c));
  document.getElementById('shown').textContent = shown;
}
document.querySelectorAll('.controls select, .controls input').forEach(e => e.addEventListener('input', apply));
cards.forEach(c => c.addEventListener('click', () => {
  const d = document.getElementById('detail'), r = rowOf(c), pics = JSON.parse(c.dataset.pics || '{}');
  const rows = Object.entries(r).map(([k, v]) => `<tr><th>${k}</th><td>${v === null ? '' : String(v)
    .replace(/&/g, '&amp;').replace(/</g, '&lt;')}</td></tr>`).join('');
  const imgs = (pics.views || []).map(v => `<img src="data:image/png;base64,${v}">`).join('');
  const cloud = pics.cloud ? `<img class="cloud" src="data:image/png;base64,${pics.cloud}">` : '';
  d.innerHTML = `<button id="close">close</button><h2>${r.uid}</h2><div class="views">${imgs}${cloud}</div>
    <table class="row">${rows}</table>`;
  d.style.display = 'block';
  document.getElementById('close').addEventListener('click', () => { d.style.display = 'none'; });
}));
apply();
"""


def _e(v) -> str:
    return html.escape(str(v))


def _b64(png: bytes | None) -> str | None:
    return base64.b64encode(png).decode() if png else None


def svg_histogram(name: str, hist: dict | None) -> str:
    if hist is None:
        return f'<div class="hist" data-column="{_e(name)}"><h3>{_e(name)}</h3><p>no values</p></div>'
    counts, edges = hist["counts"], hist["edges"]
    top, width = max(counts) or 1, HIST_W / len(counts)
    bars = "".join(
        f'<rect x="{i * width:.1f}" y="{HIST_H - HIST_H * c / top:.1f}" width="{max(width - 1, 1):.1f}" '
        f'height="{HIST_H * c / top:.1f}" fill="#4a78b5">'
        f"<title>{edges[i]:.4g} to {edges[i + 1]:.4g}: {c}</title></rect>"
        for i, c in enumerate(counts)
    )
    axis = f'<text x="0" y="{HIST_H + 14}" font-size="10">{edges[0]:.4g}</text>'
    axis += f'<text x="{HIST_W}" y="{HIST_H + 14}" font-size="10" text-anchor="end">{edges[-1]:.4g}</text>'
    return (
        f'<div class="hist" data-column="{_e(name)}"><h3>{_e(name)} (n={hist["n"]}, median {hist["median"]:.4g})</h3>'
        f'<svg width="{HIST_W}" height="{HIST_H + 18}">{bars}{axis}</svg></div>'
    )


def _json_value(v):
    if v is None or isinstance(v, str):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return None if math.isnan(f) else (int(f) if f.is_integer() and abs(f) < 2**53 else f)


def _card(row: dict, pics: dict | None) -> str:
    failed = row["status"] != "ok"
    thumb = _b64((pics or {}).get("thumb"))
    picture = (
        f'<img src="data:image/png;base64,{thumb}" alt="">'
        if thumb
        else f'<div class="nopic">{_e(row["reason"] or "no picture")}</div>'
    )
    detail = {"views": [_b64(v) for v in (pics or {}).get("views", [])], "cloud": _b64((pics or {}).get("cloud"))}
    label = _e(row["reason"]) if failed else (f"chamfer {row['chamfer']:.4f}" if row.get("chamfer") is not None else "")
    caption = f'<div class="caption">{_e(row["caption"][:80])}</div>' if row.get("caption") else ""
    return (
        f'<div class="card{" failed" if failed else ""}" data-uid="{_e(row["uid"])}" data-row="{_e(json.dumps(row))}" '
        f'data-pics="{_e(json.dumps(detail))}">{picture}<div class="uid">{_e(row["uid"][:28])}</div>'
        f'<div class="label">{label}</div>{caption}</div>'
    )


def _captions_line(captions: dict) -> str:
    """How many good objects have captions (text-conditioned training needs them); nothing without captions."""
    if not captions.get("with"):
        return ""
    return (f'<p id="captions">{captions["with"]} ok objects have captions, <b>{captions["without"]} have none</b> '
            "(source.captions, or craft pack captions=FILE).</p>")  # fmt: skip


def _options(element_id: str, label: str, values) -> str:
    opts = "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)
    return f'<label>{label} <select id="{element_id}"><option value="">all</option>{opts}</select></label>'


def render(
    title: str, stats: dict, hists: dict[str, dict | None], gallery: list[dict], pictures: dict, bound: int
) -> str:
    """The whole page. `gallery`: manifest rows (GALLERY_COLUMNS) in the order to show first."""
    status_rows = "".join(f'<tr><td>{_e(k)}</td><td class="n">{v}</td></tr>' for k, v in stats["status"].items())
    reason_rows = "".join(
        f'<tr class="reason" data-reason="{_e(k)}"><td>{_e(k)}</td><td class="n">{v["count"]}</td><td>'
        + "<br>".join(f"<code>{_e(x['uid'])}</code>: {_e(x['message'][:200])}" for x in v["examples"])
        + "</td></tr>"
        for k, v in sorted(stats["reasons"].items(), key=lambda kv: -kv[1]["count"])
    )
    categories = "".join(
        f'<tr><td>{_e(k)}</td><td class="n">{v["objects"]}</td><td class="n">{v["ok"]}</td></tr>'
        for k, v in sorted(stats["categories"].items(), key=lambda kv: kv[1]["ok"])
    )
    rows = [{k: _json_value(r.get(k)) for k in GALLERY_COLUMNS} for r in gallery]
    cards = "".join(_card(r, pictures.get(r["uid"])) for r in rows)
    sorts = [("chamfer:desc", "Chamfer, worst first"), ("chamfer:asc", "Chamfer, best first"),
             ("sign_agreement:asc", "sign agreement, lowest first"), ("parts_lost:desc", "parts lost, most first"),
             ("n_faces:desc", "faces, most first"), ("uid:asc", "uid")]  # fmt: skip
    controls = (
        '<div class="controls"><label>sort <select id="sort">'
        + "".join(f'<option value="{k}">{_e(t)}</option>' for k, t in sorts)
        + "</select></label>"
        + _options("f-status", "status", sorted({r["status"] for r in rows}))
        + _options("f-reason", "reason", sorted({r["reason"] for r in rows if r["reason"]}))
        + _options("f-category", "category", sorted({r["lvis_category"] for r in rows if r["lvis_category"]}))
        + '<label>uid <input id="f-uid" size="14"></label>'
        + '<label>Chamfer at most <input id="f-chamfer" size="6"></label>'
        + f'<span><span id="shown">{len(rows)}</span> of {len(rows)} shown</span></div>'
    )
    origins = "".join(
        f'<tr><td>{_e(k)}</td><td class="n">{v["objects"]}</td><td class="n">{v["ok"]}</td>'
        f'<td class="n">{v["failed"]}</td><td class="n">{v["duplicate"]}</td></tr>'
        for k, v in sorted(stats.get("origins", {}).items())
    )
    origin_table = (
        '<h2>By source</h2><table id="by-origin"><tr><th>source</th><th>listed</th><th>ok</th><th>failed</th>'
        f"<th>duplicates (same content as a kept object: not processed)</th></tr>{origins}</table>"
        if origins
        else ""
    )
    category_table = (
        f"<h2>LVIS categories</h2><table><tr><th>category</th><th>objects</th><th>ok</th></tr>{categories}</table>"
        if categories
        else ""
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{_e(title)}</title><style>{STYLE}</style></head>
<body><h1>{_e(title)}</h1>
<p id="total">{stats["objects"]} objects in the manifest.</p>{_captions_line(stats.get("captions") or {})}
<h2>By status</h2><table id="by-status"><tr><th>status</th><th>objects</th></tr>{status_rows}</table>
<h2>Failures by reason</h2><table id="by-reason">
<tr><th>reason</th><th>objects</th><th>examples</th></tr>{reason_rows}</table>
{origin_table}{category_table}
<h2>Distributions</h2><div class="hists">{"".join(svg_histogram(k, h) for k, h in hists.items())}</div>
<h2>Gallery</h2><p>{len(rows)} objects (at most {bound} with pictures: the worst by Chamfer first, then a spread of the
rest; failed objects have no picture). Click one for its views, point cloud and manifest row.</p>
{controls}<div class="gallery">{cards}</div><div id="detail"></div>
<script>{SCRIPT}</script></body></html>"""
