"""What every trainer run through the plugin adds to RecBole's, for any model."""

import contextlib
import functools
import os
import time
from typing import List, NamedTuple

from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import set_color

from recbole_fofa import compat, distributed
from recbole_fofa.cost import CostNotMeasurableError
from recbole_fofa.evaluator import measure
from recbole_fofa.evaluator.collector import CostCollector
from recbole_fofa.evaluator.metrics import is_cost_metric
from recbole_fofa.evaluator.per_user import PerUserEvaluator


def load_checkpoint(model, checkpoint, device=None):
    """Load a plugin checkpoint into ``model``: its weights and other parameters (ForwardOFA's
    stage, ...). ``checkpoint``: a loaded dict, or a path read with trust (it pickles the config:
    :func:`~recbole_fofa.compat.torch_load_trusted`) onto ``device`` (under DDP by rank 0 and
    broadcast). Returns the checkpoint dict. The one reload every caller uses."""
    if not isinstance(checkpoint, dict):
        checkpoint = distributed.load_checkpoint(checkpoint, device)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return checkpoint


class EpochTime(NamedTuple):
    """Wall seconds of one training epoch and the stage it trained ('train' for RecBole
    models; ForwardOFA's stage)."""

    stage: str
    seconds: float


class StageEnd(NamedTuple):
    """How one call of ``fit`` (one stage for ForwardOFA) ended: epochs trained of the epochs
    configured, the epoch (1-based, within the stage) whose valid score was best, and whether
    early stopping ended it before the cap."""

    stage: str
    epochs: int
    max_epochs: int
    best_epoch: int
    stopped_early: bool


