"""Every RecBole 1.2.1 model class runs one epoch through ``run_recbole_fofa`` with the plugin's
defaults, on one shared tiny dataset, and returns what RecBole's ``run_recbole`` returns.

The registry is read from RecBole's model packages; only models whose optional dependency is not
installed are skipped, naming it. Besides RecBole's keys and default metrics, a model reports the
cost metrics exactly when the plugin can cost it (:func:`recbole_fofa.evaluator.measure.can_cost`
and a successful measurement), and context-aware models keep AUC/LogLoss and their valid_metric.

``python tests/test_all_models.py`` prints the table (model, type, ran/skip, cost source, MACs).
"""

import ast
import importlib
import importlib.util
import inspect
import pkgutil
import sys
import time
from pathlib import Path

import pytest
from recbole.config import Config as StockConfig
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import ModelType

import recbole_fofa
from recbole_fofa.evaluator.collector import CostCollector
from recbole_fofa.evaluator.measure import can_cost
from recbole_fofa.evaluator.metrics import DEFAULT_COST_METRICS
from recbole_fofa.trainer import PluginTrainerMixin

pytestmark = pytest.mark.slow  # trains a model per test or starts processes

PACKAGES = ("general_recommender", "context_aware_recommender", "knowledge_aware_recommender",
            "sequential_recommender", "exlib_recommender")
RESULT_KEYS = {"best_valid_score", "valid_score_bigger", "best_valid_result", "test_result"}
COST_KEYS = {name.lower() for name in DEFAULT_COST_METRICS}

# What RecBole's own models need beyond the shared config, as in RecBole's model tests:
# context-aware models label interactions by rating; multi-stage models get one epoch per stage;
# KSR and GRU4RecKG read pretrained entity/relation embeddings.
_KG_EMBEDDINGS = {
    # RecBole gives these two no sequential eval_args of their own (configurator.py:304-305)
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
    "additional_feat_suffix": ["ent", "rel"],
    "alias_of_entity_id": ["ent_id"],
    "alias_of_relation_id": ["rel_id"],
    "preload_weight": {"ent_id": "ent_emb", "rel_id": "rel_emb"},
}
MODEL_OVERRIDES = {
    "S3Rec": {"pretrain_epochs": 1, "save_step": 1},
    "RaCT": {"pretrain_epochs": 1, "save_step": 1},
    "KSR": dict(_KG_EMBEDDINGS, kg_embedding_size=8),  # the zoo's vectors (conftest.ZOO_EMB)
    "GRU4RecKG": _KG_EMBEDDINGS,
    "ConvNCF": {"embedding_size": 64},  # its default CNN (strides 4, 4, 2, 2) needs 64
    "FEARec": {"n_layers": 2},  # it divides by n_layers - 1
    "GRU4RecCPR": {"reranker_CAN_NUM": 10},  # reranker candidates must not exceed the items
    "SASRecCPR": {"reranker_CAN_NUM": 10},
}
# Models that fail in RecBole 1.2.1 itself, on any dataset: the test asserts the failure stays.
RECBOLE_FAILURES = {
    "KSR": (RuntimeError, "same dtype",
            "RecBole 1.2.1's KSR multiplies float32 outputs with its float64 pretrained relation "
            "matrix (recbole/data/dataset/dataset.py:621 np.zeros, ksr.py:92,153)"),
}
# RecBole's optional dependencies: a model needing one that is missing is skipped, named.
OPTIONAL_DEPENDENCIES = {"lightgbm", "xgboost", "faiss", "dgl", "torch_scatter"}
TYPE_OVERRIDES = {ModelType.CONTEXT: {"threshold": {"rating": 4}}}


def _missing_imports(path):
    """Top-level modules a source file imports that are not installed."""
    tree = ast.parse(Path(path).read_text())
    names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    return sorted(name for name in names if importlib.util.find_spec(name) is None)


def registry():
    """[(name, class or None, package, missing dependency or None)] of RecBole's model classes.

    A module that cannot be imported (exlib's lightgbm/xgboost wrappers) is listed by its class
    definitions, read from the source, with the dependencies it imports that are missing.
    """
    models = []
    for package in PACKAGES:
        path = Path(importlib.util.find_spec("recbole.model").origin).parent / package
        for module_info in pkgutil.iter_modules([str(path)]):
            module_name = f"recbole.model.{package}.{module_info.name}"
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as err:
                source = path / f"{module_info.name}.py"
                missing = ", ".join(_missing_imports(source)) or err.name
                classes = [node.name for node in ast.parse(source.read_text()).body
                           if isinstance(node, ast.ClassDef)]
                models += [(name, None, package, missing) for name in classes]
                continue
            for name, cls in inspect.getmembers(module, inspect.isclass):
                if (issubclass(cls, AbstractRecommender) and cls.__module__ == module_name
                        and hasattr(cls, "type")):
                    models.append((name, cls, package, None))
    return sorted(models, key=lambda m: (PACKAGES.index(m[2]), m[0]))


MODELS = registry()


def recbole_default_metrics(model_name, model_class, dataset):
    """(metrics, valid_metric) that RecBole's own YAML defaults give this model."""
    stock = StockConfig.__new__(StockConfig)
    stock._init_parameters_category()
    stock.yaml_loader = stock._build_yaml_loader()
    stock._load_internal_config_dict(model_name, model_class, dataset)
    return stock.internal_config_dict["metrics"], stock.internal_config_dict["valid_metric"]


