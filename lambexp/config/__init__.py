"""Experiment configs: YAML files of shared arm settings and `arms:`, validated into frozen objects.

Read first: schema.py (every setting, its unit and default), then load.py. The package is the
only part of lambexp that imports yaml (in yaml_io.py), and it never imports torch.
"""

from lambexp.config.load import (
    experiment_to_yaml,
    load_experiment,
    parse_experiment,
    validate_experiment,
)
from lambexp.config.schema import MAX_SEED, SETTINGS, Arm, Experiment, Settings

__all__ = [
    "MAX_SEED",
    "SETTINGS",
    "Arm",
    "Experiment",
    "Settings",
    "experiment_to_yaml",
    "load_experiment",
    "parse_experiment",
    "validate_experiment",
]
