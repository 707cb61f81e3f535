"""`craft evaluate`: metrics, table, renders, report.html in headless Chromium, W&B offline, watch mode."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh
from helpers import ENV, craft, offline_page, shard_glob

from craftsman_platform.evaluation.metrics import surface_metrics

CHROMIUM = "/usr/bin/chromium"


def history(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]


def test_surface_metrics_on_known_shapes():
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    pts, idx = trimesh.sample.sample_surface(sphere, 20000, seed=0)
    gt = (pts.astype(np.float32), sphere.face_normals[idx].astype(np.float32))
    same = surface_metrics(gt, gt)
    assert same["chamfer"] == 0 and same["fscore@0.01"] == 1 and same["normal_consistency"] == pytest.approx(1)
    bigger = trimesh.creation.icosphere(subdivisions=5, radius=0.53)
    p2, i2 = trimesh.sample.sample_surface(bigger, 20000, seed=1)
    off = surface_metrics((p2.astype(np.float32), bigger.face_normals[i2].astype(np.float32)), gt)
    assert off["chamfer"] == pytest.approx(0.06, abs=0.01)  # 0.03 each way
    assert off["fscore@0.02"] < 0.2 < off["normal_consistency"]


SMALL_EVAL = ("data.max_objects=3", "depth=6", "surface_samples=20000")  # 3 objects, coarse: fast


@pytest.fixture(scope="module")
def vae_eval(vae_run, tiny_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "vae"
    craft(
        "evaluate",
        f"checkpoint={vae_run}",
        f"data.eval_shards={shard_glob(tiny_shards)}",
        f"output_dir={out}",
        *SMALL_EVAL,
    )
    return out


def test_evaluate_vae_writes_metrics_table_renders_and_wandb(vae_eval):
    result = json.loads((vae_eval / "metrics.json").read_text())
    assert result["kind"] == "vae" and result["weights"] == "ema" and result["objects"] == 3 and result["step"] == 1000
    m = result["metrics"]
    assert set(m) >= {"iou_vol", "iou_near", "chamfer", "fscore@0.01", "fscore@0.02", "normal_consistency"}
    assert m["iou_vol"] > 0.8 and 0 < m["chamfer"] < 0.2 and m["normal_consistency"] > 0.5
    rows = list(csv.DictReader(open(vae_eval / "objects.csv")))
    assert len(rows) == 3 and all(float(r["iou_vol"]) > 0 for r in rows)
    for r in rows:
        assert (vae_eval / "renders" / "step-0001000" / f"{r['uid']}.png").exists()
        assert (vae_eval / "meshes" / "step-0001000" / f"{r['uid']}.glb").exists()
    runs = list((vae_eval / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_objects_scored_together_score_as_one_at_a_time(vae_run, vae_eval, tiny_shards, tmp_path):
    """vae_eval scored its 3 objects in one batch (batch_size 8); here they go one by one."""
    out = tmp_path / "single"
    craft(
        "evaluate",
        f"checkpoint={vae_run}",
        f"data.eval_shards={shard_glob(tiny_shards)}",
        f"output_dir={out}",
        *SMALL_EVAL,
        "batch_size=1",
        "logger=none",
        "device=cpu",
    )
    batched, single = (list(csv.DictReader(open(d / "objects.csv"))) for d in (vae_eval, out))
    assert [r["uid"] for r in batched] == [r["uid"] for r in single]
    for a, b in zip(batched, single):
        assert a["faces"] == b["faces"]
        for key in ("iou_vol", "iou_near", "chamfer", "fscore@0.02"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-6), key


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium (make setup installs it)")
def test_report_opens_in_headless_chromium(vae_eval):
    with offline_page(vae_eval / "report.html") as page:  # self-contained: any network request fails it
        assert "step 1000" in page.title()
        assert page.locator("#objects tbody tr").count() == 3
        # one checkpoint: each metric shows its value (no lone dot on a made-up axis)
        assert page.locator("#curves .curve.single .value").count() >= 6 and page.locator("#curves svg").count() == 0
        widths = page.eval_on_selector_all("img.render", "imgs => imgs.map(i => i.naturalWidth)")
        assert len(widths) == 3 and all(w > 0 for w in widths)  # renders decoded
        col = [h.inner_text().strip() for h in page.locator("#objects thead th").all()].index("iou_vol")
        header = page.locator("#objects thead th").nth(col)

        def column() -> list[float]:
            return [
                float(c.get_attribute("data-value"))
                for c in page.locator(f"#objects tbody tr td:nth-child({col + 1})").all()
            ]

        header.click()
        assert column() == sorted(column())
        header.click()
        assert column() == sorted(column(), reverse=True)
        page.screenshot(path=str(vae_eval / "report.png"), full_page=True)
    assert (vae_eval / "report.png").stat().st_size > 10_000


def test_watch_mode_evaluates_each_new_checkpoint_once(vae_run, tiny_shards, tmp_path):
    """A run dir whose checkpoints appear one by one (as a trainer writes them: tmp dir, then rename)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(vae_run / "config.yaml", run / "config.yaml")
    ckpts = sorted((vae_run / "checkpoints").glob("step-*"))
    assert len(ckpts) == 3

    def publish(ckpt: Path) -> None:
        shutil.copytree(ckpt, run / "checkpoints" / f".tmp-{ckpt.name}")
        (run / "checkpoints" / f".tmp-{ckpt.name}").rename(run / "checkpoints" / ckpt.name)

    publish(ckpts[0])
    out = tmp_path / "eval"
    args = [
        "watch=true",
        f"run_dir={run}",
        f"data.eval_shards={shard_glob(tiny_shards)}",
        f"output_dir={out}",
        "data.max_objects=2",
        "depth=5",
        "surface_samples=5000",
        "poll_s=0.5",
        "idle_timeout_s=120",
        "logger=none",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "craftsman_platform.cli", "evaluate", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for i, ckpt in enumerate(ckpts[1:], start=1):
        deadline = time.time() + 120
        while not ((out / "history.jsonl").exists() and len(history(out)) == i):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.3)
        publish(ckpt)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    assert [h["step"] for h in history(out)] == [800, 900, 1000]  # each once, in order; ends at max_steps
    report = (out / "report.html").read_text()
    assert report.count("<circle") == 3 * len(history(out)[0]["metrics"])  # one point per checkpoint per metric
    craft("evaluate", *args)  # nothing new: nothing evaluated again
    assert len(history(out)) == 3


def test_evaluate_diffusion_generates_from_held_out_views(diffusion_run, tiny_shards, tmp_path):
    out = tmp_path / "eval"
    proc = craft(
        "evaluate",
        f"checkpoint={diffusion_run}",
        f"data.eval_shards={shard_glob(tiny_shards)}",
        f"output_dir={out}",
        "data.max_objects=2",
        "depth=5",
        "surface_samples=5000",
        "steps=5",
        "logger=none",
    )
    result = json.loads((out / "metrics.json").read_text())
    assert result["kind"] == "diffusion" and result["objects"] == 2 and result["step"] == 40
    assert 0 <= result["metrics"]["iou_vol"] <= 1 and "chamfer" in result["metrics"]
    assert "report:" in proc.stdout
