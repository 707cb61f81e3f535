"""Nothing lost, nothing silent, nothing executed: each probe of the reliability review as a test,
with real files, real processes and real kills (README, "Reliability")."""

from __future__ import annotations

import glob
import http.server
import json
import os
import pickle
import shutil
import signal
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import webdataset as wds
from helpers import ENV, craft, manifest_rows, shard_glob

from craftsman_platform.pipelines.preprocess.config import SourceConfig
from craftsman_platform.pipelines.preprocess.sources import list_source

FAST = [
    "geometry.watertight.resolution=64",
    "geometry.watertight.quality_samples=1000",
    "geometry.sample.surface=500",
    "geometry.sample.sharp_max=50",
    "geometry.sample.volume=1000",
    "geometry.sample.near=500",
    "render.resolution=32",
    "render.extra_sets=0",
]


def start_craft(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "craftsman_platform.cli", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def manifest(out: Path) -> list[dict]:
    return manifest_rows(out)


def shard_keys(out: Path) -> list[str]:
    return [s["__key__"] for s in wds.WebDataset(sorted(glob.glob(str(out / "shards" / "*.tar"))), shardshuffle=False)]


@pytest.fixture()
def meshes(tmp_path, pybullet_dir) -> Path:
    folder = tmp_path / "meshes"
    for i in range(4):
        (folder / f"{i:03d}").mkdir(parents=True)
        shutil.copy(pybullet_dir / f"random_urdfs/{i:03d}/{i:03d}.obj", folder / f"{i:03d}" / "part.obj")
    return folder


# ----------------------------------------------------------------------------------------------
# craft preprocess
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_writer_per_output_and_a_manifest_that_never_shrinks(meshes, tmp_path):
    out = tmp_path / "out"
    first = start_craft("preprocess", f"source.path={meshes}", f"output_dir={out}", "workers=1", *FAST)
    deadline = time.time() + 120
    while not (out / ".lock").exists():
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.1)
    holder = json.loads((out / ".lock").read_text())
    second = craft("preprocess", f"source.path={meshes}", f"output_dir={out}", "workers=1", *FAST, check=False)
    assert second.returncode == 2 and f"pid {holder['pid']}" in second.stderr and len(second.stderr.splitlines()) == 1
    first.send_signal(signal.SIGKILL)  # a stale lock behind: its holder is gone
    first.wait()
    third = craft("preprocess", f"source.path={meshes}", f"output_dir={out}", "workers=1", *FAST)
    assert "taking over the stale lock" in third.stdout + third.stderr
    assert not (out / ".lock").exists()
    keys = shard_keys(out)
    assert len(keys) == len(set(keys)) == 4 and {r["uid"] for r in manifest(out)} == set(keys)  # exactly once
    # a resume over a narrower listing keeps every row: the manifest describes the shards
    craft("preprocess", f"source.path={meshes}", f"output_dir={out}", "source.limit=1", *FAST)
    assert len(manifest(out)) == 4


def test_bad_configs_fail_before_anything_is_written(meshes, tmp_path):
    out = tmp_path / "out"
    for args, message in (
        (["workers=0"], "workers must be >= 1"),
        ([f"source.path={tmp_path / 'nowhere'}"], "does not exist"),
        (["wokers=2"], "wokers"),
    ):
        res = craft("preprocess", f"source.path={meshes}", f"output_dir={out}", *args, check=False)
        assert res.returncode == 2 and message in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("craft preprocess: error: ")
        assert not out.exists()


