"""Cost metrics in RecBole's registry, the cost collector, and baselines reporting their cost."""

import logging
import threading
from pathlib import Path

import pytest
import recbole.evaluator.register as registry
import torch
from conftest import write_atomic_files
from recbole.config.configurator import metric_types as config_metric_types
from recbole.evaluator.evaluator import metrics_dict as evaluator_metrics
from recbole.model.sequential_recommender import SASRec
from recbole.utils import EvaluatorType, init_seed

from recbole_fofa import Config, cost, get_trainer, run_recbole_fofa
from recbole_fofa.evaluator import CostCollector, measure, register_metrics
from recbole_fofa.quick_start import prepare

COST_METRICS = ["MACs", "Params", "Blocks"]
COST_KEYS = {"macs", "params", "blocks"}


def test_metrics_are_registered_in_the_objects_recbole_imported():
    register_metrics()  # idempotent
    for name in ["macs", "params", "blocks", "macsratio"]:
        assert name in registry.metrics_dict and name in evaluator_metrics
        assert name in config_metric_types and registry.smaller_metrics.count(name) == 1


def test_cost_metrics_can_be_the_valid_metric(planted):
    dataset, config = planted
    config.update(metrics=["ndcg", "HIT", "macs"], valid_metric="MACs")
    config_ = Config(model="SASRec", dataset=dataset, config_dict=config)
    assert config_["valid_metric_bigger"] is False


@pytest.mark.slow
@pytest.mark.parametrize("model", ["SASRec", "GRU4Rec"])
def test_baselines_report_their_cost_beside_accuracy(planted, model):
    dataset, config = planted
    config.update(epochs=1, embedding_size=16, metrics=["NDCG", "Hit", *COST_METRICS, "MACsRatio"])
    result = run_recbole_fofa(model=model, dataset=dataset, config_dict=config)
    test = result["test_result"]
    assert {"ndcg@10", "hit@10", "macs", "params", "blocks", "macsratio"} <= set(test)

    cfg, net, _ = prepare(model, dataset, config_dict=config)
    expected = measure.model_cost(net)
    assert expected.source == "analytic"
    assert test["macs"] == expected.macs > 0
    assert test["params"] == expected.params > 0
    assert test["blocks"] == expected.blocks >= 1
    assert test["macsratio"] == 1.0
    assert test["candidate_params"] == net.n_items * 16
    if model == "SASRec":  # cross-check the analytic count with the measured matmuls
        seq = torch.ones(1, cfg["MAX_ITEM_LIST_LENGTH"], dtype=torch.long)
        length = torch.tensor([cfg["MAX_ITEM_LIST_LENGTH"]])
        assert measure.measure_macs(net.eval().forward, seq, length) == test["macs"]


def test_measured_baselines_are_labelled(planted):
    dataset, config = planted
    config.update(metrics=["NDCG", "MACs"], embedding_size=16)
    cfg, net, (train, valid, test) = prepare("NARM", dataset, config_dict=config)
    trainer = get_trainer(cfg["MODEL_TYPE"], "NARM")(cfg, net)
    with pytest.raises(RuntimeError, match="no cost was measured for NARM"):
        trainer.eval_collector.fixed_cost(net)  # measured when evaluation starts
    result = trainer.evaluate(test, load_best_model=False)
    fixed = trainer.eval_collector.fixed_cost(net)
    assert fixed.source == "measured" and fixed.macs > 0
    assert result["macs"] == fixed.macs
    assert fixed == measure.model_cost(net, measure.one_row_interaction(test))


class _PerUserModel(torch.nn.Module):
    """Stands in for a model with per-user structures."""

    def __init__(self, macs, blocks):
        super().__init__()
        self.macs, self.blocks = macs, blocks

    def evaluation_costs(self):
        return {"macs": self.macs, "params": [10.0] * len(self.macs), "blocks": self.blocks,
                "full_macs": 100.0, "candidate_params": 7.0}


