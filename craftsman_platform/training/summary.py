"""`craft summary experiment=NAME`: compose the experiment and print its modules' parameter counts.

Models are built on the meta device: full-size configs cost no memory and read no weights.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from craftsman_platform.models.build import module_summary
from craftsman_platform.paths import CONF_DIR
from craftsman_platform.training.config import to_train_config


def format_rows(rows: list[tuple[str, int, int]]) -> str:
    return "\n".join(f"{name}: {total:,} parameters ({trainable:,} trainable)" for name, total, trainable in rows)


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    cfg = to_train_config(dcfg)
    print(f"experiment: {cfg.name}  (model.kind={cfg.model.kind})")
    print(format_rows(module_summary(cfg.model)))
    if cfg.model.kind == "diffusion" and cfg.model.conditioner.pretrained:
        print(
            "(built on the meta device from model.conditioner.architecture; "
            f"{cfg.model.conditioner.pretrained} not read)"
        )
