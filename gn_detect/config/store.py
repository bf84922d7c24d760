"""Registers the typed schemas with Hydra's ConfigStore, so configs/*.yaml compose on top of them."""
from __future__ import annotations

import warnings

from hydra.core.config_store import ConfigStore

from .schema import EvaluateConfig, TrainConfig

TRAIN_SCHEMA = "gn_detect_train_schema"
EVALUATE_SCHEMA = "gn_detect_evaluate_schema"


def register_schemas() -> None:
    """Idempotent; configs/config.yaml and configs/evaluate.yaml name these in their defaults."""
    cs = ConfigStore.instance()
    cs.store(name=TRAIN_SCHEMA, node=TrainConfig)
    cs.store(name=EVALUATE_SCHEMA, node=EvaluateConfig)


register_schemas()
# configs/hydra/launcher/submitit_{slurm,local}.yaml shadow the plugin's configs of those names on
# purpose (the project's launcher classes) and compose on the plugin's schemas.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_(slurm|local)' is validated against ConfigStore schema")
