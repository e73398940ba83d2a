"""Name resolution: the plugin's models and trainers first, then RecBole's."""

import importlib
from pathlib import Path

from recbole.utils import ModelType
from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer

# name -> "module:attribute"; imported lazily so that `import recbole_fofa` stays light.
PLUGIN_MODELS = {"ForwardOFA": "recbole_fofa.model.forward_ofa:ForwardOFA"}
PLUGIN_TRAINERS = {"ForwardOFA": "recbole_fofa.trainer.trainer:ForwardOFATrainer"}
# The packages recbole.utils.get_model searches, in its order.
RECBOLE_MODEL_PACKAGES = ("general_recommender", "context_aware_recommender",
                          "sequential_recommender", "knowledge_aware_recommender",
                          "exlib_recommender")


def _load(target):
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)


def _recbole_sequential_models():
    import recbole.model.sequential_recommender as seq

    return sorted(name for name in dir(seq) if name[:1].isupper())


def _recbole_model_file(model_name):
    """RecBole's module file for ``model_name`` (RecBole names them ``<name lowercased>.py``),
    found without importing anything, or None."""
    import recbole.model

    root = Path(recbole.model.__file__).resolve().parent
    for submodule in RECBOLE_MODEL_PACKAGES:
        path = root / submodule / f"{model_name.lower()}.py"
        if path.is_file():
            return path
    return None


def get_model(model_name):
    """Return the model class for ``model_name``: a plugin model, else a RecBole model.

    An existing RecBole model whose optional dependency is missing (``XGBoost`` needs
    ``xgboost``; RecBole's ``exlib_recommender`` package also imports ``lightgbm``) raises
    ImportError naming the model and the missing module, chained to the original error. A name
    neither knows raises ValueError listing the plugin's models and RecBole's sequential ones
    (RecBole itself raises an unrelated ``ModuleNotFoundError: lightgbm`` there, compat C14).
    """
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model must be a non-empty model name, got {model_name!r}")
    if model_name in PLUGIN_MODELS:
        return _load(PLUGIN_MODELS[model_name])
    try:
        return recbole_get_model(model_name)
    except (ValueError, ImportError, AttributeError) as err:
        path = _recbole_model_file(model_name)
        if isinstance(err, ImportError) and path is not None:
            missing = getattr(err, "name", None) or str(err)
            raise ImportError(
                f"model [{model_name}] is a RecBole model ({path.parent.name}/{path.name}) but "
                f"importing it failed: {err}. Install the package that provides module "
                f"'{missing.split('.')[0]}' to use it",
                name=getattr(err, "name", None),
            ) from err
        raise ValueError(
            f"model [{model_name}] is neither a recbole_fofa model {sorted(PLUGIN_MODELS)} nor a "
            f"RecBole model (names are case-sensitive; RecBole's sequential models are "
            f"{_recbole_sequential_models()})"
        ) from err


def get_trainer(model_type, model_name):
    """Return the trainer class for a model: the plugin's own, else RecBole's made plugin-aware.

    RecBole trainers are wrapped by :func:`recbole_fofa.trainer.plugin_trainer` so that every
    model reloads its best checkpoint on a modern torch and reports its cost metrics.
    """
    from recbole_fofa.trainer import plugin_trainer

    if model_name in PLUGIN_TRAINERS:
        return _load(PLUGIN_TRAINERS[model_name])
    return plugin_trainer(recbole_get_trainer(model_type, model_name))


__all__ = ["ModelType", "get_model", "get_trainer", "PLUGIN_MODELS", "PLUGIN_TRAINERS"]
