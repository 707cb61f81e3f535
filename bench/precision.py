"""bf16 against fp32: the same run (same data, same noise) through `craft train` in both precisions.

Every batch carries its own seed (posterior samples, FPS starts, timesteps, noise), so the two runs
see identical inputs and differ only by arithmetic. Reported over the first `--steps` steps: the
largest relative difference of the per-step loss, and of its 20-step moving average (the curve).

    python bench/precision.py --shards 'DIR/shards/*.tar' [--experiment vae_tiny] [--steps 200] [-- KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def losses(experiment: str, precision: str, run_dir: Path, steps: int, overrides: list[str]) -> np.ndarray:
    cmd = [
        sys.executable,
        "-m",
        "craftsman_platform.cli",
        "train",
        f"experiment={experiment}",
        f"run_dir={run_dir}",
        f"trainer.precision={precision}",
        f"trainer.max_steps={steps}",
        "trainer.log_every=1",
        "trainer.ckpt_every=1000000000",
        "logger=none",
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"craft train ({precision}) failed:\n{proc.stderr[-3000:]}")
    return np.array([json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()])


def moving_average(x: np.ndarray, n: int) -> np.ndarray:
    return np.convolve(x, np.ones(n) / n, mode="valid")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", required=True)
    ap.add_argument("--experiment", default="vae_tiny")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("overrides", nargs="*", help="extra `craft train` overrides (after --)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-precision-"))
    overrides = [f"data.train_shards={args.shards}", *args.overrides]
    fp32 = losses(args.experiment, "fp32", tmp / "fp32", args.steps, overrides)
    bf16 = losses(args.experiment, "bf16", tmp / "bf16", args.steps, overrides)
    step_rel = np.abs(bf16 - fp32) / np.abs(fp32)
    curve_rel = np.abs(moving_average(bf16, 20) - moving_average(fp32, 20)) / np.abs(moving_average(fp32, 20))
    print(f"{args.experiment}, {args.steps} steps ({' '.join(args.overrides) or 'experiment defaults'})")
    print(f"loss fp32 {fp32[0]:.4f} -> {fp32[-1]:.4f}, bf16 {bf16[0]:.4f} -> {bf16[-1]:.4f}")
    print(f"per-step loss: max relative difference {step_rel.max():.2%} (median {np.median(step_rel):.2%})")
    print(f"20-step moving average: max relative difference {curve_rel.max():.2%}")


if __name__ == "__main__":
    main()