def test_two_evaluations_never_mix_their_numbers(planted):
    dataset, config = planted
    config.update(metrics=["NDCG", *COST_METRICS, "MACsRatio"])
    cfg = Config(model="SASRec", dataset=dataset, config_dict=config)
    collector = CostCollector(cfg)
    from recbole.evaluator import Evaluator

    evaluator = Evaluator(cfg)
    collector.data_struct.set("rec.topk", torch.zeros(2, 11, dtype=torch.int))
    collector.model_collect(_PerUserModel([10.0, 30.0], [1.0, 3.0]))
    first = evaluator.evaluate(collector.get_data_struct())
    collector.data_struct.set("rec.topk", torch.zeros(3, 11, dtype=torch.int))
    collector.model_collect(_PerUserModel([50.0, 50.0, 80.0], [5.0, 5.0, 6.0]))
    second = evaluator.evaluate(collector.get_data_struct())
    assert (first["macs"], first["blocks"], first["macsratio"]) == (20.0, 2.0, 0.2)
    assert (second["macs"], second["blocks"], second["macsratio"]) == (60.0, 5.3333, 0.6)
    assert first["params"] == second["params"] == 10.0
    assert not any(key.startswith("model.") for key in collector.data_struct._data_dict)


# ----------------------------------------------------------------------------- plugin defaults

RECBOLE_RANKING = ["Recall", "MRR", "NDCG", "Hit", "Precision"]  # recbole/properties/overall.yaml


def test_defaults_add_cost_metrics_only_to_models_that_can_be_costed(planted):
    dataset, config = planted
    del config["metrics"], config["valid_metric"]
    sasrec = Config(model="SASRec", dataset=dataset, config_dict=config)
    assert sasrec["metrics"] == RECBOLE_RANKING + COST_METRICS
    assert sasrec["valid_metric"] == "MRR@10" and sasrec.cost_metrics_by_default

    root = Path(config["data_path"])
    write_atomic_files(root, "labelled", {"inter": (
        ["user_id:token", "item_id:token", "label:float"],
        [(f"u{u}", f"i{(u * 3 + t) % 7}", t % 2) for u in range(8) for t in range(5)])})
    fm = Config(model="FM", dataset="labelled",  # a context-aware model
                config_dict={k: v for k, v in config.items() if k != "load_col"})
    assert fm["metrics"] == ["AUC", "LogLoss"] + COST_METRICS
    assert fm["valid_metric"] == "AUC" and fm["eval_type"] == EvaluatorType.VALUE

    ease = Config(model="EASE", dataset=dataset, config_dict=config)  # scores with numpy
    assert ease["metrics"] == RECBOLE_RANKING and not ease.cost_metrics_by_default

    mine = Config(model="SASRec", dataset=dataset, config_dict=dict(config, metrics=["Hit"],
                                                          valid_metric="Hit@10"))
    assert mine["metrics"] == ["Hit"] and not mine.cost_metrics_by_default


def test_explicit_cost_metrics_of_an_uncostable_model_fail_at_config_time(planted):
    dataset, config = planted
    config["metrics"] = ["NDCG", "MACs"]
    with pytest.raises(ValueError, match=r"`metrics`.*\['MACs'\].*\[EASE\].*numpy"):
        Config(model="EASE", dataset=dataset, config_dict=config)


@pytest.mark.slow
def test_general_model_reports_its_one_user_cost(planted):
    """BPR scores with a dot product: 0 matrix-product MACs, one user row on the device."""
    dataset, config = planted
    del config["metrics"], config["valid_metric"]
    config.update(epochs=1, embedding_size=16)
    result = run_recbole_fofa(model="BPR", dataset=dataset, config_dict=config)
    test = result["test_result"]
    assert {f"{m.lower()}@10" for m in RECBOLE_RANKING} <= set(test)
    assert test["macs"] == 0 and test["blocks"] == 0
    assert test["params"] == 16  # its own user's embedding row
    assert test["candidate_params"] == 41 * 16  # 40 items + padding, 16 wide
    cfg, net, (train, _, _) = prepare("BPR", dataset, config_dict=config)
    measured = measure.model_cost(net, measure.one_row_interaction(train))
    assert measured.source == cost.SOURCE_ELEMENTWISE and measured.excluded_params == (
        net.user_embedding.weight.numel() - 16 + net.item_embedding.weight.numel())


