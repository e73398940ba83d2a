"""Trainers: the plugin-aware RecBole trainers and the Forward-OFA trainer."""

from recbole_fofa.trainer.base import (
    EpochTime,
    PluginTrainerMixin,
    StageEnd,
    Trainer,
    load_checkpoint,
    plugin_trainer,
)
from recbole_fofa.trainer.trainer import ForwardOFATrainer

__all__ = ["EpochTime", "ForwardOFATrainer", "PluginTrainerMixin", "StageEnd", "Trainer",
           "load_checkpoint", "plugin_trainer"]
