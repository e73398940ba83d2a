"""What every trainer run through the plugin adds to RecBole's, for any model."""

import contextlib
import functools
import hashlib
import os
import time
from typing import List, NamedTuple

from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import set_color

from recbole_fofa import checks, distributed
from recbole_fofa.cost import CostNotMeasurableError, InferenceFailedError
from recbole_fofa.evaluator import measure
from recbole_fofa.evaluator.collector import CostCollector
from recbole_fofa.evaluator.metrics import is_cost_metric
from recbole_fofa.evaluator.per_user import PerUserEvaluator
from recbole_fofa.trainer import progress


def load_checkpoint(model, checkpoint, device=None, trust=False):
    """Load a plugin checkpoint into ``model``: its weights and other parameters (ForwardOFA's
    stage, ...). ``checkpoint``: a loaded dict, or a path read by
    :func:`~recbole_fofa.compat.load_checkpoint_file` (``trust``: config key
    ``trust_checkpoint``) onto ``device`` (under DDP by rank 0 and broadcast). Returns the
    checkpoint dict. The one reload every caller uses."""
    if not isinstance(checkpoint, dict):
        checkpoint = distributed.load_checkpoint(checkpoint, device, trust)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return checkpoint


def dataset_fingerprint(dataset):
    """What identifies the data a checkpoint was trained on (``dataset``: the training split):
    the dataset's name, its user, item and interaction counts, and a hash of its user and item
    tokens and its interactions (user and item ids), which catches other data of the same size."""
    digest = hashlib.sha256()
    for field in (dataset.uid_field, dataset.iid_field):
        digest.update("\n".join(map(str, dataset.field2id_token[field])).encode())
        digest.update(dataset.inter_feat[field].numpy().tobytes())
    return {"dataset": dataset.dataset_name, "users": int(dataset.user_num),
            "items": int(dataset.item_num), "interactions": len(dataset.inter_feat),
            "content": digest.hexdigest()}


#: Config keys of the run's environment (where it runs, shows and writes): a resumed run that
#: differs from its checkpoint only in these is the same run, and writes on to its file.
ENVIRONMENT_KEYS = frozenset({
    "device", "gpu_id", "use_gpu", "worker", "local_rank", "single_spec", "data_path",
    "trust_checkpoint", *distributed.DISTRIBUTED_KEYS, *checks.RUN_KEYS})


def resume_mismatches(checkpoint, config, model):
    """Why ``checkpoint`` cannot resume a run of ``config`` and ``model``: one phrase per
    difference in the model, the dataset's name, the method keys (:func:`checks.method_keys`)
    and the state dict's keys and shapes; empty when it can."""
    saved = checkpoint["config"]
    problems = []
    for key in ("model", "dataset"):
        if saved[key] != config[key]:
            problems.append(f"`{key}` is {saved[key]!r} there, {config[key]!r} here")
    if problems:
        return problems
    keys = sorted(k for k in checks.method_keys(config["model"]) if saved[k] != config[k])
    if keys:
        problems.append("method keys differ: " + ", ".join(
            f"`{k}` ({saved[k]!r} there, {config[k]!r} here)" for k in keys))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    shapes = sorted(k for k in ours.keys() & theirs.keys() if ours[k] != theirs[k])
    for what, names in (("missing there", sorted(ours.keys() - theirs.keys())),
                        ("only there", sorted(theirs.keys() - ours.keys())),
                        ("of other shapes", [f"{k} {theirs[k]} vs {ours[k]}" for k in shapes])):
        if names:
            more = f" (+{len(names) - 5} more)" if len(names) > 5 else ""
            problems.append(f"model weights {what}: {', '.join(names[:5])}{more}")
    return problems


def same_run(saved, config):
    """Whether the configs ``saved`` and ``config`` agree on every key apart from
    :data:`ENVIRONMENT_KEYS`."""
    ours, theirs = checks.plain_values(config), checks.plain_values(saved)
    return all(ours.get(k) == theirs.get(k) for k in (ours.keys() | theirs.keys())
               - ENVIRONMENT_KEYS)


