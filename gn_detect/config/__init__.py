"""The config: typed schema (schema.py), its registration with Hydra (store.py), start-up
validation (validate.py) and the one-line errors both produce (errors.py); the pre-flight that
runs them on a command line is gn_detect/preflight/."""
from .errors import ConfigError, check_output_path, error_text, exit_failed, exit_with_one_line, one_line
from .schema import CHOICES, EvaluateConfig, TrainConfig
from .store import register_schemas
from .validate import (
    Batch,
    images_per_group,
    check_bn_statistics,
    component_norm_opts,
    lr_steps,
    max_skipped_steps,
    resolve_batch,
    validate_evaluate_config,
    validate_train_config,
)

__all__ = [
    "Batch",
    "images_per_group",
    "CHOICES",
    "ConfigError",
    "EvaluateConfig",
    "TrainConfig",
    "check_bn_statistics",
    "check_output_path",
    "component_norm_opts",
    "error_text",
    "exit_failed",
    "exit_with_one_line",
    "lr_steps",
    "max_skipped_steps",
    "one_line",
    "register_schemas",
    "resolve_batch",
    "validate_evaluate_config",
    "validate_train_config",
]
