"""Training: the recipe (TrainConfig), the loop (train), evaluation of models and checkpoints."""

from .config import ConfigError, TrainConfig, config_from_dict, load_config
from .evaluate import evaluate, evaluate_checkpoint
from .loop import TrainingDiverged, train

__all__ = ["TrainConfig", "ConfigError", "config_from_dict", "load_config", "train", "TrainingDiverged",
           "evaluate", "evaluate_checkpoint"]