def zoo_config(name, model_class, data_path, tmp_path):
    """The shared tiny config: plugin defaults, one epoch, small sizes, all atomic files."""
    config = {
        "data_path": data_path,
        "load_col": None,  # every column of every atomic file present
        "epochs": 1,
        "train_batch_size": 128,
        "eval_batch_size": 256,
        "embedding_size": 8,
        "hidden_size": 8,
        "inner_size": 16,
        "n_layers": 1,
        "n_heads": 2,
        "MAX_ITEM_LIST_LENGTH": 5,
        "state": "ERROR",
        "show_progress": False,
        "checkpoint_dir": str(tmp_path / "saved"),
        "seed": 2020,
        "numerical_features": ["age", "price"],  # embed the float features (DSSM counts them)
    }
    config.update(TYPE_OVERRIDES.get(model_class.type, {}))
    config.update(MODEL_OVERRIDES.get(name, {}))
    return config


def run_one(name, model_class, dataset, data_path, tmp_path, monkeypatch):
    """Run one model; returns (result, measured ModelCosts, reasons of dropped cost metrics)."""
    measured, dropped = [], []
    measure, drop = CostCollector.measure, PluginTrainerMixin._drop_cost_metrics

    def recording_measure(self, model, interaction):
        measured.append(measure(self, model, interaction))
        return measured[-1]

    def recording_drop(self, err):
        dropped.append(err.reason)
        return drop(self, err)

    monkeypatch.setattr(CostCollector, "measure", recording_measure)
    monkeypatch.setattr(PluginTrainerMixin, "_drop_cost_metrics", recording_drop)
    config = zoo_config(name, model_class, data_path, tmp_path)
    result = recbole_fofa.run_recbole_fofa(model=name, dataset=dataset, config_dict=config,
                                           saved=True)
    return result, measured, dropped


TABLE = []


@pytest.fixture(scope="module", autouse=True)
def report_table():
    """Time the whole module and print the per-model table at its end (visible with -s)."""
    start = time.perf_counter()
    yield
    print("\n" + format_table(TABLE, time.perf_counter() - start))


def format_table(rows, wall_s):
    header = ("model", "type", "status", "cost source", "MACs")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *rows]]
    ran = sum(1 for r in rows if r[2] == "ran")
    lines.append(f"{ran} of {len(rows)} RecBole model classes ran; wall time {wall_s:.1f} s")
    return "\n".join(lines)


@pytest.mark.parametrize("name,model_class,package,missing", MODELS,
                         ids=[m[0] for m in MODELS])
def test_model_runs_through_the_plugin(name, model_class, package, missing, zoo, tmp_path,
                                       monkeypatch):
    if missing is not None:
        TABLE.append((name, package, f"skip: needs {missing}", "-", "-"))
        pytest.skip(f"optional dependency `{missing}` of RecBole's {name} is not installed")
    dataset, data_path = zoo
    if name in RECBOLE_FAILURES:
        error, match, reason = RECBOLE_FAILURES[name]
        with pytest.raises(error, match=match):
            run_one(name, model_class, dataset, data_path, tmp_path, monkeypatch)
        TABLE.append((name, package, "fails in RecBole", "-", "-"))
        pytest.xfail(reason)
    try:
        result, measured, dropped = run_one(name, model_class, dataset, data_path, tmp_path,
                                            monkeypatch)
    except ModuleNotFoundError as err:  # imported when the model is built or trained
        if err.name not in OPTIONAL_DEPENDENCIES:
            raise
        TABLE.append((name, package, f"skip: needs {err.name}", "-", "-"))
        pytest.skip(f"optional dependency `{err.name}` of RecBole's {name} is not installed")
    assert set(result) == RESULT_KEYS

    metrics, valid_metric = recbole_default_metrics(name, model_class, dataset)
    test = result["test_result"]
    names = {m.lower() for m in metrics}
    value_metrics = names <= {"auc", "logloss", "gauc", "mae", "rmse"}
    expected = names if value_metrics else {f"{m}@10" for m in names}
    assert expected <= set(test), (name, sorted(test))
    valid = result["best_valid_result"]  # None when fit() only pre-trains (S3Rec, RaCT)
    assert valid is None or valid_metric.lower() in valid
    if model_class.type == ModelType.CONTEXT:
        assert expected == {"auc", "logloss"} and valid_metric == "AUC"

    costable, reason = can_cost(model_class)
    reports_cost = COST_KEYS <= set(test)
    extra = set(test) - expected - COST_KEYS - {"candidate_params"}
    assert not extra, (name, extra)
    if not costable:
        assert not reports_cost and not measured and not dropped, name  # never added
        TABLE.append((name, package, "ran", f"not costed: {reason.split('] ', 1)[1][:44]}", "-"))
        return
    assert len(measured) + len(dropped) == 1, (name, measured, dropped)  # decided once
    if measured:
        cost = measured[0]
        assert reports_cost and test["macs"] == cost.macs and test["params"] == cost.params
        assert test["blocks"] == cost.blocks and cost.source and cost.covers
        TABLE.append((name, package, "ran", cost.source, f"{cost.macs:,}"))
    else:
        assert not reports_cost
        TABLE.append((name, package, "ran", f"dropped: {dropped[0][:60]}", "-"))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s", "-p", "no:cacheprovider"]))
