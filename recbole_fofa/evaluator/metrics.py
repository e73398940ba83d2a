"""On-device cost as RecBole metrics: MACs, Params, Blocks and MACsRatio.

They are ordinary ``AbstractMetric`` subclasses, so ``metrics: [NDCG, Hit, MACs, Blocks]`` works in
any config (case-insensitively) and any of them can be a ``valid_metric`` (smaller is better). Their
inputs are the ``model.*`` keys that :class:`recbole_fofa.evaluator.CostCollector` fills after
each evaluation: one value per evaluated user for models with per-user structures (ForwardOFA), a
single value for models of fixed size. MACs are multiply-accumulates (FLOPs = 2 x MACs).
"""

import recbole.evaluator.register as registry
from recbole.evaluator.base_metric import AbstractMetric
from recbole.utils import EvaluatorType


class _CostMetric(AbstractMetric):
    """Mean of one collected per-user cost."""

    # Registered as RANKING; the plugin's Config leaves cost metrics out of RecBole's check that
    # all metrics share one type, so they also sit beside AUC/LogLoss (value metrics).
    metric_type = EvaluatorType.RANKING
    smaller = True
    key = ""  # result key, also the lowercased metric name

    def calculate_metric(self, dataobject):
        values = dataobject.get(self.metric_need[0]).double()
        return {self.key: round(float(values.mean()), self.decimal_place)}


class MACs(_CostMetric):
    """Mean per-user encoder MACs on the device (embedding lookup and scoring excluded)."""

    metric_need = ["model.macs"]
    key = "macs"


class Params(_CostMetric):
    """Mean per-user parameters the device holds, without the cached candidate embeddings.

    The candidates' embeddings (candidates x hidden size) are reported beside it as
    ``candidate_params``.
    """

    metric_need = ["model.params", "model.candidate_params"]
    key = "params"

    def calculate_metric(self, dataobject):
        result = super().calculate_metric(dataobject)
        candidates = dataobject.get("model.candidate_params").double().mean()
        result["candidate_params"] = round(float(candidates), self.decimal_place)
        return result


class Blocks(_CostMetric):
    """Mean number of kept blocks per user (a baseline's layer count)."""

    metric_need = ["model.blocks"]
    key = "blocks"


class MACsRatio(_CostMetric):
    """Mean per-user encoder MACs over the full network's (1.0 for a fixed-size baseline)."""

    metric_need = ["model.macs", "model.full_macs"]
    key = "macsratio"

    def calculate_metric(self, dataobject):
        macs = dataobject.get("model.macs").double().mean()
        full = dataobject.get("model.full_macs").double().mean()
        return {self.key: round(float(macs / full), self.decimal_place)}


COST_METRICS = (MACs, Params, Blocks, MACsRatio)
COST_KEYS = sorted({need for metric in COST_METRICS for need in metric.metric_need})
COST_METRIC_NAMES = frozenset(metric.__name__.lower() for metric in COST_METRICS)
# What the plugin's Config adds to a model type's RecBole default metrics when it can cost it.
DEFAULT_COST_METRICS = ("MACs", "Params", "Blocks")


def is_cost_metric(name):
    """Whether a ``metrics`` entry (any case) or a ``valid_metric`` is one of the cost metrics."""
    return str(name).split("@")[0].lower() in COST_METRIC_NAMES


def register_metrics():
    """Add the cost metrics to RecBole's registry, in place (idempotent).

    ``recbole.config.configurator`` and ``recbole.evaluator.evaluator`` imported these objects by
    name, so they must be updated, never rebound.
    """
    for metric in COST_METRICS:
        name = metric.__name__.lower()
        registry.metrics_dict[name] = metric
        registry.metric_information[name] = list(metric.metric_need)
        registry.metric_types[name] = metric.metric_type
        if metric.smaller and name not in registry.smaller_metrics:
            registry.smaller_metrics.append(name)
