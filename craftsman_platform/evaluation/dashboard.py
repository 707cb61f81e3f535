"""W&B dashboard of evaluations (offline by default): metrics against the checkpoint step, a table
of per-object metrics with ground-truth/prediction renders and point clouds, and the meshes as
`wandb.Object3D` logged directly (W&B cannot put meshes inside tables)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from craftsman_platform.logger import wandb_init


class Dashboard:
    def __init__(self, out: Path, cfg):
        self.run = None
        run_id_file = out / "wandb-run-id"
        run_id = run_id_file.read_text().strip() if run_id_file.exists() else None
        config = {"checkpoint": cfg.checkpoint, "run_dir": cfg.run_dir, "depth": cfg.depth}
        self.run = wandb_init(cfg.logger.wandb, out, "evaluate", run_id, job_type="evaluate", config=config)
        if self.run is None:
            return
        run_id_file.write_text(self.run.id)
        self.run.define_metric("checkpoint_step")
        self.run.define_metric("eval/*", step_metric="checkpoint_step")

    def log(self, result: dict) -> None:
        if self.run is None:
            return
        import wandb

        step = result["step"]
        tag = f"step-{step:07d}"
        payload = {"checkpoint_step": step, **{f"eval/{k}": v for k, v in result["metrics"].items()}}
        rows = result["rows"]
        columns = ["uid", *[k for k in rows[0] if k != "uid"], "gt | prediction", "points"] if rows else []
        table = wandb.Table(columns=columns)
        root = Path(result["output_root"])
        for r in rows:
            render = root / "renders" / tag / f"{r['uid']}.png"
            mesh_path = root / "meshes" / tag / f"{r['uid']}.glb"
            points = _points(mesh_path)
            table.add_data(
                *[r[c] for c in columns[:-2]],
                wandb.Image(str(render)),
                wandb.Object3D(points) if points is not None else None,
            )
            if mesh_path.exists():
                payload[f"meshes/{r['uid']}"] = wandb.Object3D(open(mesh_path, "rb"), file_type="glb")
        payload[f"objects/{tag}"] = table
        self.run.log(payload)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()


def _points(mesh_path: Path, n: int = 2048):
    """A small coloured point cloud of the predicted mesh (tables hold point clouds, not meshes)."""
    if not mesh_path.exists():
        return None
    mesh = trimesh.load(mesh_path, force="mesh")
    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=0)
    rgb = np.tile([120, 160, 255], (n, 1))
    return np.concatenate([pts, rgb], axis=1)
