"""`craft report output_dir=OUT`: OUT/report.html from OUT's manifest and a bounded number of
pictures from OUT/shards (pipelines/report/gather.py); `craft preprocess` writes it at its end too.
With logger=wandb the same tables go to W&B (offline by default)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from craftsman_platform.errors import MissingInput
from craftsman_platform.logger import WandbConfig, wandb_init
from craftsman_platform.paths import CONF_DIR
from craftsman_platform.pipelines.report import gather
from craftsman_platform.pipelines.report.config import ReportConfig
from craftsman_platform.pipelines.report.page import render
from craftsman_platform.pipelines.storage import Output
from craftsman_platform.shapedata.manifest import has_manifest

log = logging.getLogger("craft.report")


def write_report(out: Output, gallery: int, wandb: WandbConfig | None = None) -> dict:
    """Build and write OUT/report.html; returns {"path", "objects", "pictures", "seconds"}."""
    t0 = time.monotonic()
    if not has_manifest(out.url, out.storage_options):
        raise MissingInput(f"no manifest in {out.display()}: is output_dir a preprocessing output?")
    stats, picks_from = gather.scan(out)
    hists = gather.histograms(out)
    rows = gather.gallery_rows(out, gather.pick_gallery(picks_from, gallery))
    del picks_from
    pictures = gather.read_pictures(out, rows)
    page = render(f"Dataset report: {out.display()}", stats, hists, rows, pictures, gallery)
    out.write_bytes("report.html", page.encode())
    if wandb is not None:
        log_to_wandb(out, wandb, stats, hists, rows, pictures)
    return {"path": out.display("report.html"), "objects": stats["objects"], "pictures": len(pictures),
            "seconds": time.monotonic() - t0}  # fmt: skip


def log_to_wandb(out: Output, cfg: WandbConfig, stats: dict, hists: dict, rows: list[dict], pictures: dict) -> None:
    """The report's tables as a W&B run (job_type dataset-report): counts, reasons, categories, a
    gallery table with thumbnails, histograms."""
    import io

    from PIL import Image

    folder = Path(out.path("")) if out.local else Path.cwd() / "craft-wandb"
    folder.mkdir(parents=True, exist_ok=True)
    run = wandb_init(cfg, folder, "dataset-report", None, job_type="dataset-report", config={"output": out.display()})
    if run is None:
        return
    import wandb

    payload = {
        "status": wandb.Table(columns=["status", "objects"], data=list(stats["status"].items())),
        "reasons": wandb.Table(
            columns=["reason", "objects", "example"],
            data=[
                [k, v["count"], v["examples"][0]["uid"] if v["examples"] else ""] for k, v in stats["reasons"].items()
            ],
        ),
        "categories": wandb.Table(
            columns=["category", "objects", "ok"],
            data=[[k, v["objects"], v["ok"]] for k, v in stats["categories"].items()],
        ),
    }
    columns = list(gather.GALLERY_COLUMNS)
    table = wandb.Table(columns=["picture", *columns])
    for r in rows:
        thumb = (pictures.get(r["uid"]) or {}).get("thumb")
        table.add_data(wandb.Image(Image.open(io.BytesIO(thumb))) if thumb else None, *[_plain(r[c]) for c in columns])
    payload["gallery"] = table
    for name, h in hists.items():
        if h is not None:
            payload[f"hist/{name}"] = wandb.Histogram(np_histogram=(h["counts"], h["edges"]))
    run.log(payload)
    run.finish()


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def format_result(result: dict) -> str:
    return (
        f"report: {result['path']} ({result['objects']} objects, {result['pictures']} with pictures, "
        f"{result['seconds']:.1f} s)"
    )


@hydra.main(config_path=CONF_DIR, config_name="report", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    cfg: ReportConfig = OmegaConf.to_object(dcfg)
    wandb = cfg.logger.wandb if cfg.logger.wandb.enabled else None
    print(format_result(write_report(Output(cfg.output_dir, cfg.storage_options), cfg.gallery, wandb)))
