"""Name resolution: the plugin's models and trainers first, then RecBole's.

``get_model`` lives in :mod:`recbole_fofa.registry` (a leaf the checks use) and is re-exported
here, RecBole's place for it.
"""

from recbole.utils import ModelType
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_fofa.registry import PLUGIN_MODELS, get_model
from recbole_fofa.trainer import ForwardOFATrainer, plugin_trainer

PLUGIN_TRAINERS = {"ForwardOFA": ForwardOFATrainer}


def get_trainer(model_type, model_name):
    """Return the trainer class for a model: the plugin's own, else RecBole's made plugin-aware.

    RecBole trainers are wrapped by :func:`recbole_fofa.trainer.plugin_trainer` so that every
    model reloads its best checkpoint on a modern torch and reports its cost metrics.
    """
    if model_name in PLUGIN_TRAINERS:
        return PLUGIN_TRAINERS[model_name]
    return plugin_trainer(recbole_get_trainer(model_type, model_name))


__all__ = ["ModelType", "get_model", "get_trainer", "PLUGIN_MODELS", "PLUGIN_TRAINERS"]
