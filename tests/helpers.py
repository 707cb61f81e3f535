"""Helpers for the tests: small real mesh files, running `craft` as a user would, shared tiny configs."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from craftsman_platform.pipelines.preprocess.tiny_shards import make_tiny_shards  # noqa: F401  (the tests' shard corpus)


def write_obj(path: Path, vertices, faces) -> Path:
    """A plain OBJ writer for hand-made test files (1-based indices, no processing)."""
    lines = [f"v {x:.9g} {y:.9g} {z:.9g}" for x, y, z in np.asarray(vertices, dtype=float)]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in np.asarray(faces, dtype=int)]
    path.write_text("\n".join(lines) + "\n")
    return path


# Small preprocessing settings (seconds per object): the keys and values `craft preprocess` takes.
SMALL_PREPROCESS = {
    "geometry.watertight.resolution": 96,
    "geometry.watertight.quality_samples": 5000,
    "geometry.sample.surface": 3000,
    "geometry.sample.sharp_max": 500,
    "geometry.sample.volume": 4000,
    "geometry.sample.near": 1000,
    "render.resolution": 64,
    "render.extra_sets": 1,
}
SMALL_ARGS = [f"{k}={v}" for k, v in SMALL_PREPROCESS.items()]
# `craft pack kind=vae` of the tiny shards: 3 chunk series of vae_tiny's step sizes (tests/conftest.py: vae_pack)
PACK_VAE_ARGS = ["num_surface=1024", "num_vol=512", "num_near=512", "chunks=3", "workers=2"]


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def kill_tree(proc: subprocess.Popen) -> None:
    """kill -9 a job started with start_new_session and every process of its own local Ray at once;
    never `ray stop`, which would also kill the Ray of any other job on this machine."""
    job = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    os.killpg(proc.pid, signal.SIGKILL)
    for p in job:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(job, timeout=30)


def stop_server(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM a server started with start_new_session (its process group only), SIGKILL after timeout."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}


def craft(*args: str, timeout: float = 900, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `craft ARGS` in a subprocess (as a user would); fail with its stderr when it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "craftsman_platform.cli", *args],
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"craft {args[0]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@contextlib.contextmanager
def serve(folder: Path):
    """A real HTTP server on 127.0.0.1 serving `folder`; yields (base URL, list of requested paths)."""
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            if self.command == "GET":  # fsspec may also send a HEAD for the size
                requested.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requested
    finally:
        server.shutdown()
        server.server_close()


def manifest_rows(out: Path | str, storage_options: dict | None = None) -> list[dict]:
    """Every manifest row of an output, whichever its layout (parts, or one file of older outputs)."""
    from craftsman_platform.shapedata.manifest import read_manifest

    return read_manifest(str(out), storage_options=storage_options).to_pylist()


def shard_glob(data: Path) -> str:
    return str(data / "shards" / "*.tar")


def craft_train(*overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    return craft("train", *overrides, check=check)


def metrics(run_dir: Path) -> list[dict]:
    """A training run's metrics.jsonl rows."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(run_dir)}


TINY_VAE = dict(num_inputs=128, num_latents=16, embed_dim=8, width=64, heads=4, encoder_layers=1, decoder_layers=1)


def tiny_diffusion_config():
    """A diffusion model small enough for unit tests: 2-view CLIP of 32 px, width-64 denoiser."""
    from craftsman_platform.models.build import ModelConfig
    from craftsman_platform.models.conditioners import ClipArchitecture, ConditionerConfig
    from craftsman_platform.models.denoiser import DenoiserConfig
    from craftsman_platform.models.diffusion import DiffusionConfig
    from craftsman_platform.models.shape_vae import VAEConfig

    return ModelConfig(
        kind="diffusion",
        vae=VAEConfig(**TINY_VAE),
        denoiser=DenoiserConfig(latent_dim=8, num_latents=16, context_dim=32, width=64, heads=4, encoder_layers=1),
        conditioner=ConditionerConfig(
            pretrained=None,
            num_views=2,
            architecture=ClipArchitecture(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                patch_size=8,
                image_size=32,
            ),
        ),
        diffusion=DiffusionConfig(min_snr_gamma=5.0),
    )


def save_tiny_clip_vision(folder: Path) -> Path:
    """A small random CLIP vision tower (hidden 32, 2 layers, 32 px) written with save_pretrained."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=8, image_size=32
    )
    CLIPVisionModel(config).save_pretrained(folder)
    return folder


def train_in_background(*overrides: str, command: list[str] | None = None, env: dict | None = None) -> subprocess.Popen:
    """`craft train OVERRIDES` (or `command`) running in its own session; stdout and stderr piped."""
    return subprocess.Popen(
        command or [sys.executable, "-m", "craftsman_platform.cli", "train", *overrides],
        env=env or ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for_rows(proc: subprocess.Popen, run_dir: Path, rows: int, timeout: float = 400) -> None:
    """Until metrics.jsonl holds `rows` rows; fails if the run ends or stalls first."""
    deadline = time.time() + timeout
    while not ((run_dir / "metrics.jsonl").exists() and len(metrics(run_dir)) >= rows):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {rows} steps:\n{proc.stdout.read()[-3000:]}")
        assert time.time() < deadline, f"fewer than {rows} steps in {timeout} s"
        time.sleep(0.2)


# 1 rank x 2 micro-batches of 4 and 2 ranks x 1 micro-batch of 4 see the same 8 samples per step
# (data slots), so the loss curves agree up to float summation order: stated tolerance 1e-4 relative.
TOLERANCE = 1e-4
CURVE_STEPS = 20
# two loader workers per rank: the stream depends on their number, and the signal tests need them
TWO_RANK_ARGS = ["experiment=vae_tiny", "logger=none", "trainer.log_every=1", "data.batch_size=4", "data.num_workers=2"]


def assert_follows(curve: dict[int, float], reference: dict[int, float], steps: int) -> None:
    assert sorted(curve) == list(range(1, steps + 1)), sorted(curve)
    for step in range(1, steps + 1):
        assert curve[step] == pytest.approx(reference[step], rel=TOLERANCE), (step, curve[step], reference[step])


@contextlib.contextmanager
def offline_page(html_file: Path):
    """`html_file` open in Debian's headless Chromium with every request but file: and data: aborted
    (a self-contained page needs none)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.route(
            "**/*",
            lambda route: route.abort() if not route.request.url.startswith(("file:", "data:")) else route.continue_(),
        )
        page.goto(html_file.as_uri())
        try:
            yield page
        finally:
            browser.close()
