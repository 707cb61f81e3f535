"""OUT/report.html of a real preprocessing run (three meshes and one broken file), in headless
Chromium; the gallery's bound and order on a synthetic manifest; the W&B tables offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import SMALL_ARGS, craft, offline_page

from craftsman_platform.pipelines.report.gather import pick_gallery, uid_hash
from craftsman_platform.shapedata.manifest import manifest_columns
from craftsman_platform.shapedata.manifest import read_manifest as read_columns

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def output(tmp_path_factory, pybullet_dir) -> tuple[Path, str]:
    src = tmp_path_factory.mktemp("meshes")
    for i in (0, 6, 12):
        shutil.copy(pybullet_dir / f"random_urdfs/{i:03d}/{i:03d}.obj", src / f"{i:03d}.obj")
    (src / "broken.obj").write_text("this is not a mesh\n")
    out = tmp_path_factory.mktemp("report") / "out"
    res = craft("preprocess", f"source.path={src}", f"output_dir={out}", *SMALL_ARGS)
    return out, res.stdout


def test_preprocess_writes_the_report_and_craft_report_rebuilds_it_with_wandb_tables(output):
    out, stdout = output
    assert f"report: {out / 'report.html'} (4 objects, 3 with pictures" in stdout
    (out / "report.html").unlink()
    res = craft("report", f"output_dir={out}", "gallery=2", "logger=wandb")
    assert "(4 objects, 2 with pictures" in res.stdout and (out / "report.html").exists()
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    craft("report", f"output_dir={out}")  # back to the default gallery for the page test


def test_the_gallery_is_bounded_worst_first_and_stable():
    n = 10_000
    rng = np.random.default_rng(0)
    chamfer = rng.random(n)
    status = np.array(["ok"] * (n - 100) + ["failed"] * 100, dtype=object)
    cols = {
        "uid_hash": uid_hash([f"obj-{i}" for i in range(n)]),
        "ok": status == "ok",
        "failed": status == "failed",
        "chamfer": chamfer,
    }
    picks = pick_gallery(cols, 40)
    ok_picks = [i for i in picks if status[i] == "ok"]
    assert len(ok_picks) == 40 and len([i for i in picks if i >= n - 100]) == 10  # a quarter for failures
    worst = np.argsort(-chamfer[: n - 100])[:20]
    assert ok_picks[:20] == [int(i) for i in worst]
    assert pick_gallery(cols, 40) == picks


def test_an_older_manifest_without_new_columns_still_reports(output, tmp_path):
    out, _ = output
    old = tmp_path / "old"  # an earlier version's layout: one manifest.parquet, without the newer columns
    shutil.copytree(out, old, ignore=shutil.ignore_patterns("wandb", "report.html", "manifest"))
    table = read_columns(str(out))
    newer = ("n_faces", "lvis_category", "origin", "listed_sha256", "duplicate_of", "file_type")
    pq.write_table(table.drop([c for c in newer if c in table.column_names]), old / "manifest.parquet")
    res = craft("report", f"output_dir={old}")
    assert "(4 objects, 3 with pictures" in res.stdout
    assert "n_faces" not in manifest_columns(str(old))


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium (make setup installs it)")
def test_the_report_renders_filters_and_shows_a_failure_in_headless_chromium(output):
    out, _ = output
    with offline_page(out / "report.html") as page:  # self-contained: any network request fails it
        assert page.locator("#total").inner_text().startswith("4 objects")
        assert "no_triangles" in page.locator("#by-reason tr.reason").first.inner_text()
        assert page.locator(".hist[data-column=chamfer] svg rect").count() >= 1
        cards = page.locator(".gallery .card")
        assert cards.count() == 4
        widths = page.eval_on_selector_all(".card img", "imgs => imgs.map(i => i.naturalWidth)")
        assert len(widths) == 3 and all(w > 0 for w in widths)
        # worst Chamfer first
        shown = [json.loads(c.get_attribute("data-row")) for c in cards.all()]
        chamfers = [r["chamfer"] for r in shown if r["status"] == "ok"]
        assert chamfers == sorted(chamfers, reverse=True)
        page.select_option("#f-status", "failed")
        assert page.locator("#shown").inner_text() == "1"
        failed = page.locator(".gallery .card:visible")
        assert failed.count() == 1 and "no_triangles" in failed.inner_text()
        failed.click()
        assert "no triangle geometry found" in page.locator("#detail").inner_text()  # its manifest message
        page.click("#close")
        page.select_option("#f-status", "ok")
        page.locator(".gallery .card:visible").first.click()
        views = page.eval_on_selector_all("#detail img", "imgs => imgs.map(i => i.naturalWidth)")
        assert len(views) == 5 and all(w > 0 for w in views)  # one view set and the point cloud
        assert "chamfer" in page.locator("#detail table.row").inner_text()
