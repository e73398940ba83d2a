"""A Collector that gathers each evaluated user's on-device cost from the model."""

from logging import getLogger

import torch

from recbole_fofa import compat, cost
from recbole_fofa.evaluator.metrics import COST_KEYS


class CostCollector(compat.TensorSafeCollector):
    """Fills the ``model.*`` keys the cost metrics need, after every evaluation.

    A model with per-user structures implements ``reset_evaluation_costs()`` (the plugin's trainers
    call it when an evaluation starts) and ``evaluation_costs()`` returning per-user arrays
    ``macs``, ``params``, ``blocks`` and the scalars ``full_macs`` and ``candidate_params`` for the
    users evaluated since (and forgetting them). Any other model has one constant
    cost, from :func:`recbole_fofa.cost.model_cost`: analytic where it has a formula, otherwise
    measured with ``FlopCounterMode`` and logged as such. The ``model.*`` keys are replaced, never
    appended, and dropped after each evaluation, so evaluations never mix their numbers.
    """

    def __init__(self, config):
        super().__init__(config)
        self.needs_cost = any(self.register.need(key) for key in COST_KEYS)
        self._fixed = {}

    def fixed_cost(self, model):
        """The constant per-user cost of a fixed-size model (computed and logged once)."""
        key = id(model)
        if key not in self._fixed:
            result = cost.model_cost(model)
            if result.uncounted_ops:
                getLogger().warning(
                    f"{result.model}: MACs measured with FlopCounterMode are a lower bound; "
                    f"ops without a FLOP formula ran: {', '.join(result.uncounted_ops)}"
                )
            getLogger().info(
                f"{result.model} on-device cost ({result.source}): MACs={result.macs:,} "
                f"(FLOPs={result.flops:,}), Params={result.params:,}, Blocks={result.blocks}"
            )
            self._fixed[key] = result
        return self._fixed[key]

    def model_collect(self, model):
        if not self.needs_cost:
            return
        model = getattr(model, "module", model)  # unwrap DistributedDataParallel
        if hasattr(model, "evaluation_costs"):
            values = model.evaluation_costs()
        else:
            fixed = self.fixed_cost(model)
            n_items = getattr(model, "n_items", 0)
            values = {
                "macs": fixed.macs,
                "params": fixed.params,
                "blocks": fixed.blocks,
                "full_macs": fixed.macs,
                "candidate_params": cost.candidate_params(n_items, _hidden_size(model)),
            }
        for name, value in values.items():
            tensor = torch.as_tensor(value, dtype=torch.float64).reshape(-1).cpu()
            self.data_struct.set(f"model.{name}", tensor)

    def get_data_struct(self):
        struct = super().get_data_struct()
        for key in COST_KEYS:
            if key in self.data_struct:
                del self.data_struct[key]
        return struct


def _hidden_size(model):
    """Width of the item embeddings a device caches for scoring."""
    for attr in ("hidden_size", "embedding_size"):
        if isinstance(getattr(model, attr, None), int):
            return getattr(model, attr)
    return model.item_embedding.embedding_dim
