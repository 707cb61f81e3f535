"""Multi-view diffusion front ends: one front image -> the right, back and left views.

CraftsMan feeds its denoiser 4 views; from a single image it first makes the others with a
multi-view diffusion model. ImageDream, CRM and Wonder3D sit behind one interface. Weights are
loaded from a local directory only (nothing is downloaded at run time); an absent directory fails
with a message naming it. Without a front end, missing views get the null condition (the model
saw it under classifier-free guidance dropout), which works but loses detail.

    craft generate ... frontend=wonder3d frontend_weights=/models/wonder3d-v1.0
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from craftsman_platform.errors import ConfigError, MissingInput

log = logging.getLogger("craft.generate")

FRONTENDS = ("none", "imagedream", "crm", "wonder3d")


class FrontEndWeightsMissing(MissingInput):
    pass


class RemoteCodeRefused(ConfigError):
    pass


class MultiViewFrontEnd:
    """Base: `views(front)` -> {'right': img, 'back': img, 'left': img}."""

    name = "base"
    hf_id = ""  # where users fetch the weights from (on a machine with internet)
    required = ("model_index.json",)  # files that mark a complete diffusers-format directory

    def __init__(self, weights: str | None, trust_remote_code: bool = False):
        if not weights:
            raise FrontEndWeightsMissing(
                f"frontend={self.name} needs frontend_weights=DIR (download {self.hf_id} there)"
            )
        self.weights = Path(weights).expanduser()
        absent = [f for f in self.required if not (self.weights / f).exists()]
        if absent:
            raise FrontEndWeightsMissing(
                f"frontend={self.name}: {self.weights} lacks {', '.join(absent)}; download {self.hf_id} "
                f"(`hf download {self.hf_id} --local-dir {self.weights}`) on a machine with internet"
            )
        self.trust_remote_code = trust_remote_code
        self.pipeline = self._load()

    def _load(self):
        from diffusers import DiffusionPipeline

        code = sorted(p.name for p in self.weights.glob("*.py"))
        if code and not self.trust_remote_code:  # refused before diffusers sees the directory
            raise RemoteCodeRefused(
                f"frontend={self.name}: {self.weights} ships Python code ({', '.join(code)}), which is not run by "
                "default; read it, then set frontend_trust_remote_code=true to allow it"
            )
        if code:
            log.warning(
                "frontend=%s: running the Python code in %s (%s) because frontend_trust_remote_code=true",
                self.name,
                self.weights,
                ", ".join(code),
            )
        custom = {"custom_pipeline": str(self.weights)} if code else {}
        return DiffusionPipeline.from_pretrained(
            str(self.weights), local_files_only=True, trust_remote_code=self.trust_remote_code, **custom
        )

    def views(self, front: Image.Image) -> dict[str, Image.Image]:
        raise NotImplementedError


class Wonder3D(MultiViewFrontEnd):
    """6 views (front, front-right, right, back, left, front-left) + their normal maps; we keep 4.

    The pipeline returns the 6 normal maps, then the 6 colour views (Wonder3D's two domains, one
    batch). Normals are in the input view's camera frame, OpenGL axes (x right, y up, z towards
    the viewer), encoded (n + 1) / 2 * 255; `normal_maps` turns them to the world frame of our
    canonical cameras (front camera at -y, z up). Unmeasured here: no Wonder3D weights offline.
    """

    name, hf_id = "wonder3d", "flamehaze1115/wonder3d-v1.0"
    KEEP = {"front": 0, "right": 2, "back": 3, "left": 4}

    def __init__(self, weights: str | None, trust_remote_code: bool = False):
        super().__init__(weights, trust_remote_code)
        self.last_normals: dict[str, Image.Image] = {}

    def views(self, front: Image.Image) -> dict[str, Image.Image]:
        out = self.pipeline(front, num_inference_steps=50, output_type="pil").images
        normals, colours = (out[:6], out[6:]) if len(out) == 12 else ([], out)
        self.last_normals = {k: normals[i] for k, i in self.KEEP.items()} if normals else {}
        return {k: colours[i] for k, i in self.KEEP.items() if k != "front"}

    def normal_maps(self) -> dict[str, np.ndarray]:
        """The last run's normal maps of the canonical views, world frame, uint8 RGB(A)."""
        maps = {}
        for name, img in self.last_normals.items():
            arr = np.asarray(img.convert("RGBA") if img.mode == "RGBA" else img.convert("RGB")).copy()
            n = arr[..., :3].astype(np.float32) / 127.5 - 1.0
            world = np.stack([n[..., 0], -n[..., 2], n[..., 1]], axis=-1)  # camera (x, y up, z out) -> world
            background = np.all(arr[..., :3] == 255, axis=2) | np.all(arr[..., :3] == 0, axis=2)
            arr[..., :3] = np.where(background[..., None], arr[..., :3], np.round((world + 1.0) * 127.5))
            maps[name] = arr
        return maps


class ImageDream(MultiViewFrontEnd):
    """4 orthogonal views at elevation 0 (front, right, back, left), as CraftsMan consumes."""

    name, hf_id = "imagedream", "ashawkey/imagedream-ipmv-diffusers"

    def views(self, front: Image.Image) -> dict[str, Image.Image]:
        out = self.pipeline("", front, guidance_scale=5.0, num_inference_steps=30, elevation=0).images
        return {"right": out[1], "back": out[2], "left": out[3]}


class CRM(MultiViewFrontEnd):
    """CRM's first stage (pixel diffusion) gives 6 orthogonal views; its weights are not diffusers-format."""

    name, hf_id = "crm", "Zhengyi/CRM"
    required = ("pixel-diffusion.pth", "sd-v2.1-base-4view-ipmv.yaml")

    def _load(self):
        raise FrontEndWeightsMissing(
            f"frontend=crm: weights found at {self.weights}, but CRM's pixel-diffusion stage needs its own code "
            "(github.com/thu-ml/CRM, imagedream package) installed in this environment"
        )


def build_frontend(name: str, weights: str | None, trust_remote_code: bool = False) -> MultiViewFrontEnd | None:
    if name not in FRONTENDS:
        raise ConfigError(f"frontend must be one of {FRONTENDS}, got {name!r}")
    if name == "none":
        return None
    return {"wonder3d": Wonder3D, "imagedream": ImageDream, "crm": CRM}[name](weights, trust_remote_code)
