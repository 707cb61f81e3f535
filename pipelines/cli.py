"""`craft`: one console script, one subcommand per job. Each subcommand is a Hydra app."""
from __future__ import annotations

import importlib
import sys

# name -> (module with a Hydra `main`, one-line description)
SUBCOMMANDS = {
    "preprocess": ("pipelines.preprocess", "meshes -> WebDataset shards + manifest (Ray; resumable, exactly-once)"),
    "inspect": ("pipelines.mesh_report", "load, make watertight and sample meshes; print a quality table"),
    "train": ("training.train", "train a VAE or diffusion model from shards (DeepSpeed; local, Ray Train or torchrun)"),
    "evaluate": ("evaluation.evaluate", "score checkpoints on held-out shards (IoU, Chamfer, F-score); report.html + W&B"),
    "generate": ("inference.generate", "views (front/right/back/left, a folder, or one front image) -> GLB + OBJ"),
    "app": ("inference.app", "a Gradio app on 127.0.0.1: images in, mesh out"),
    "summary": ("training.summary", "compose an experiment; print each module's parameter count"),
}

USAGE = "usage: craft SUBCOMMAND [KEY=VALUE ...]   (craft SUBCOMMAND --help for its options)\n\nsubcommands:\n" + "\n".join(
    f"  {name:<12} {desc}" for name, (_, desc) in SUBCOMMANDS.items()
)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"craft: unknown subcommand '{name}'\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(SUBCOMMANDS[name][0])
    sys.argv = [f"craft-{name}", *rest]  # Hydra parses sys.argv
    module.main()


if __name__ == "__main__":
    main()
