"""Cost metrics in RecBole's registry, the cost collector, and baselines reporting their cost."""

import pytest
import recbole.evaluator.register as registry
import torch
from recbole.config.configurator import metric_types as config_metric_types
from recbole.evaluator.evaluator import metrics_dict as evaluator_metrics
from recbole.model.sequential_recommender import SASRec

from recbole_fofa import Config, cost, get_trainer, run_recbole_fofa
from recbole_fofa.evaluator import CostCollector, register_metrics
from recbole_fofa.quick_start import prepare

COST_METRICS = ["MACs", "Params", "Blocks"]


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


@pytest.mark.parametrize("model", ["SASRec", "GRU4Rec"])
def test_baselines_report_their_cost_beside_accuracy(planted, model):
    dataset, config = planted
    config.update(epochs=1, embedding_size=16, metrics=["NDCG", "Hit", *COST_METRICS, "MACsRatio"])
    result = run_recbole_fofa(model=model, dataset=dataset, config_dict=config)
    test = result["test_result"]
    assert {"ndcg@10", "hit@10", "macs", "params", "blocks", "macsratio"} <= set(test)

    cfg, net, _ = prepare(model, dataset, config_dict=config)
    expected = cost.model_cost(net)
    assert expected.source == "analytic"
    assert test["macs"] == expected.macs > 0
    assert test["params"] == expected.params > 0
    assert test["blocks"] == expected.blocks >= 1
    assert test["macsratio"] == 1.0
    assert test["candidate_params"] == net.n_items * 16
    if model == "SASRec":  # cross-check the analytic count with the measured matmuls
        seq = torch.ones(1, cfg["MAX_ITEM_LIST_LENGTH"], dtype=torch.long)
        length = torch.tensor([cfg["MAX_ITEM_LIST_LENGTH"]])
        assert cost.measure_macs(net.eval().forward, seq, length) == test["macs"]


def test_measured_baselines_are_labelled_and_unmeasurable_ones_fail_clearly(planted, caplog):
    dataset, config = planted
    config.update(metrics=["NDCG", "MACs"], embedding_size=16)
    cfg, net, (train, valid, test) = prepare("NARM", dataset, config_dict=config)
    trainer = get_trainer(cfg["MODEL_TYPE"], "NARM")(cfg, net)
    fixed = trainer.eval_collector.fixed_cost(net)
    assert fixed.source == "measured" and fixed.macs > 0
    assert trainer.evaluate(test, load_best_model=False)["macs"] == fixed.macs

    class Constant(SASRec):
        def predict(self, interaction):
            return torch.zeros(len(interaction))

    cfg, _, (train, _, _) = prepare("SASRec", dataset, config_dict=config)
    constant = Constant(cfg, train._dataset)
    with pytest.raises(cost.CostNotMeasurableError, match="Constant.*0 MACs"):
        get_trainer(cfg["MODEL_TYPE"], "SASRec")(cfg, constant)


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
