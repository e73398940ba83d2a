"""A Collector that gathers each evaluated user's on-device cost from the model."""

from logging import getLogger

import torch

from recbole_fofa import compat
from recbole_fofa.evaluator import measure
from recbole_fofa.evaluator.metrics import COST_KEYS


class CostCollector(compat.TensorSafeCollector):
    """Fills the ``model.*`` keys the cost metrics need, after every evaluation.

    A model with per-user structures implements ``reset_evaluation_costs()`` (the plugin's trainers
    call it when an evaluation starts) and ``evaluation_costs()`` returning per-user arrays
    ``macs``, ``params``, ``blocks`` and the scalars ``full_macs`` and ``candidate_params`` for the
    users evaluated since (and forgetting them). Any other model has one constant cost, measured
    once by :meth:`measure` (the plugin's trainers call it before training or the first
    evaluation) and logged with its source. The ``model.*`` keys are replaced, never
    appended, and dropped after each evaluation, so evaluations never mix their numbers.
    """

    def __init__(self, config):
        super().__init__(config)
        self.needs_cost = any(self.register.need(key) for key in COST_KEYS)
        self._fixed = {}

    def measure(self, model, interaction):
        """Measure and keep the constant per-user cost of a fixed-size model, logging its
        source (see :func:`recbole_fofa.evaluator.measure.model_cost`)."""
        result = measure.model_cost(model, interaction)
        logger = getLogger()
        if result.uncounted_ops:
            logger.warning(
                f"{result.model}: its MACs are a lower bound; ops without a FLOP formula ran: "
                f"{', '.join(result.uncounted_ops)}"
            )
        logger.info(
            f"{result.model} on-device cost ({result.source}; {result.covers}): "
            f"MACs={result.macs:,} (FLOPs={result.flops:,}), Params={result.params:,}, "
            f"Blocks={result.blocks}, candidate Params={result.candidate_params:,}"
        )
        self._fixed[id(model)] = result
        return result

    def fixed_cost(self, model):
        """The constant per-user cost measured for ``model`` by :meth:`measure`."""
        if id(model) not in self._fixed:
            raise RuntimeError(
                f"no cost was measured for {type(model).__name__}: the plugin's trainers measure "
                "it when fit() or evaluate() starts (or call CostCollector.measure)"
            )
        return self._fixed[id(model)]

    def model_collect(self, model):
        if not self.needs_cost:
            return
        model = getattr(model, "module", model)  # unwrap DistributedDataParallel
        if hasattr(model, "evaluation_costs"):
            values = model.evaluation_costs()
        else:
            fixed = self.fixed_cost(model)
            values = {
                "macs": fixed.macs,
                "params": fixed.params,
                "blocks": fixed.blocks,
                "full_macs": fixed.macs,
                "candidate_params": fixed.candidate_params,
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

