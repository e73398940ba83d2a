"""Trainers: the plugin-aware RecBole trainers and the Forward-OFA trainer."""

from recbole_fofa.trainer.base import PluginTrainerMixin, Trainer, plugin_trainer
from recbole_fofa.trainer.trainer import ForwardOFATrainer

__all__ = ["ForwardOFATrainer", "PluginTrainerMixin", "Trainer", "plugin_trainer"]
