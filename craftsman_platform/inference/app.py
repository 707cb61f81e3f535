"""`craft app checkpoint=PATH`: a Gradio app, images in (or a prompt, for a text-conditioned
checkpoint), mesh out (3D viewer + download).

Bound to 127.0.0.1 unless `host=` says otherwise; no public share link unless `share=true`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from craftsman_platform.inference.config import AppConfig, GenerateConfig
from craftsman_platform.inference.generate import generate
from craftsman_platform.inference.pipeline import Generator
from craftsman_platform.inference.runtime import resolve_device
from craftsman_platform.models.extraction import DEFAULT_DEPTH
from craftsman_platform.paths import CONF_DIR
from craftsman_platform.shapedata.views import VIEW_NAMES


def save_uploads(folder: Path, views) -> dict[str, str]:
    """The uploaded views (PIL, RGBA as the browser sent them) as PNG files that `craft generate`'s
    path reads: {'front': path, ...} for the views given."""
    folder.mkdir(parents=True)
    paths = {}
    for name, img in zip(VIEW_NAMES, views):
        if img is not None:
            paths[name] = str(folder / f"{name}.png")
            img.save(paths[name])
    return paths


def build_app(cfg: AppConfig):
    import gradio as gr

    gen = Generator.load(cfg.checkpoint, cfg.ema, resolve_device(cfg.device))  # once, for every request
    if cfg.compile:
        gen.compile()
    out_root = Path(cfg.output_dir or tempfile.mkdtemp(prefix="craft-app-"))
    d = gen.cfg.diffusion

    def settings(guidance, steps, seed, depth, sampler, refine, *normal_maps) -> dict:
        out = {"guidance": float(guidance), "steps": int(steps), "seed": int(seed), "depth": int(depth),
               "sampler": sampler}  # fmt: skip
        if refine:
            if all(m is None for m in normal_maps):
                raise gr.Error("Refining needs normal maps: upload at least one (front, right, back or left).")
            folder = Path(tempfile.mkdtemp(prefix="normals-", dir=out_root))
            for name, img in zip(VIEW_NAMES, normal_maps):
                if img is not None:
                    img.save(folder / f"{name}.png")
            out.update(refine=True, normals=str(folder))
        return out

    def answer(result: dict, source: str):
        glb = result["files"][0]
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in result["stages_s"].items())
        info = (
            f"{result['faces']:,} faces from {source} in {result['total_s']:.2f} s on {result['device']} "
            f"({stages}; checkpoint step {result['checkpoint_step']}, {result['weights']} weights)"
        )
        refined = result["meshes"][0].get("refine")
        if refined:
            info += (f"; refined: normal loss {refined['normal_loss_before']:.4f} -> "
                     f"{refined['normal_loss_after']:.4f}")  # fmt: skip
        return glb, [glb, result["files"][1]], info

    def folder_for(seed) -> Path:
        return out_root / f"seed{int(seed)}-{len(list(out_root.glob('*')))}"

    def run_views(front, right, back, left, *knobs):
        if front is None:
            raise gr.Error("A front view is needed.")
        folder = folder_for(knobs[2])
        paths = save_uploads(folder, (front, right, back, left))
        cfg_gen = GenerateConfig(checkpoint=cfg.checkpoint, images=[paths["front"]], right_view=paths.get("right"),
                                 back_view=paths.get("back"), left_view=paths.get("left"), output_dir=str(folder),
                                 **settings(*knobs))  # fmt: skip
        result = generate(cfg_gen, gen)
        return answer(result, ", ".join(result["views_given"]))

    def run_prompt(prompt, *knobs):
        if not (prompt or "").strip():
            raise gr.Error("A prompt is needed.")
        folder = folder_for(knobs[2])
        cfg_gen = GenerateConfig(checkpoint=cfg.checkpoint, prompt=prompt, output_dir=str(folder), **settings(*knobs))
        return answer(generate(cfg_gen, gen), f"\u201c{prompt.strip()}\u201d")

    what = "a prompt" if gen.text else "images"
    with gr.Blocks(title=f"CraftsMan platform: {what} to mesh") as app:
        if gen.text:
            gr.Markdown("## Text to mesh\nA text-conditioned checkpoint: describe the object.")
            inputs = [gr.Textbox(label="prompt", placeholder="a wooden chair", elem_id="prompt")]
        else:
            gr.Markdown(
                "## Images to mesh\nFront view required; right, back and left optional (RGBA images keep their "
                "alpha; others go through background removal when it is available)."
            )
            with gr.Row():
                inputs = [gr.Image(label=name, type="pil", image_mode="RGBA", elem_id=f"view-{name}")
                          for name in VIEW_NAMES]  # fmt: skip
        with gr.Accordion("refine with normal maps", open=False):
            refine = gr.Checkbox(value=False, label="refine the mesh so that its normals match these maps",
                                 elem_id="refine")  # fmt: skip
            with gr.Row():
                normal_maps = [gr.Image(label=f"{name} normals", type="pil", image_mode="RGBA",
                                        elem_id=f"normals-{name}") for name in VIEW_NAMES]  # fmt: skip
        with gr.Row():
            guidance = gr.Slider(1.0, 15.0, value=d.guidance_scale, step=0.5, label="guidance scale")
            steps = gr.Slider(5, 100, value=d.sampling_steps, step=1, label="sampling steps")
            seed = gr.Number(value=0, precision=0, label="seed")
            depth = gr.Slider(5, 9, value=DEFAULT_DEPTH, step=1, label="octree depth")
            sampler = gr.Dropdown(["ddim", "dpmsolver++"], value=d.sampler, label="sampler")
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        viewer = gr.Model3D(label="mesh", elem_id="mesh-viewer")
        files = gr.File(label="download (GLB, OBJ)", file_count="multiple", elem_id="mesh-files")
        info = gr.Markdown(elem_id="info")
        knobs = [guidance, steps, seed, depth, sampler, refine, *normal_maps]
        button.click(run_prompt if gen.text else run_views, [*inputs, *knobs], [viewer, files, info])
    return app


@hydra.main(config_path=CONF_DIR, config_name="app", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    cfg: AppConfig = OmegaConf.to_object(dcfg)
    app = build_app(cfg)
    print(f"app: http://{cfg.host}:{cfg.port}")
    app.launch(server_name=cfg.host, server_port=cfg.port, share=cfg.share, show_error=True)
