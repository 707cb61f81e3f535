"""`craft`: one console script, one subcommand per job. Each subcommand is a Hydra app.

Errors come out as one line, `craft SUB: error: ...`, with exit status 2 for a bad command line or
configuration (fix the command) and 1 for a failure while working; `--verbose` (or
HYDRA_FULL_ERROR=1) adds the traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Optional

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from craftsman_platform.errors import ConfigError
from craftsman_platform.schemas import register as register_schemas


@dataclass(frozen=True)
class Subcommand:
    module: str  # has a Hydra `main`
    config: str  # its config name in conf/
    description: str
    schema: Optional[str] = None  # "module:Class" of the top-level schema, for the key comments
    groups: tuple[str, ...] = ()
    examples: list[str] = field(default_factory=list)


SUBCOMMANDS = {
    "preprocess": Subcommand(
        "craftsman_platform.pipelines.preprocess.job",
        "preprocess",
        "meshes -> WebDataset shards + manifest (Ray; resumable, exactly-once)",
        "craftsman_platform.pipelines.preprocess.config:PreprocessConfig",
        (),
        [
            "craft preprocess source.path=meshes/ output_dir=out/          # a folder, recursively",
            "craft preprocess source.path=list.txt output_dir=out/ workers=8  # paths or s3:// gs:// https:// URLs",
            "craft preprocess source.kind=objaverse 'source.lvis_categories=[chair,mug]' output_dir=out/",
            "craft preprocess source.kind=objaverse_xl 'source.xl_sources=[smithsonian,github]' "
            "'source.licenses=[MIT License]' output_dir=out/  # Objaverse-XL, deduplicated by content",
            "craft preprocess source.path=meshes/ output_dir=s3://bucket/out  # object storage (the cloud extra)",
            "craft preprocess ray.address=auto source.kind=objaverse output_dir=s3://bucket/objaverse  # a cluster",
            "Writes OUT/shards/*.tar, OUT/manifest/*.parquet (every listed object: status, reason, duplicate_of),"
            " OUT/summary.json, OUT/report.html (craft report rebuilds it).",
        ],
    ),
    "pack": Subcommand(
        "craftsman_platform.pipelines.pack.job",
        "pack",
        "archive shards -> a pack for one task: VAE points or pre-encoded latents (Ray; resumable)",
        "craftsman_platform.pipelines.pack.config:PackConfig",
        (),
        [
            "craft pack kind=vae source=out/ output_dir=packs/vae                       # points per epoch chunk",
            "craft pack kind=latents source=out/ vae_checkpoint=runs/vae output_dir=packs/latents",
            "craft pack kind=vae source=s3://bucket/objaverse output_dir=s3://bucket/packs/vae "
            "\"select='chamfer < 0.02 and parts_lost == 0'\"",
            "craft pack ray.address=auto kind=latents ...   # a cluster: encoder actors on its GPUs",
            "Writes PACK/pack.json (kind, sources, selection, recipe, VAE), PACK/shards/*.tar, PACK/manifest.parquet;"
            " train with data.train_shards=PACK.",
        ],
    ),
    "report": Subcommand(
        "craftsman_platform.pipelines.report.job",
        "report",
        "OUT/report.html of a preprocessing output: failures, distributions, a gallery (also W&B)",
        "craftsman_platform.pipelines.report.config:ReportConfig",
        ("logger",),
        [
            "craft report output_dir=out/                    # rebuilds out/report.html",
            "craft report output_dir=s3://bucket/objaverse gallery=500 logger=wandb",
            "craft preprocess writes the same report at its end (report_gallery=0 turns the pictures off).",
        ],
    ),
    "inspect": Subcommand(
        "craftsman_platform.geometry.mesh_report",
        "inspect",
        "load, make watertight and sample meshes; print a quality table",
        "craftsman_platform.geometry.config:InspectConfig",
        (),
        [
            "craft inspect                                   # the bundled demo meshes",
            "craft inspect 'inputs=[a.obj,meshes/]' geometry.watertight.resolution=512",
            "Writes output_dir/records.jsonl: one record per object (status, reason, quality, timings).",
        ],
    ),
    "train": Subcommand(
        "craftsman_platform.training.train",
        "train",
        "train a VAE or diffusion model from shards (DeepSpeed; local, Ray Train or torchrun)",
        "craftsman_platform.training.config:TrainConfig",
        ("experiment", "data", "model", "trainer", "deepspeed", "logger", "launcher"),
        [
            "craft train experiment=vae_tiny 'data.train_shards=out/shards/*.tar' run_dir=runs/vae",
            "craft train experiment=diffusion_craftsman 'data.train_shards=...' model.vae_checkpoint=runs/vae "
            "run_dir=runs/diff",
            "craft train ... launcher=ray launcher.num_workers=8          # Ray Train, one GPU per worker when present",
            "Re-running with the same run_dir resumes (only max_steps, logging, cadence and placement may change).",
        ],
    ),
    "evaluate": Subcommand(
        "craftsman_platform.evaluation.evaluate",
        "evaluate",
        "score checkpoints on held-out shards (IoU, Chamfer, F-score); report.html + W&B",
        "craftsman_platform.evaluation.config:EvalConfig",
        ("logger",),
        [
            "craft evaluate checkpoint=runs/vae 'data.eval_shards=held-out/shards/*.tar' output_dir=eval/vae",
            "craft evaluate watch=true run_dir=runs/diff 'data.eval_shards=...' output_dir=eval/diff device=cuda",
        ],
    ),
    "generate": Subcommand(
        "craftsman_platform.inference.generate",
        "generate",
        "views (front/right/back/left, a folder, or one front image) -> GLB + OBJ",
        "craftsman_platform.inference.config:GenerateConfig",
        (),
        [
            "craft generate checkpoint=runs/diff 'images=[front.png,right.png,back.png,left.png]' output_dir=out/",
            "craft generate checkpoint=runs/diff 'images=[views/]' depth=8 device=cuda:1",
        ],
    ),
    "refine": Subcommand(
        "craftsman_platform.inference.refine_job",
        "refine",
        "a coarse mesh + normal maps with cameras -> the mesh refined to match them (CPU or GPU)",
        "craftsman_platform.inference.config:RefineConfig",
        (),
        [
            "craft refine mesh=out/mesh.glb normals=normal_maps/ output_dir=out/   # cameras.json + normal_000.png ...",
            "craft refine mesh=coarse.obj normals=views/   # front.png right.png back.png left.png, canonical cameras",
            "craft refine mesh=coarse.glb archive='data/shards/*.tar' uid=chair-1a2b3c4d refiner.iterations=500",
            "craft refine mesh=coarse.glb normals=maps/ refiner.anchor=0.05   # detail deeper than ~2 px",
            "Writes OUT/NAME.glb, OUT/NAME.obj and OUT/NAME.json (normal loss and silhouette IoU before/after).",
        ],
    ),
    "app": Subcommand(
        "craftsman_platform.inference.app",
        "app",
        "a Gradio app on 127.0.0.1: images in, mesh out",
        "craftsman_platform.inference.config:AppConfig",
        (),
        [
            "craft app checkpoint=runs/diff                    # http://127.0.0.1:7860",
            "craft app checkpoint=runs/diff port=8000 compile=true",
        ],
    ),
    "convert": Subcommand(
        "craftsman_platform.training.convert",
        "convert",
        "a released CraftsMan v1 checkpoint (+ config.yaml) -> checkpoints of ours",
        "craftsman_platform.training.config:ConvertConfig",
        (),
        [
            "craft convert checkpoint=ckpts/craftsman/model.ckpt output_dir=models/craftsman   # config.yaml beside it",
            "craft convert checkpoint=model.ckpt config=config.yaml clip=ckpts/clip-vit-large-patch14 output_dir=DIR",
            "Then: craft generate checkpoint=DIR/diffusion ...; craft train ... init_from=DIR/diffusion",
        ],
    ),
    "summary": Subcommand(
        "craftsman_platform.training.summary",
        "train",
        "compose an experiment; print each module's parameter count",
        "craftsman_platform.training.config:TrainConfig",
        ("experiment", "model"),
        ["craft summary experiment=diffusion_craftsman"],
    ),
}

USAGE = (
    "usage: craft SUBCOMMAND [KEY=VALUE ...] [--verbose]   (craft SUBCOMMAND --help for its keys)\n\nsubcommands:\n"
    + "\n".join(f"  {name:<12} {sub.description}" for name, sub in SUBCOMMANDS.items())
)
USAGE_ERRORS = (ConfigError, HydraException, OmegaConfBaseException)


def unwrap_remote(err: BaseException) -> BaseException:
    """What failed inside a Ray task or actor (Ray wraps it with the remote traceback)."""
    while isinstance(getattr(err, "cause", None), BaseException) and type(err).__module__.startswith("ray"):
        err = err.cause
    return err


def one_line(err: BaseException) -> str:
    """The error's first line, with the first line of its cause when that adds the detail
    (Hydra reports a bad override first, then what is wrong with it)."""
    err = unwrap_remote(err)
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if text.startswith("LexerNoViableAltException") or text.startswith("mismatched input"):
        text += (
            " (Hydra could not parse this override; quote a value holding spaces or < > = ( ) inside the "
            """argument, e.g. "select='chamfer < 0.02 and parts_lost == 0'")"""
        )
    cause = err.__cause__
    if cause is not None and str(cause).strip():
        detail = str(cause).strip().splitlines()[0]
        if detail not in text:
            text = f"{text.rstrip('.')}: {detail}"
    return text


class _QuietHydraErrors:
    """sys.stderr without Hydra's "Error executing job with overrides: [...]" line: the error itself
    is reported once, in one line, by `main`."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return len(text) if text.startswith("Error executing job with overrides:") else self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def print_help(name: str, overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir

    from craftsman_platform.cli_help import render_help
    from craftsman_platform.paths import CONF_DIR

    sub = SUBCOMMANDS[name]
    register_schemas()
    schema = None
    if sub.schema:
        mod, cls = sub.schema.split(":")
        schema = getattr(importlib.import_module(mod), cls)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=sub.config, overrides=overrides)
    print(render_help(name, sub.description, sub.examples, cfg, schema, CONF_DIR, sub.groups))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"craft: unknown subcommand '{name}'\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    verbose = "--verbose" in rest or os.environ.get("HYDRA_FULL_ERROR") == "1"
    rest = [a for a in rest if a != "--verbose"]
    os.environ["CRAFT_VERBOSE"] = "1" if verbose else "0"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; the error is reported here, in one line
    try:
        if "--help" in rest or "-h" in rest:
            print_help(name, [a for a in rest if a not in ("--help", "-h")])
            return
        register_schemas()
        module = importlib.import_module(SUBCOMMANDS[name].module)
        sys.argv = [f"craft-{name}", *rest]  # Hydra parses sys.argv
        with contextlib.redirect_stderr(_QuietHydraErrors(sys.stderr)):
            module.main()
    except KeyboardInterrupt:
        print(f"craft {name}: interrupted", file=sys.stderr)
        raise SystemExit(130)
    except Exception as err:  # noqa: BLE001 - every failure ends here, reported in one line
        if verbose:
            traceback.print_exc()
        logging.shutdown()
        print(f"craft {name}: error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(2 if isinstance(unwrap_remote(err), USAGE_ERRORS) else 1)


if __name__ == "__main__":
    main()
