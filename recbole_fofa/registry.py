"""Name resolution and the shipped YAML defaults: a leaf (imports RecBole, nothing of the plugin).

Model names resolve plugin first, then RecBole (:func:`get_model`); the plugin's YAML lives in
:func:`properties_dir`, and :func:`shipped_defaults` layers it over RecBole's own YAML the way
:class:`recbole_fofa.config.Config` does, so every default is read from the YAML and nowhere else.
"""

import importlib
from functools import cache
from pathlib import Path

import recbole
import recbole.model.sequential_recommender as recbole_sequential
import yaml
from recbole.config import Config as RecBoleConfig
from recbole.utils import get_model as recbole_get_model

# name -> "module:attribute", imported on first use as RecBole's own get_model does: the model
# modules import the checks, which resolve names here.
PLUGIN_MODELS = {"ForwardOFA": "recbole_fofa.model.forward_ofa:ForwardOFA"}
# The packages recbole.utils.get_model searches, in its order.
RECBOLE_MODEL_PACKAGES = ("general_recommender", "context_aware_recommender",
                          "sequential_recommender", "knowledge_aware_recommender",
                          "exlib_recommender")
_RECBOLE_ROOT = Path(recbole.__file__).resolve().parent


def _load(target):
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)


def _recbole_sequential_models():
    return sorted(name for name in dir(recbole_sequential) if name[:1].isupper())


def _recbole_model_file(model_name):
    """RecBole's module file for ``model_name`` (RecBole names them ``<name lowercased>.py``),
    found without importing anything, or None."""
    for submodule in RECBOLE_MODEL_PACKAGES:
        path = _RECBOLE_ROOT / "model" / submodule / f"{model_name.lower()}.py"
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


def properties_dir():
    """Directory of the plugin's YAML defaults: installed package data, else the source tree.

    ``setup.cfg`` maps the top-level ``properties/`` to ``recbole_fofa/properties`` in the wheel.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "properties", package.parent / "properties"):
        if (candidate / "overall.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"recbole_fofa's properties/overall.yaml is neither in {package} nor in {package.parent}; "
        "reinstall the package"
    )


def default_config_file(name, kind="model"):
    """Path of a plugin YAML file, e.g. ``default_config_file("ForwardOFA")``."""
    path = properties_dir() / kind / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no plugin {kind} properties for [{name}] at {path}")
    return str(path)


def read_yaml(path):
    """A YAML file as RecBole reads it (its loader turns ``1e-12`` into a float); {} if absent."""
    if not path.is_file():
        return {}
    loader = RecBoleConfig._build_yaml_loader(None)
    with open(path, encoding="utf-8") as file:
        return dict(yaml.load(file.read(), Loader=loader) or {})


@cache
def plugin_model_keys(model_name):
    """Keys of the plugin's ``properties/model/<model>.yaml`` (empty if it has none)."""
    return frozenset(read_yaml(properties_dir() / "model" / f"{model_name}.yaml"))


@cache
def _shipped(model_name):
    recbole_props = _RECBOLE_ROOT / "properties"
    values = read_yaml(recbole_props / "overall.yaml")
    if model_name is not None:
        values.update(read_yaml(recbole_props / "model" / f"{model_name}.yaml"))
    values.update(read_yaml(recbole_props / "dataset" / "sample.yaml"))
    values.update(read_yaml(properties_dir() / "overall.yaml"))
    if model_name is not None:
        values.update(read_yaml(properties_dir() / "model" / f"{model_name}.yaml"))
    return values


def shipped_defaults(model_name=None):
    """The defaults a run of ``model_name`` starts from, before any user file, dict or flag:
    RecBole's ``overall.yaml``, its model YAML and ``dataset/sample.yaml``, then the plugin's
    ``overall.yaml`` and model YAML, in :class:`~recbole_fofa.config.Config`'s order (no
    dataset-specific file). ``model_name=None``: the keys every model shares. Read once; a copy."""
    return dict(_shipped(model_name))


__all__ = ["PLUGIN_MODELS", "RECBOLE_MODEL_PACKAGES", "default_config_file", "get_model",
           "plugin_model_keys", "properties_dir", "read_yaml", "shipped_defaults"]
