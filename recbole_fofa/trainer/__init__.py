"""Trainers: the plugin-aware RecBole trainers and the Forward-OFA trainer."""

from recbole_fofa.trainer.base import PluginTrainerMixin, Trainer, plugin_trainer

__all__ = ["PluginTrainerMixin", "Trainer", "plugin_trainer"]