class PluginTrainerMixin:
    """Reloads checkpoints on torch >= 2.6 and collects cost metrics after each evaluation.

    Mixed in front of a RecBole trainer class; RecBole's own loading and evaluation code runs
    unchanged. A fixed-size model's cost is measured once, before training (or before the first
    evaluation when ``fit`` is never called), on one real interaction of the data the trainer is
    given. If it cannot be measured, cost metrics the plugin added by default are dropped with one
    warning and the model runs exactly as in RecBole; cost metrics the user asked for raise
    :class:`~recbole_fofa.cost.CostNotMeasurableError` before the first epoch.
    """

    collector_class = CostCollector
    #: Under DDP, whether ``evaluate`` gathers the ranks' results (False while each rank
    #: evaluates something of its own: the parallel subnet search).
    reduce_results = True

    def __init__(self, config, model):
        if config["single_spec"] is False:
            self._init_distributed(config, model)
        else:
            super().__init__(config, model)
        self.eval_collector = self.collector_class(config)
        self._cost_checked = False
        #: every training epoch's :class:`EpochTime`, in order (the public timing hook)
        self.epoch_times: List[EpochTime] = []
        #: every validation's (stage, valid score), in order
        self.valid_scores: List[tuple] = []
        #: how each ``fit`` ended (:class:`StageEnd`), in order
        self.stage_ends: List[StageEnd] = []
        #: RecBole's evaluator that also keeps per-user metric values (``evaluator.per_user``)
        self.evaluator = PerUserEvaluator(config)

    # ------------------------------------------------------------------ DDP
    def _init_distributed(self, config, model):
        """RecBole's ``__init__`` with the plugin's DDP wrap (CPU/gloo too), a tensorboard writer
        on rank 0 only, and rank 0's checkpoint file name on every rank."""
        # ranks would race in RecBole's exists-then-mkdir of the checkpoint folder
        os.makedirs(config["checkpoint_dir"], exist_ok=True)
        config["single_spec"] = True  # RecBole's own wrap is GPU-only: skip it, wrap below
        try:
            with (distributed.no_tensorboard() if not distributed.is_main_process()
                  else contextlib.nullcontext()):
                super().__init__(config, model)
        finally:
            config["single_spec"] = False
        self._trainable = None
        self.wrap_distributed()
        # names carry the local time in seconds, which the ranks need not share
        self.saved_model_file = distributed.broadcast_object(self.saved_model_file)

    def wrap_distributed(self):
        """(Re)build the DDP wrapper when the set of trainable parameters changed (DDP reduces
        the parameters that required a gradient when it was built)."""
        if self.config["single_spec"] is not False:
            return
        trainable = tuple(id(p) for p in self.model.parameters() if p.requires_grad)
        if trainable != self._trainable:
            self.model, self.distributed_model = distributed.wrap_model(self.model, self.config)
            self._trainable = trainable

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """Rank 0 writes a checkpoint that reloads in one process; the others wait for it."""
        if self.config["single_spec"] is not False:
            return super()._save_checkpoint(epoch, verbose=verbose, **kwargs)
        if distributed.is_main_process():
            config = self.config
            self.config = distributed.portable_config(config)
            try:
                super()._save_checkpoint(epoch, verbose=verbose, **kwargs)
            finally:
                self.config = config
        distributed.barrier()

    def load_best_checkpoint(self, model_file=None):
        """Load the best checkpoint (``model_file`` or this run's) into the model: under DDP read
        by rank 0 and broadcast to every rank. Returns the checkpoint."""
        checkpoint_file = model_file or self.saved_model_file
        checkpoint = load_checkpoint(self.model, checkpoint_file, self.device)
        self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return checkpoint

    def _train_epoch(self, *args, **kwargs):
        """RecBole's epoch, its wall time appended to :attr:`epoch_times`."""
        stage = str(getattr(getattr(self.model, "module", self.model), "stage", "train"))
        start = time.perf_counter()
        result = super()._train_epoch(*args, **kwargs)
        self.epoch_times.append(EpochTime(stage, time.perf_counter() - start))
        return result

    def _stage(self):
        return str(getattr(getattr(self.model, "module", self.model), "stage", "train"))

    def _valid_epoch(self, *args, **kwargs):
        """RecBole's validation, its score appended to :attr:`valid_scores`."""
        score, result = super()._valid_epoch(*args, **kwargs)
        self.valid_scores.append((self._stage(), float(score)))
        return score, result

    def per_user_results(self):
        """``{metric@k: [value per user]}`` of the last evaluation, in RecBole's lower-case
        names, whose means are its reported top-k metrics (this process's users under DDP)."""
        return {key: values.tolist() for key, values in self.evaluator.per_user.items()}

    def training_summary(self):
        """How training ended, per stage: a list of :class:`StageEnd` as dicts."""
        return [end._asdict() for end in self.stage_ends]

    def _record_stage_end(self, stage, first_epoch, first_valid):
        epochs = sum(1 for e in self.epoch_times[first_epoch:] if e.stage == stage)
        scores = [s for st, s in self.valid_scores[first_valid:] if st == stage]
        best = 0
        if scores:  # RecBole's early stopping keeps the later of equal scores
            sign = 1 if self.valid_metric_bigger else -1
            index = max(range(len(scores)), key=lambda i: (sign * scores[i], i))
            best = (index + 1) * max(int(self.eval_step), 1)  # a validation every eval_step
        self.stage_ends.append(StageEnd(stage, epochs, int(self.epochs), best,
                                        epochs < int(self.epochs)))

    def _map_reduce(self, result, num_sample):
        if not self.reduce_results:
            return result
        return super()._map_reduce(result, num_sample)

    def check_cost(self, data):
        """Measure the model's fixed cost on row 0 of ``data`` (once; see the class docstring)."""
        if self._cost_checked:
            return
        self._cost_checked = True
        model = getattr(self.model, "module", self.model)  # unwrap DistributedDataParallel
        if not self.eval_collector.needs_cost or hasattr(model, "evaluation_costs"):
            return
        try:
            try:
                interaction = measure.one_row_interaction(data)
            except (TypeError, ValueError) as exc:
                raise CostNotMeasurableError(type(model).__name__, str(exc)) from exc
            self.eval_collector.measure(model, interaction)
        except CostNotMeasurableError as err:
            if not getattr(self.config, "cost_metrics_by_default", False):
                raise
            if is_cost_metric(self.config["valid_metric"]):
                raise CostNotMeasurableError(
                    err.model_name, f"{err.reason}; `valid_metric` is "
                    f"{self.config['valid_metric']!r}, a cost metric") from err
            self._drop_cost_metrics(err)

    def _drop_cost_metrics(self, err):
        """Run without the default cost metrics: RecBole's own metric list and collector."""
        dropped = [name for name in self.config["metrics"] if is_cost_metric(name)]
        self.config["metrics"] = [n for n in self.config["metrics"] if not is_cost_metric(n)]
        self.config.cost_metrics_by_default = False
        self.eval_collector = self.collector_class(self.config)
        self.evaluator = PerUserEvaluator(self.config)
        self.logger.warning(set_color(
            f"{err.model_name}: not reporting {', '.join(dropped)}: its cost cannot be measured "
            f"({err.reason}). It trains and evaluates as in RecBole.", "yellow"))

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        self.check_cost(train_data)
        stage, first_epoch, first_valid = self._stage(), len(self.epoch_times), len(
            self.valid_scores)
        result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        self._record_stage_end(stage, first_epoch, first_valid)
        return result

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data:
            self.check_cost(eval_data)
        model = getattr(self.model, "module", self.model)
        # models with per-user structures record them only while an evaluation needs them
        if self.eval_collector.needs_cost and hasattr(model, "reset_evaluation_costs"):
            model.reset_evaluation_costs()
        if eval_data and load_best_model and self.config["single_spec"] is False:
            self.load_best_checkpoint(model_file)  # rank 0 reads, every rank gets it
            load_best_model = False
        try:
            with compat.trusted_checkpoint_loads():
                return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        finally:
            if hasattr(model, "stop_evaluation_costs"):
                model.stop_evaluation_costs()

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