def test_context_aware_model_is_costed_on_one_interaction(zoo):
    """DeepFM on one real row: its MLP's matrix products, beside AUC and LogLoss."""
    dataset, data_path = zoo
    config = {"data_path": data_path, "load_col": None, "threshold": {"rating": 4},
              "embedding_size": 4, "mlp_hidden_size": [8, 6], "epochs": 1, "state": "ERROR"}
    cfg, net, (train, valid, test) = prepare("DeepFM", dataset, config_dict=config)
    trainer = get_trainer(cfg["MODEL_TYPE"], "DeepFM")(cfg, net)
    trainer.fit(train, valid, saved=False)
    result = trainer.evaluate(test, load_best_model=False)
    assert {"auc", "logloss", "macs", "params", "blocks"} <= set(result)
    fixed = trainer.eval_collector.fixed_cost(net)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert fixed.source == "measured" and fixed.covers == "predict() on one interaction"
    assert result["macs"] == fixed.macs == sum(m.in_features * m.out_features for m in linears)
    assert fixed.macs == net.num_feature_field * 4 * 8 + 8 * 6 + 6 * 1


class LockedSASRec(SASRec):
    """A SASRec that cannot be copied, hence cannot be measured (like a model holding a lock)."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.lock = threading.Lock()


def _fit_and_test(config, dataset, model_class, caplog):
    cfg, net, (train, valid, test) = prepare("SASRec", dataset, config_dict=config)
    init_seed(cfg["seed"], cfg["reproducibility"])
    model = model_class(cfg, train._dataset)
    logging.getLogger().addHandler(caplog.handler)  # prepare() reset RecBole's logger
    trainer = get_trainer(cfg["MODEL_TYPE"], "SASRec")(cfg, model)
    valid_result = trainer.fit(train, valid, saved=False)
    return trainer, valid_result, trainer.evaluate(test, load_best_model=False)


def test_unmeasurable_model_drops_default_cost_metrics_and_runs_as_recbole(planted, caplog):
    dataset, config = planted
    del config["metrics"], config["valid_metric"]
    config.update(epochs=2, state="WARNING")
    trainer, valid, test = _fit_and_test(config, dataset, LockedSASRec, caplog)
    warnings = [r.getMessage() for r in caplog.records if "not reporting" in r.getMessage()]
    assert len(warnings) == 1
    assert "LockedSASRec" in warnings[0] and "cannot copy the model" in warnings[0]
    assert trainer.config["metrics"] == RECBOLE_RANKING
    assert not COST_KEYS & set(test) and "mrr@10" in test

    plain = dict(config, metrics=RECBOLE_RANKING)  # RecBole's defaults, no cost metrics
    _, plain_valid, plain_test = _fit_and_test(plain, dataset, SASRec, caplog)
    assert (valid, test) == (plain_valid, plain_test)


def test_explicit_cost_metrics_of_an_unmeasurable_model_fail_before_training(planted, caplog):
    dataset, config = planted
    config["metrics"] = ["NDCG", "MACs"]
    cfg, net, (train, valid, test) = prepare("SASRec", dataset, config_dict=config)
    trainer = get_trainer(cfg["MODEL_TYPE"], "SASRec")(cfg, LockedSASRec(cfg, train._dataset))
    with pytest.raises(cost.CostNotMeasurableError, match="LockedSASRec.*cannot copy"):
        trainer.fit(train, valid, saved=False)
    assert trainer.train_loss_dict == {}  # no epoch ran


def test_a_model_that_infers_only_after_training_is_measured_at_its_first_evaluation(planted):
    """RecBole's Pop has no counts before its first epoch, so it cannot run inference yet."""
    dataset, config = planted
    config.update(metrics=["NDCG", "MACs", "Params"], valid_metric="NDCG@10", epochs=1)
    cfg, net, (train, valid, test) = prepare("Pop", dataset, config_dict=config)
    with pytest.raises(cost.InferenceFailedError, match="Pop"):
        measure.model_cost(net, measure.one_row_interaction(train))
    trainer = get_trainer(cfg["MODEL_TYPE"], "Pop")(cfg, net)
    _, valid_result = trainer.fit(train, valid, saved=False)
    result = trainer.evaluate(test, load_best_model=False)
    fixed = trainer.eval_collector.fixed_cost(net)
    assert fixed.source == cost.SOURCE_ELEMENTWISE  # counts / the largest count
    assert valid_result["macs"] == result["macs"] == 0
    assert result["params"] == fixed.params == sum(p.numel() for p in net.parameters())
    assert result["ndcg@10"] > 0