@pytest.mark.slow
def test_runs_that_find_or_make_nothing_do_not_exit_0(tmp_path, assimp_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = craft("preprocess", f"source.path={empty}", f"output_dir={tmp_path / 'a'}", check=False)
    assert res.returncode == 1 and "no mesh files found" in res.stderr and not (tmp_path / "a").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(assimp_dir / "OBJ/point_cloud.obj", bad / "points.obj")
    (bad / "text.obj").write_text("this is not a mesh\n")
    out = tmp_path / "b"
    res = craft("preprocess", f"source.path={bad}", f"output_dir={out}", *FAST, check=False)
    assert res.returncode == 1 and "none of the 2 objects" in res.stderr
    assert {r["reason"] for r in manifest(out)} <= {"no_triangles", "unreadable"} and (out / "summary.json").exists()


class _Server(http.server.BaseHTTPRequestHandler):
    mesh = b""

    def do_GET(self):
        code = {"/ok.obj": 200, "/busy.obj": 503}.get(self.path, 404)
        self.send_response(code)
        self.end_headers()
        if code == 200:
            self.wfile.write(self.mesh)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_network_failures_are_retried_and_only_not_found_is_final(tmp_path, pybullet_dir):
    _Server.mesh = (pybullet_dir / "random_urdfs/000/000.obj").read_bytes()
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    listing = tmp_path / "list.txt"
    listing.write_text(
        f"{base}/ok.obj\n{base}/gone.obj\n{base}/busy.obj\nhttp://no-such-host.invalid/x.obj\n"
        "http://127.0.0.1:9/refused.obj\n"
    )
    out = tmp_path / "out"
    try:
        craft("preprocess", f"source.path={listing}", f"output_dir={out}", "max_retries=0", *FAST)
        reasons = {r["source"].rsplit("/", 1)[-1]: r["reason"] for r in manifest(out)}
        assert reasons == {
            "ok.obj": None,
            "gone.obj": "not_found",
            "busy.obj": "fetch_failed",
            "x.obj": "fetch_failed",
            "refused.obj": "fetch_failed",
        }
        again = craft("preprocess", f"source.path={listing}", f"output_dir={out}", "max_retries=0", *FAST, check=False)
        assert "5 objects listed: 2 already done, 3 to process" in again.stdout  # transient failures retried on a rerun
        assert again.returncode == 1 and "none of the 3 objects this run processed succeeded" in again.stderr
    finally:
        server.shutdown()


def test_list_files_give_readable_uids(tmp_path):
    (tmp_path / "data" / "chairs").mkdir(parents=True)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'data/chairs/ikea.obj'}\ndata/lamp.glb\nhttps://example.com/a/b/chair.glb\n")
    uids = [r["uid"] for b in list_source(SourceConfig(kind="list", path=str(listing))).batches for r in b.to_pylist()]
    assert uids[0].startswith("chairs_ikea-") and uids[1].startswith("lamp-")  # relative to the common folder
    assert uids[2].startswith("https_example_com_a_b_chair-")  # URLs: the whole name


