"""Where inference runs: the `device` key, bf16 autocast on CUDA, generators on their device, stage timers."""

from __future__ import annotations

import contextlib
import time

import torch

from craftsman_platform.errors import ConfigError


def resolve_device(spec: str) -> torch.device:
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`; a clear error otherwise."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"device={spec!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={spec!r}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={spec}: no CUDA device here (torch {torch.__version__}); use device=cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device={spec}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def autocast(device: torch.device):
    """bf16 autocast on CUDA (matrix products in bf16; the models keep Fourier features, posteriors and
    schedules in fp32); full fp32 on the CPU, where bf16 is slower."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def device_generator(device: torch.device, seed: int) -> torch.Generator:
    """A seeded generator on the device whose random numbers it makes (CUDA kernels refuse CPU ones)."""
    return torch.Generator(device=device).manual_seed(seed)


def query_chunk(device: torch.device) -> int:
    """Decoder queries per forward pass: larger on a GPU, where bigger batches pay."""
    return 262_144 if device.type == "cuda" else 65_536


class StageTimer:
    """Wall time per named stage, with the device synchronised at each boundary (so GPU work is
    charged to the stage that launched it)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def line(self) -> str:
        return ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())
