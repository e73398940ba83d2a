"""What every trainer run through the plugin adds to RecBole's, for any model."""

import functools

from recbole.trainer import Trainer as RecBoleTrainer

from recbole_fofa import compat
from recbole_fofa.evaluator.collector import CostCollector


class PluginTrainerMixin:
    """Reloads checkpoints on torch >= 2.6 and collects cost metrics after each evaluation.

    Mixed in front of a RecBole trainer class; RecBole's own loading and evaluation code runs
    unchanged.
    """

    collector_class = CostCollector

    def __init__(self, config, model):
        super().__init__(config, model)
        self.eval_collector = self.collector_class(config)
        if self.eval_collector.needs_cost and not hasattr(model, "evaluation_costs"):
            self.eval_collector.fixed_cost(model)  # a model that cannot be costed fails here

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        records = self.eval_collector.needs_cost and hasattr(self.model, "reset_evaluation_costs")
        if records:  # models with per-user structures record them for this evaluation only
            self.model.reset_evaluation_costs()
        try:
            with compat.trusted_checkpoint_loads():
                return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        finally:
            if hasattr(self.model, "stop_evaluation_costs"):
                self.model.stop_evaluation_costs()

    def resume_checkpoint(self, resume_file):
        with compat.trusted_checkpoint_loads():
            super().resume_checkpoint(resume_file)


class Trainer(PluginTrainerMixin, RecBoleTrainer):
    """RecBole's ``Trainer`` with the plugin's checkpoint loading and cost collection."""


@functools.cache
def plugin_trainer(base):
    """The plugin-aware version of a RecBole trainer class (``Trainer`` subclasses only).

    Trainers outside RecBole's ``Trainer`` hierarchy (decision trees) are returned unchanged.
    """
    if base is RecBoleTrainer:
        return Trainer
    if issubclass(base, PluginTrainerMixin) or not issubclass(base, RecBoleTrainer):
        return base
    return type(base.__name__, (PluginTrainerMixin, base), {"__module__": __name__})
