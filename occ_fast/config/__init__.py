"""The run configuration: one tree of documented dataclasses, YAML presets, command-line overrides.

``parse_config(argv)`` builds a :class:`Config` in three layers: the dataclass defaults, a preset
(``--preset NAME`` from ``occ_fast/configs/NAME.yaml``, or a path to any YAML file; ``tiny`` when
absent) that overrides some fields, then command-line flags for any field (``--mtp.regime ce
--optim.lr 3e-6``). The result is validated as a whole, so impossible combinations fail before any
model is loaded, with messages that name the fields. A resolved config saved with :meth:`Config.to_yaml`
is itself a preset: ``--preset runs/NAME/config.yaml --run.resume auto`` continues that run.

- ``tree``: the dataclasses, each field with its doc (the ``--help`` text) and its constraint;
- ``loading``: YAML and finished configs checked against the tree by pydantic, problems named;
- ``rules``: the checks that tie several fields together;
- ``cli``: presets and the command line (tyro).
"""

from occ_fast.config.cli import DEFAULT_PRESET, list_presets, load_preset, main, parse_config, presets_dir
from occ_fast.config.loading import ConfigError
from occ_fast.config.tree import (
    LOSS_FIELDS,
    PRESET_SUFFIX,
    AlgorithmConfig,
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    MTPConfig,
    OptimConfig,
    RewardConfig,
    RolloutConfig,
    RunConfig,
    TinyModelConfig,
    TrainConfig,
)

__all__ = [
    "DEFAULT_PRESET",
    "LOSS_FIELDS",
    "PRESET_SUFFIX",
    "AlgorithmConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "MTPConfig",
    "ModelConfig",
    "OptimConfig",
    "RewardConfig",
    "RolloutConfig",
    "RunConfig",
    "TinyModelConfig",
    "TrainConfig",
    "list_presets",
    "load_preset",
    "main",
    "parse_config",
    "presets_dir",
]
