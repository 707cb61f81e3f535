"""The geometry core for one object: load -> watertight -> sample, with timings and a record."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from craftsman_platform.geometry.config import GeometryConfig
from craftsman_platform.geometry.mesh_io import LoadedMesh, MeshRejected, load_mesh
from craftsman_platform.geometry.sampling import Samples, sample_object
from craftsman_platform.geometry.watertight import WatertightResult, make_watertight


@dataclass
class GeometryOutput:
    uid: str
    loaded: LoadedMesh
    watertight: WatertightResult
    samples: Samples
    timings: dict = field(default_factory=dict)  # stage -> seconds: load, watertight, sample

    def record(self) -> dict:
        """Flat, JSON-able per-object quality record."""
        return {
            "uid": self.uid,
            "faces": int(self.loaded.stats["faces"]),
            "parts": int(self.loaded.stats["parts"]),
            **{f"watertight_{k}": v for k, v in self.watertight.record().items()},
            "sign_agreement": self.samples.sign_agreement,
            "n_surface": len(self.samples.surface),
            "n_sharp": len(self.samples.sharp),
            "n_vol": len(self.samples.vol),
            "n_near": len(self.samples.near),
            **{f"time_{k}": v for k, v in self.timings.items()},
        }


def process_mesh(path: str | Path, uid: str, cfg: GeometryConfig) -> GeometryOutput:
    """Run the whole geometry core on one file. Raises `MeshRejected` with a reason code."""
    timings = {}
    t = time.perf_counter()
    loaded = load_mesh(path, cfg.load)
    timings["load"] = time.perf_counter() - t

    t = time.perf_counter()
    wt = make_watertight(loaded.mesh, cfg.watertight, seed=cfg.sample.seed)
    timings["watertight"] = time.perf_counter() - t

    t = time.perf_counter()
    voxel = 2.0 / cfg.watertight.resolution
    samples = sample_object(
        wt.mesh,
        loaded.mesh,
        cfg.sample,
        uid,
        max_sharp_offset=(cfg.watertight.eps_voxels + 1.0) * voxel,
        grid=wt.grid,
        sampler=wt.sampler,
        distance=wt.distance,
    )
    timings["sample"] = time.perf_counter() - t
    return GeometryOutput(uid=uid, loaded=loaded, watertight=wt, samples=samples, timings=timings)


__all__ = ["GeometryOutput", "MeshRejected", "process_mesh"]