class BrokenSASRec(SASRec):
    """A SASRec whose inference always fails (it trains)."""

    def predict(self, interaction):
        raise RuntimeError("no inference here")

    def full_sort_predict(self, interaction):
        raise RuntimeError("no inference here")


def test_explicit_cost_metrics_of_a_model_that_never_infers_fail_at_its_first_evaluation(planted):
    dataset, config = planted
    config.update(metrics=["NDCG", "MACs"], epochs=3)
    cfg, net, (train, valid, test) = prepare("SASRec", dataset, config_dict=config)
    trainer = get_trainer(cfg["MODEL_TYPE"], "SASRec")(cfg, BrokenSASRec(cfg, train._dataset))
    with pytest.raises(cost.InferenceFailedError, match="BrokenSASRec.*no inference here"):
        trainer.fit(train, valid, saved=False)
    assert len(trainer.train_loss_dict) == 1  # the first evaluation followed the first epoch


def test_default_cost_metrics_of_a_model_that_never_infers_are_dropped_at_its_first_evaluation(
        planted, caplog):
    dataset, config = planted
    del config["metrics"], config["valid_metric"]
    config.update(epochs=2, state="WARNING")
    with pytest.raises(RuntimeError, match="no inference here"):  # RecBole's own evaluation
        _fit_and_test(config, dataset, BrokenSASRec, caplog)
    warnings = [r.getMessage() for r in caplog.records if "not reporting" in r.getMessage()]
    assert len(warnings) == 1 and "BrokenSASRec" in warnings[0] and "no inference" in warnings[0]


class CountingSASRec(SASRec):
    """Counts the per-user recording hooks the trainer calls."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.calls = []

    def reset_evaluation_costs(self):
        self.calls.append("reset")

    def stop_evaluation_costs(self):
        self.calls.append("stop")


@pytest.mark.parametrize("metrics,expected", [(["NDCG"], ["stop"]),
                                              (["NDCG", "MACs"], ["reset", "stop"])])
def test_per_user_recording_runs_only_while_an_evaluation_needs_it(planted, metrics, expected):
    dataset, config = planted
    config["metrics"] = metrics
    cfg, _, (train, _, test) = prepare("SASRec", dataset, config_dict=config)
    model = CountingSASRec(cfg, train._dataset)
    trainer = get_trainer(cfg["MODEL_TYPE"], "SASRec")(cfg, model)
    trainer.evaluate(test, load_best_model=False)
    assert model.calls == expected
    model.calls.clear()
    with pytest.raises(FileNotFoundError):  # a failing evaluation still stops the recording
        trainer.evaluate(test, load_best_model=True, model_file="missing.pth")
    assert model.calls[-1] == "stop"
