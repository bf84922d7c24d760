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
# configs/hydra/launcher/submitit_slurm.yaml shadows the plugin's config of that name on purpose
# (the project's launcher class, requeue after time limits) and composes on the plugin's schema.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_slurm' is validated against ConfigStore schema")
