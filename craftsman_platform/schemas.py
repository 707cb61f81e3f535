"""Every Hydra schema, registered in one place, the one way: `craft` (and the tests) call `register()`
before anything is composed. The dataclasses hold the defaults; the YAML files under conf/ only
choose group options and set the values that differ."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from craftsman_platform.evaluation.config import EvalConfig
from craftsman_platform.geometry.config import InspectConfig
from craftsman_platform.inference.config import AppConfig, GenerateConfig, RefineConfig
from craftsman_platform.pipelines.pack.config import PackConfig
from craftsman_platform.pipelines.preprocess.config import PreprocessConfig
from craftsman_platform.pipelines.report.config import ReportConfig
from craftsman_platform.training.config import ConvertConfig, TrainConfig

SCHEMAS = {
    "preprocess": PreprocessConfig,
    "pack": PackConfig,
    "report": ReportConfig,
    "inspect": InspectConfig,
    "train": TrainConfig,
    "evaluate": EvalConfig,
    "generate": GenerateConfig,
    "refine": RefineConfig,
    "app": AppConfig,
    "convert": ConvertConfig,
}


def register() -> None:
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=f"{name}_schema", node=node)