def _stage_start(entries, stage):
    """Index where the trailing run of ``entries`` (tuples led by their stage) of ``stage``
    starts: the current stage's first epoch or validation, resumed ones included."""
    start = len(entries)
    while start > 0 and entries[start - 1][0] == stage:
        start -= 1
    return start


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
    given; a model that cannot run inference before it trains (RecBole's Pop counts items in its
    first epoch) is measured again when its first evaluation starts. If it cannot be measured,
    cost metrics the plugin added by default are dropped with one warning and the model runs
    exactly as in RecBole; cost metrics the user asked for raise
    :class:`~recbole_fofa.cost.CostNotMeasurableError` before the first epoch (before the first
    evaluation for a model measured then).
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
        #: where :meth:`keep_progress` writes the state after each validation (None: nowhere)
        self.progress_file = None
        #: ``(stage, epoch)`` of each resume from a progress file, in order
        self.resumes: List[tuple] = []
        self._pending = None  # a resumed progress state until ``fit`` restores its generators

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
        checkpoint = load_checkpoint(self.model, checkpoint_file, self.device,
                                     self.trust_checkpoint)
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

    def valid_curve(self):
        """``{stage: [valid score per validation]}`` of the stages trained here, in order: how a
        run got to its best (a run that stalls from its first epoch shows it)."""
        curve = {}
        for stage, score in self.valid_scores:
            curve.setdefault(stage, []).append(score)
        return curve

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

    def check_cost(self, data, before_training=False):
        """Measure the model's fixed cost on row 0 of ``data`` (once; see the class docstring).
        ``before_training``: a model whose inference fails now is measured again at the next
        call (the first evaluation) instead of failing."""
        if self._cost_checked:
            return
        model = getattr(self.model, "module", self.model)  # unwrap DistributedDataParallel
        if not self.eval_collector.needs_cost or hasattr(model, "evaluation_costs"):
            self._cost_checked = True
            return
        try:
            try:
                interaction = measure.one_row_interaction(data)
            except (TypeError, ValueError) as exc:
                raise CostNotMeasurableError(type(model).__name__, str(exc)) from exc
            self.eval_collector.measure(model, interaction)
            self._cost_checked = True
        except CostNotMeasurableError as err:
            if before_training and isinstance(err, InferenceFailedError):
                return
            self._cost_checked = True
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
        self.check_cost(train_data, before_training=True)
        self.check_resumed_dataset(train_data)
        stage = self._stage()
        first_epoch, first_valid = len(self.epoch_times), len(self.valid_scores)
        pending, self._pending = self._pending, None
        if pending is not None:  # the stage's epochs before the interruption count as its own
            first_epoch = _stage_start(self.epoch_times, stage)
            first_valid = _stage_start(self.valid_scores, stage)
            self._check_progress_data(pending)
            progress.restore_generators(pending["generators"], train_data)
            if pending["stage_done"]:  # that stage ended before the interruption
                self._record_stage_end(stage, first_epoch, first_valid)
                return self.best_valid_score, self.best_valid_result
        elif int(self.epochs) == 0:
            self.logger.warning(set_color(self.untrained_message(stage), "yellow"))

        def after_validation(epoch_idx, valid_score):
            if self.progress_file is not None:
                self.save_progress(train_data, epoch_idx)
            if callback_fn:
                callback_fn(epoch_idx, valid_score)

        result = super().fit(train_data, valid_data, verbose, saved, show_progress,
                             after_validation)
        self._record_stage_end(stage, first_epoch, first_valid)
        return result

    # ------------------------------------------------------------------ progress (resume)
    def keep_progress(self, path):
        """Write the run's progress to ``path`` after every validation (:mod:`.progress`); if
        ``path`` holds the progress of an interrupted run, resume it: the next ``fit`` goes on
        from its last validated epoch (a finished stage is not trained again) and the run ends
        with the numbers an uninterrupted one gives. The best checkpoint stays in the run's
        ``saved_model_file``, which the progress file names. One process only."""
        if self.config["single_spec"] is False:
            raise ValueError("keep_progress: resuming from a progress file runs in one process, "
                             "not under DDP (use `resume_checkpoint` there)")
        self.progress_file = os.fspath(path)
        state = progress.read(self.progress_file)
        if state is None:
            return None
        self._restore(state)
        self.best_valid_result = state["best_valid_result"] or None
        self.epoch_times = [EpochTime(*e) for e in state["epoch_times"]]
        self.valid_scores = [tuple(v) for v in state["valid_scores"]]
        self.stage_ends = [StageEnd(*e) for e in state["stage_ends"]]
        self.train_loss_dict = dict(state["train_loss"])
        self.saved_model_file = state["extra"]["saved_model_file"]
        self.restore_progress_extra(state["extra"])
        self.resumes.append((self._stage(), state["epoch"]))
        self._pending = state
        self.logger.info(f"{path}: resuming from epoch {state['epoch']} of stage "
                         f"{self._stage()!r}")
        return state

    def save_progress(self, train_data, epoch_idx):
        """Write the state after validating ``epoch_idx`` to :attr:`progress_file`."""
        done = self.cur_step > self.stopping_step or epoch_idx + 1 >= self.epochs
        extra = {"saved_model_file": self.saved_model_file,
                 "fingerprint": self.config.dataset_fingerprint,  # computed once, by fit
                 **self.progress_extra()}
        model = getattr(self.model, "module", self.model)
        progress.write(progress.capture(self, model, train_data, epoch_idx, done, extra),
                       self.progress_file)

    def progress_extra(self):
        """Hook: what a subclass keeps in the progress file beside the trainer's own state."""
        return {}

    def restore_progress_extra(self, extra):
        """Hook: restore what :meth:`progress_extra` kept."""

    def _check_progress_data(self, state):
        saved, current = state["extra"]["fingerprint"], self.config.dataset_fingerprint
        if saved != current:
            raise ValueError(f"{self.progress_file}: cannot resume this run from it: it was "
                             f"trained on other data ({saved} there, {current} here)")

    def untrained_message(self, stage):
        """What ``fit`` logs when it has no epoch to train (``epochs: 0``)."""
        return ("`epochs` = 0: the model is not trained; its evaluation scores the initialised "
                "(random) weights")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data:
            self.check_cost(eval_data)
        model = getattr(self.model, "module", self.model)
        # models with per-user structures record them only while an evaluation needs them
        if self.eval_collector.needs_cost and hasattr(model, "reset_evaluation_costs"):
            model.reset_evaluation_costs()
        try:
            if eval_data and load_best_model:  # the plugin's load in place of RecBole's bare one
                self.load_best_checkpoint(model_file)  # under DDP rank 0 reads, every rank gets it
                load_best_model = False
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        finally:
            if hasattr(model, "stop_evaluation_costs"):
                model.stop_evaluation_costs()

    @property
    def trust_checkpoint(self):
        """Config key ``trust_checkpoint``: load checkpoints with full unpickling (compat C1)."""
        return self.config["trust_checkpoint"] is True

    def resume_checkpoint(self, resume_file):
        """RecBole's resume (epoch, step, best score, weights, optimizer), read by
        :func:`load_checkpoint`'s loader. Refuses (ValueError naming the keys) a checkpoint of
        another model, dataset, method keys or weight shapes (:func:`resume_mismatches`); the
        dataset's fingerprint is compared when ``fit`` starts, before anything trains. Writes on
        to ``resume_file`` only when the run is the same (:func:`same_run`), else to this run's
        own checkpoint file."""
        resume_file = str(resume_file)
        checkpoint = distributed.load_checkpoint(resume_file, self.device, self.trust_checkpoint)
        model = getattr(self.model, "module", self.model)
        problems = resume_mismatches(checkpoint, self.config, model)
        if problems:
            raise ValueError(f"{resume_file}: cannot resume this run from it: "
                             + "; ".join(problems))
        self._resumed = (resume_file, getattr(checkpoint["config"], "dataset_fingerprint", None))
        if same_run(checkpoint["config"], self.config):
            self.saved_model_file = resume_file
        else:
            if os.path.abspath(self.saved_model_file) == os.path.abspath(resume_file):
                self.saved_model_file = "-resumed".join(os.path.splitext(resume_file))
            self.logger.info(f"{resume_file} was written with other settings: it is kept as it "
                             f"is, this run saves to {self.saved_model_file}")
        self._restore(checkpoint)
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def _restore(self, checkpoint):
        """What RecBole's resume restores (weights, the model's other parameters, optimizer,
        epoch, early-stopping step and best score), after :meth:`prepare_resume`; shared by
        :meth:`resume_checkpoint` and :meth:`keep_progress`."""
        model = getattr(self.model, "module", self.model)
        self.prepare_resume(checkpoint)  # before the weights: ForwardOFA enters the saved stage
        model.load_state_dict(checkpoint["state_dict"])
        model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]

    def prepare_resume(self, checkpoint):
        """Hook run before a checkpoint's weights and optimizer state are loaded."""

    def check_resumed_dataset(self, train_data):
        """Refuse to train on another dataset than the resumed checkpoint's (its fingerprint,
        :func:`dataset_fingerprint`); record this dataset's in the config, so that every
        checkpoint ``fit`` saves carries it."""
        current = dataset_fingerprint(train_data._dataset)
        resumed_file, saved = getattr(self, "_resumed", (None, None))
        self._resumed = (None, None)
        if saved is not None and saved != current:
            fields = ", ".join(f"{k} ({saved.get(k)!r} there, {current[k]!r} here)"
                               for k in current if saved.get(k) != current[k])
            raise ValueError(f"{resumed_file}: cannot resume this run from it: it was trained on "
                             f"other data: {fields}")
        self.config.dataset_fingerprint = current


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
