"""Per-user values of RecBole's top-k metrics, from the data RecBole itself averages.

RecBole's top-k metrics build a [users, max(topk)] matrix (column k-1 is the metric at k for each
user) and report its column means, rounded to ``metric_decimal_place``. Paired tests over users
need those per-user values; :class:`PerUserEvaluator` keeps them beside the usual result, so their
mean is exactly the reported metric before rounding.
"""

import inspect
from collections import OrderedDict

import numpy as np
from recbole.evaluator.base_metric import TopkMetric
from recbole.evaluator.evaluator import Evaluator

__all__ = ["PerUserEvaluator", "per_user_topk"]


def per_user_topk(metric: TopkMetric, dataobject) -> np.ndarray:
    """[users, max(topk)] values of one RecBole top-k metric on collected data ``dataobject``."""
    pos_index, pos_len = metric.used_info(dataobject)
    # RecBole's metric_info takes (pos_index) or (pos_index, pos_len) depending on the metric
    if len(inspect.signature(metric.metric_info).parameters) == 2:
        return np.asarray(metric.metric_info(pos_index, pos_len), dtype=np.float64)
    return np.asarray(metric.metric_info(pos_index), dtype=np.float64)


class PerUserEvaluator(Evaluator):
    """RecBole's ``Evaluator`` that also keeps, after each :meth:`evaluate`, the per-user values of
    every top-k metric in :attr:`per_user` (``{"ndcg@10": array [users]}``, RecBole's lower-case
    keys), in the order of the evaluated users."""

    def __init__(self, config):
        super().__init__(config)
        self.per_user = OrderedDict()

    def evaluate(self, dataobject):
        result = super().evaluate(dataobject)
        self.per_user = OrderedDict()
        for name, metric in self.metric_class.items():
            if isinstance(metric, TopkMetric):
                values = per_user_topk(metric, dataobject)
                for k in metric.topk:
                    self.per_user[f"{name}@{k}"] = values[:, k - 1]
        return result
