"""What RecBole 1.2.1 accepts, read from its own source, YAML and metric registry. A leaf.

The checks use these so that a value RecBole's code would take is never refused and one it would
trip over is refused before any data loads, without a hand-kept copy of RecBole's lists.
"""

import ast
import inspect
import re
import textwrap
from functools import cache
from pathlib import Path

import recbole
import recbole.evaluator.register as metric_registry
import yaml
from recbole.model.layers import FeedForward
from recbole.utils import EvaluatorType


def _literal_strings(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return {s for element in node.elts for s in _literal_strings(element)}
    return set()


def _dict_keys_in(func):
    """String keys of the dict literals in ``func``'s source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    return {key.value for node in ast.walk(tree) if isinstance(node, ast.Dict)
            for key in node.keys if isinstance(key, ast.Constant) and isinstance(key.value, str)}


@cache
def activation_names(model_class=None):
    """Names RecBole's ``FeedForward`` (and the model's own ``get_hidden_act``, if its module
    defines one, as FEARec's does) accept as ``hidden_act``: read from their source."""
    names = set(_dict_keys_in(FeedForward.get_hidden_act))
    module = inspect.getmodule(model_class) if model_class is not None else None
    for obj in vars(module).values() if module is not None else ():
        if inspect.isclass(obj) and "get_hidden_act" in vars(obj):
            names |= _dict_keys_in(obj.get_hidden_act)
    return tuple(sorted(names))


def _mentions_loss_type(node):
    return any(
        (isinstance(n, ast.Name) and n.id == "loss_type")
        or (isinstance(n, ast.Attribute) and n.attr == "loss_type")
        or (isinstance(n, ast.Constant) and n.value == "loss_type")
        for n in ast.walk(node)
    )


@cache
def loss_type_names(model_class):
    """(names, case_insensitive): the ``loss_type`` values a RecBole model's code compares
    against (its module and its bases'), and whether it lowercases first (MCCLK does). Empty
    names when it never compares (then any non-empty string passes)."""
    names, insensitive = set(), False
    for cls in model_class.__mro__:
        if not cls.__module__.startswith("recbole."):
            continue
        try:
            tree = ast.parse(inspect.getsource(inspect.getmodule(cls)))
        except (OSError, TypeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and _mentions_loss_type(node.left):
                for comparator in node.comparators:
                    names |= _literal_strings(comparator)
                left = node.left
                insensitive |= (isinstance(left, ast.Call) and isinstance(left.func, ast.Attribute)
                                and left.func.attr in ("lower", "upper"))
    return tuple(sorted(names)), insensitive


@cache
def recbole_model_keys(model_name):
    """Keys of RecBole's own ``properties/model/<model>.yaml`` (empty if it has none)."""
    path = Path(recbole.__file__).resolve().parent / "properties" / "model" / f"{model_name}.yaml"
    if not path.is_file():
        return frozenset()
    return frozenset(yaml.safe_load(path.read_text()) or {})


# A key read from a config in source: config["key"], config.get("key"), final_config_dict["key"]
_CONFIG_READ = re.compile(r"""config(?:_dict)?(?:\[|\.get\(\s*)["']([A-Za-z_][A-Za-z0-9_]*)["']""")


def config_keys_read(package_dir):
    """Keys the Python files under ``package_dir`` read from a config (by the pattern above)."""
    keys = set()
    for path in Path(package_dir).rglob("*.py"):
        keys.update(_CONFIG_READ.findall(path.read_text(encoding="utf-8", errors="replace")))
    return keys


@cache
def recbole_config_keys():
    """Every config key RecBole 1.2.1 knows: the keys of its YAML files (overall, every model,
    every dataset, the quick-start configs), its argument lists, and the keys its code reads
    (``nproc``, ``benchmark_filename``, ``local_rank``, ...). Read once (about 0.25 s)."""
    from recbole.utils import argument_list

    root = Path(recbole.__file__).resolve().parent
    keys = config_keys_read(root)
    for path in (root / "properties").rglob("*.yaml"):
        if not path.name.endswith("url.yaml"):  # dataset name -> download URL, not keys
            keys.update(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    for name in ("general_arguments", "training_arguments", "evaluation_arguments",
                 "dataset_arguments"):
        keys.update(getattr(argument_list, name))
    return frozenset(keys)


# ----------------------------------------------------------------------------- metrics
# The registry is read at call time: the plugin adds its cost metrics to it when imported.


def metric_names():
    """Every metric name in RecBole's registry (lowercase)."""
    return sorted(metric_registry.metrics_dict)


def is_registered_metric(name):
    return isinstance(name, str) and name.lower() in metric_registry.metrics_dict


def is_topk_metric(name):
    """Whether RecBole reports the metric per cut-off (``ndcg@10``) rather than once (``auc``)."""
    need = metric_registry.metric_information[name.lower()]
    return "rec.topk" in need or "rec.items" in need


def metric_type(name):
    """RecBole's ``EvaluatorType`` of a metric (ranking or value)."""
    return metric_registry.metric_types[name.lower()]


def metric_names_of(ranking):
    """The names of the ranking (or value) metrics."""
    kind = EvaluatorType.RANKING if ranking else EvaluatorType.VALUE
    return sorted(n for n, t in metric_registry.metric_types.items() if t == kind)


def smaller_metrics():
    """The metrics where smaller is better (errors)."""
    return set(metric_registry.smaller_metrics)


__all__ = ["activation_names", "config_keys_read", "is_registered_metric", "is_topk_metric",
           "loss_type_names", "metric_names", "metric_names_of", "metric_type",
           "recbole_config_keys", "recbole_model_keys", "smaller_metrics"]