def test_local_ray_listens_on_loopback_only():
    from craftsman_platform.raycluster import RayConfig, init_ray

    ray = init_ray(RayConfig(), num_cpus=1)
    try:
        assert ray.get(ray.remote(lambda: 1).remote()) == 1
        ours = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
        sockets = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in ours]
        assert len(sockets) >= 4, sockets  # GCS, raylet, agents, workers
        assert all(c.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1") for c in sockets), sockets
    finally:
        ray.shutdown()


# ----------------------------------------------------------------------------------------------
# craft train
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_run(tiny_shards, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run = tmp_path_factory.mktemp("reliable") / "run"
    proc = craft(
        "train",
        "experiment=vae_tiny",
        f"data.train_shards={shard_glob(tiny_shards)}",
        f"run_dir={run}",
        "trainer.max_steps=4",
        "trainer.ckpt_every=2",
        "trainer.log_every=1",
        "logger=none",
        "data.batch_size=2",
    )
    return run, proc


def test_train_console_shows_progress_not_library_chatter(small_run):
    _, proc = small_run
    out = proc.stdout + proc.stderr
    assert "step 4/4 | loss" in out and "samples/s | data" in out and "ETA" in out
    assert "train: finished at step 4" in out
    for noise in ("gcc ", "built successfully", "Token authentication", "[Torch]", "DeepSpeed info"):
        assert noise not in out, noise


def _payload(marker: Path, size: int) -> bytes:
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    data = pickle.dumps(Evil(), protocol=2)
    return data + b"\0" * max(0, size - len(data))  # the recorded size: only loading can tell


def test_planted_pickles_never_run_and_damaged_checkpoints_fall_back(small_run, tiny_shards, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run[0], run)
    marker = tmp_path / "PAYLOAD-RAN"
    step4 = run / "checkpoints" / "step-0000004"
    planted = [p for p in step4.rglob("*") if p.is_file() and p.suffix in (".pt", ".safetensors")]
    assert any(p.parent.name == "ds" for p in planted) and any(p.name == "weights.safetensors" for p in planted)
    for path in planted:
        path.write_bytes(_payload(marker, path.stat().st_size))
    common = [
        "experiment=vae_tiny",
        f"data.train_shards={shard_glob(tiny_shards)}",
        f"run_dir={run}",
        "trainer.ckpt_every=2",
        "trainer.log_every=1",
        "logger=none",
        "data.batch_size=2",
    ]
    resumed = craft("train", *common, "trainer.max_steps=6")  # a longer run: a change a resume may make
    out = resumed.stdout + resumed.stderr
    assert "step-0000004 is unreadable" in out and "resumed from" in out and "step-0000002 at step 2" in out
    assert not marker.exists()
    # a truncated DeepSpeed file in the newest checkpoint: named, then the previous one (the rewritten step 4)
    ds_file = max((run / "checkpoints" / "step-0000006" / "ds").glob("*.pt"), key=lambda p: p.stat().st_size)
    ds_file.write_bytes(ds_file.read_bytes()[: ds_file.stat().st_size // 2])
    again = craft("train", *common, "trainer.max_steps=8")
    assert "step-0000006 is unreadable" in again.stdout + again.stderr and "bytes" in again.stdout + again.stderr
    assert "at step 4" in again.stdout + again.stderr
    # every checkpoint damaged: an error, not a silent fresh start; the payload still never runs
    for path in (run / "checkpoints").rglob("*.safetensors"):
        path.write_bytes(_payload(marker, path.stat().st_size))
    for path in (run / "checkpoints").rglob("*.pt"):
        path.write_bytes(_payload(marker, path.stat().st_size))
    failed = craft("train", *common, "trainer.max_steps=10", check=False)
    assert failed.returncode == 2 and "no readable checkpoint" in failed.stderr and not marker.exists()


def test_resume_with_a_changed_config_is_refused_and_the_run_config_kept(small_run, tiny_shards):
    run = small_run[0]
    before = (run / "config.yaml").read_bytes()
    res = craft(
        "train",
        "experiment=vae_tiny",
        f"data.train_shards={shard_glob(tiny_shards)}",
        f"run_dir={run}",
        "trainer.max_steps=4",
        "trainer.ckpt_every=2",
        "logger=none",
        "data.batch_size=4",
        "model.vae.width=64",
        check=False,
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "model.vae.width=64 (the run has 128)" in res.stderr and "data.batch_size=4 (the run has 2)" in res.stderr
    assert (run / "config.yaml").read_bytes() == before


def test_read_only_outputs_are_refused_naming_the_key(tmp_path, meshes, tiny_shards, small_run):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], capture_output=True).returncode:
        pytest.skip("no bind mounts here (needs root in a mount namespace)")
    try:
        for args, key in (
            (["preprocess", f"source.path={meshes}", f"output_dir={ro / 'out'}"], "output_dir"),
            (
                [
                    "train",
                    "experiment=vae_tiny",
                    f"data.train_shards={shard_glob(tiny_shards)}",
                    f"run_dir={ro / 'run'}",
                ],
                "run_dir",
            ),
            (
                [
                    "evaluate",
                    f"checkpoint={small_run[0]}",
                    f"data.eval_shards={shard_glob(tiny_shards)}",
                    f"output_dir={ro / 'eval'}",
                ],
                "output_dir",
            ),
        ):
            res = craft(*args, check=False)
            assert res.returncode == 2 and f"{key}={ro}" in res.stderr and "not writable" in res.stderr, res.stderr
    finally:
        subprocess.run(["umount", str(ro)])


# ----------------------------------------------------------------------------------------------
# craft evaluate, the console
# ----------------------------------------------------------------------------------------------
def test_evaluation_skips_unreadable_shards_and_fails_cleanly(small_run, tiny_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards / "shards", shards)
    broken = sorted(shards.glob("*.tar"))[0]
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 3])
    out = tmp_path / "eval"
    res = craft(
        "evaluate",
        f"checkpoint={small_run[0]}",
        f"data.eval_shards={shards}/*.tar",
        f"output_dir={out}",
        "depth=4",
        "surface_samples=2000",
        "logger=none",
        "data.max_objects=3",
    )
    result = json.loads((out / "metrics.json").read_text())
    assert result["skipped"] >= 1 and result["objects"] == 3 and "unreadable skipped" in res.stdout
    assert 'id="skipped"' in (out / "report.html").read_text()
    missing = craft(
        "evaluate",
        "watch=true",
        f"run_dir={tmp_path / 'no-run'}",
        f"data.eval_shards={shards}/*.tar",
        f"output_dir={tmp_path / 'w'}",
        check=False,
    )
    assert missing.returncode == 2 and "no-run does not exist" in missing.stderr and "report:" not in missing.stdout
    assert not (tmp_path / "w").exists()
    for shard in shards.glob("*.tar"):
        shard.write_bytes(b"not a tar")
    nothing = craft(
        "evaluate",
        f"checkpoint={small_run[0]}",
        f"data.eval_shards={shards}/*.tar",
        f"output_dir={tmp_path / 'n'}",
        "logger=none",
        check=False,
    )
    assert nothing.returncode == 1 and "no readable object" in nothing.stderr and "report:" not in nothing.stdout
    assert not (tmp_path / "n").exists()  # a failed run leaves no empty output dir
    verbose = craft(
        "evaluate",
        f"checkpoint={small_run[0]}",
        f"data.eval_shards={shards}/*.tar",
        f"output_dir={tmp_path / 'n'}",
        "logger=none",
        "--verbose",
        check=False,
    )
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr


@pytest.mark.parametrize(
    "sub, own, foreign",
    [
        ("train", ["trainer.max_steps=1000", "experiment: diffusion_craftsman", "launcher: local, ray, torchrun"], []),
        (
            "evaluate",
            ["batch_size=8", "device=auto", "depth=7", "data.eval_shards=??? (required)"],
            ["deepspeed", "launcher"],
        ),
    ],
)
def test_help_explains_the_subcommands_own_keys(sub, own, foreign):
    res = craft(sub, "--help")
    assert res.returncode == 0 and "Examples:" in res.stdout and f"craft {sub}" in res.stdout
    for text in own:
        assert text in res.stdout, text
    for text in foreign:
        assert text not in res.stdout, text
    assert "powered by Hydra" not in res.stdout
