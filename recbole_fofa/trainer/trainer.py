"""ForwardOFATrainer: supernet stage, then controller + mapper stage, on RecBole's Trainer; and
the subnet search for a list of device budgets (:meth:`ForwardOFATrainer.search`)."""

import math
import os
import time

import numpy as np
from recbole.utils import set_color

from recbole_fofa import checks, distributed
from recbole_fofa.model import Stage
from recbole_fofa.search import SearchSettings, build_space
from recbole_fofa.search import search as run_search
from recbole_fofa.search.estimator import PredictedQuality, SubnetEstimator
from recbole_fofa.search.oracle import align_users, route_by_valid
from recbole_fofa.trainer.base import Trainer, dataset_fingerprint

#: (SASRec key, ForwardOFA key) pairs that must agree for ``backbone_init`` (the same network)
SASREC_SHAPE_KEYS = (("n_layers", "n_blocks"), ("hidden_size", "hidden_size"),
                     ("inner_size", "inner_size"), ("n_heads", "n_heads"),
                     ("hidden_act", "hidden_act"), ("layer_norm_eps", "layer_norm_eps"),
                     ("MAX_ITEM_LIST_LENGTH", "MAX_ITEM_LIST_LENGTH"))


class ForwardOFATrainer(Trainer):
    """Two stages on RecBole's ``fit``: early stopping, checkpoints and resume work in each.

    Stage 1 (``supernet_epochs``) trains the supernet with sandwich sub-networks (the full network
    alone for its first ``supernet_full_epochs``); stage 2
    (``epochs``) trains the structure controller and the mapper, the backbone at
    ``learning_rate * backbone_lr_scale`` (0 freezes it), with the Gumbel temperature annealed
    from ``tau_start`` to ``tau_end`` over ``tau_anneal_epochs``. The best checkpoint of each stage
    is kept in the same file, so after ``fit`` it holds the best stage-2 model.

    Building the trainer leaves the model as it is (stage, ``requires_grad``, sub-network space);
    a stage is applied to the model when training enters it (:meth:`enter_stage`, ``fit``).
    Public hooks: :attr:`epoch_times` (every epoch's seconds and stage) and
    :attr:`stage1_backbone` (the backbone stage 2 started from).
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.supernet_epochs = config["supernet_epochs"]
        self.adapt_epochs = config["epochs"]
        #: the backbone state at the end of stage 1 (the best supernet), captured when ``fit``
        #: enters stage 2; None until then
        self.stage1_backbone = None
        # 'block' keeps the model's own block-mask sampling; other spaces are sampled by the
        # supernet stage, so that every sub-network the search may pick was trained
        self.subnet_space = (None if config["search_space"] in (None, "block")
                             else build_space(config, model.shape))
        self._schedule(model.stage)  # a trained (or reloaded) model keeps its stage

    # ------------------------------------------------------------------ stages
    def enter_stage(self, stage):
        """Put the model and this trainer into ``stage`` (a :class:`Stage` or its string): the
        model's stage, its trainable parameters and sampled space; the epochs, early stopping
        state and optimizer of the stage. ``fit`` calls it when stage 2 starts."""
        stage = Stage.of(stage)
        self._prepare_model(stage)
        self._schedule(stage)

    def _prepare_model(self, stage):
        """What training ``stage`` changes on the model; the DDP wrapper follows the trainable
        parameters."""
        model = self.model
        model.stage = stage
        model.subnet_space = self.subnet_space
        train_backbone = stage is Stage.SUPERNET or self.config["backbone_lr_scale"] > 0
        for parameter in model.backbone_parameters():
            parameter.requires_grad_(train_backbone)
        self.wrap_distributed()  # DDP reduces what was trainable when it was built

    def _schedule(self, stage):
        """This trainer's epochs, early-stopping state and optimizer for ``stage``."""
        stage = Stage.of(stage)
        self.epochs = self.supernet_epochs if stage is Stage.SUPERNET else self.adapt_epochs
        self.eval_step = min(self.config["eval_step"], max(self.epochs, 1))
        self.start_epoch, self.cur_step = 0, 0
        self.best_valid_score = -math.inf if self.valid_metric_bigger else math.inf
        self.best_valid_result = None
        self.optimizer = self._build_stage_optimizer(stage)

    def _build_stage_optimizer(self, stage):
        if stage is Stage.SUPERNET:
            return self._build_optimizer(params=self.model.parameters())
        scale = self.config["backbone_lr_scale"]
        backbone = list(self.model.backbone_parameters())
        ids = {id(parameter) for parameter in backbone}
        groups = [{"params": [p for p in self.model.parameters() if id(p) not in ids]}]
        if scale > 0:
            groups.append({"params": backbone, "lr": self.learning_rate * scale})
        return self._build_optimizer(params=groups)

    def temperature(self, epoch_idx):
        """Gumbel-sigmoid temperature of stage-2 epoch ``epoch_idx`` (exponential annealing)."""
        start, end = self.config["tau_start"], self.config["tau_end"]
        return start * (end / start) ** self._anneal_progress(epoch_idx)

    def _anneal_progress(self, epoch_idx):
        """How far stage-2 epoch ``epoch_idx`` is through ``tau_anneal_epochs``, in [0, 1]."""
        span = self.config["tau_anneal_epochs"]
        return 1.0 if span == 0 else min(epoch_idx / span, 1.0)

    def noise_scale(self, epoch_idx):
        """Scale of the Gumbel noise in stage-2 epoch ``epoch_idx``: from 1 to
        ``gumbel_noise_end``, linearly over ``tau_anneal_epochs`` (1 throughout by default)."""
        return 1.0 + (self.config["gumbel_noise_end"] - 1.0) * self._anneal_progress(epoch_idx)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        self._prepare_model(self.model.stage)
        # a fresh run whose stage 2 does not start from a given supernet (stage1_backbone)
        fresh = (self._pending is None and self.start_epoch == 0 and self.stage1_backbone is None
                 and (self.model.stage is Stage.SUPERNET or self.supernet_epochs == 0))
        if fresh and self.config["backbone_init"]:
            self.init_backbone(train_data)
        if self.model.stage is Stage.SUPERNET:
            self.logger.info(set_color(f"stage 1: supernet ({self.epochs} epochs)", "blue"))
            super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
            if saved and valid_data:
                self.load_best_checkpoint()  # continue from the best supernet
            self.stage1_backbone = self.model.backbone_state_dict()
            self.enter_stage(Stage.ADAPT)
        self.logger.info(set_color(f"stage 2: controller + mapper ({self.epochs} epochs)", "blue"))
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def init_backbone(self, train_data):
        """Start the supernet from the SASRec checkpoint of config key ``backbone_init``
        (read like every checkpoint, ``trust_checkpoint`` applying): the same sizes and, where
        the checkpoint records it, the same training data."""
        path = self.config["backbone_init"]
        checkpoint = distributed.load_checkpoint(path, self.device, self.trust_checkpoint)
        saved = checkpoint.get("config")
        if saved is None or saved["model"] != "SASRec":
            raise ValueError(f"config key `backbone_init` = {path!r}: not a SASRec checkpoint "
                             f"(model {None if saved is None else saved['model']!r})")
        fingerprint = getattr(saved, "dataset_fingerprint", None)
        if fingerprint is not None and fingerprint != dataset_fingerprint(train_data._dataset):
            raise ValueError(f"config key `backbone_init` = {path!r}: that SASRec was trained "
                             "on other data")
        wrong = [f"`{theirs}` {saved[theirs]!r} there, `{ours}` {self.config[ours]!r} here"
                 for theirs, ours in SASREC_SHAPE_KEYS if saved[theirs] != self.config[ours]]
        if wrong:
            raise ValueError(f"config key `backbone_init` = {path!r}: the SASRec is not this "
                             "supernet: " + "; ".join(wrong))
        self.model.load_sasrec_backbone(checkpoint["state_dict"])
        self.logger.info(set_color("stage 1", "blue") + f": the supernet starts from {path}")

    def untrained_message(self, stage):
        if Stage.of(stage) is Stage.SUPERNET:
            return ("`supernet_epochs` = 0 for stage 1: the supernet is not trained here; stage 2 "
                    "starts from its initialised weights")
        return ("`epochs` = 0: stage 2 is not trained; the evaluation scores an untrained "
                "structure controller and mapper (the kept blocks and their generated weights "
                "are those of the initialised stage 2)")

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        model = self.model
        model.reset_kept_blocks()
        if model.stage is Stage.SUPERNET:
            model.supernet_epoch = epoch_idx
        else:
            model.tau = self.temperature(epoch_idx)
            model.gumbel_noise = self.noise_scale(epoch_idx)
        losses = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        if model.stage is Stage.ADAPT:
            rec_loss, sparsity_loss = losses
            self.logger.info(
                set_color(f"epoch {epoch_idx} adapt", "green")
                + f": rec loss {rec_loss:.4f}, sparsity loss {sparsity_loss:.4f}, "
                f"mean kept blocks {model.mean_kept_blocks():.3f}, tau {model.tau:.3f}"
            )
        return losses

    # ------------------------------------------------------------------ subnet search
    @property
    def search_result_file(self):
        """``<checkpoint_dir>/<model>-<dataset>-search.json``."""
        name = f"{self.config['model']}-{self.config['dataset']}-search.json"
        return os.path.join(self.config["checkpoint_dir"], name)

    def search(self, valid_data, test_data=None, budgets=None, show_progress=None):
        """The best fixed sub-network for each budget, by valid ``search_metric``; a
        :class:`~recbole_fofa.search.SearchResult`, also written to :attr:`search_result_file`.

        ``budgets`` (default ``search_budgets``): fractions of the full encoder or ``"400K
        MACs"`` strings. The space, strategy, estimator and evolution settings come from the
        ``search_*`` keys (docs/search.md). Each budget's sub-network is then evaluated with
        RecBole's evaluator on the full valid split and on ``test_data`` (every configured
        metric, MACs included), and so is the per-user controller at that budget
        (``model.budget``), for comparison at equal cost. Uses the model as it is (no checkpoint
        is loaded).
        """
        config, model = self.config, getattr(self.model, "module", self.model)
        show_progress = config["show_progress"] if show_progress is None else show_progress
        budgets = config["search_budgets"] if budgets is None else list(budgets)
        if budgets is None:
            raise ValueError("no budgets to search: set config key `search_budgets` (e.g. "
                             "[0.3, 0.6, 1.0]) or pass budgets=[...]")
        checks.MODEL_CHECKS["ForwardOFA"]["search_budgets"]("search_budgets", budgets)
        requested = {model.shape.budget_macs(b, "search_budgets"): b for b in budgets}
        seed = config["search_seed"] if config["search_seed"] is not None else config["seed"]
        space = build_space(config, model.shape)
        estimator = SubnetEstimator(self, valid_data, config["search_metric"],
                                    config["search_eval_users"], seed)
        self.logger.info(
            set_color("subnet search", "blue") + f": {len(budgets)} budgets, {space.name} space "
            f"({space.size():,} sub-networks), strategy {config['search_strategy']}, "
            f"{config['search_metric']} on {estimator.users} valid users"
        )
        start = time.perf_counter()
        quality = estimator
        if config["search_predictor"]:
            estimator.fit_predictor(space, config["search_predictor_samples"],
                                    config["search_predictor_min_rank_corr"])
            if estimator.predictor_report.used:
                quality = PredictedQuality(estimator)  # rank by predictions, then measure
        result = run_search(space, quality, list(requested), config["search_strategy"],
                            SearchSettings.from_config(config), seed, progress=show_progress)
        if quality is not estimator:
            result = quality.measure(result)
        search_seconds = time.perf_counter() - start
        report = estimator.predictor_report
        result.settings = {  # how quality was measured, beside the evolution settings
            **result.settings, "metric": config["search_metric"],
            "eval_users": config["search_eval_users"], "valid_users": estimator.users,
            "predictor": report.to_dict() if report is not None else None,
            "ranked_by": "predictor" if quality is not estimator else "measured scores",
            "predictions": getattr(quality, "predictions", 0),
            "search_seconds": search_seconds, "valid_evaluations": estimator.evaluations,
        }
        result.budgets = [
            self._evaluate_budget(entry, requested[entry.budget_macs], valid_data, test_data)
            for entry in result.budgets
        ]
        path = self.search_result_file
        if distributed.is_main_process():  # in a process group every rank holds the same result
            result.to_json(path)
        self.search_estimator = estimator
        self.logger.info(
            set_color("subnet search", "blue") + f": {result.strategy} took "
            f"{search_seconds:.2f}s, {estimator.evaluations} valid evaluations "
            f"({estimator.seconds:.2f}s of them); written to {path}\n"
            + search_table(result, config["search_metric"])
        )
        return result

    def _evaluate_budget(self, entry, budget, valid_data, test_data):
        """``entry`` with the searched sub-network's valid and test results and the controller's
        at the same budget added to its ``extra``."""
        model = getattr(self.model, "module", self.model)
        metric = self.config["search_metric"].lower()

        def evaluate(data):
            if not data:
                return None
            return {k: float(v) for k, v in self.evaluate(data, load_best_model=False).items()}

        with model.active_subnet(entry.config):
            valid, test = evaluate(valid_data), evaluate(test_data)
        cheapest_block = model.controller_min_macs
        if model.stage is not Stage.ADAPT:
            controller = {"skipped": f"the model is in stage '{model.stage}': its structure "
                                     "controller is not trained"}
        elif entry.budget_macs < cheapest_block:
            controller = {"skipped": f"the budget is below one full block ({cheapest_block:,} "
                                     "MACs), the least the controller can keep"}
        else:
            with model.budget(entry.budget_macs):
                controller_valid, controller_test = evaluate(valid_data), evaluate(test_data)
            controller = {"valid_score": controller_valid[metric],
                          "valid_result": controller_valid, "test_result": controller_test}
        return entry.with_extra(budget=budget, valid_result=valid, test_result=test,
                                controller=controller)

    def routing_oracle(self, valid_data, test_data, max_macs=None):
        """Per-user routing by each user's valid item (:mod:`recbole_fofa.search.oracle`): every
        sub-network of the search space (at most ``max_macs`` MACs) is evaluated on valid and
        test with its generated parameters; each user takes the one with the best valid
        ``search_metric`` (ties: the cheaper). Returns the oracle's test metrics, per-user test
        values, mean MACs, users per sub-network and the users that tied on valid everywhere.
        Costs two evaluations per sub-network."""
        model = getattr(self.model, "module", self.model)
        metric = self.config["search_metric"].lower()
        space = build_space(self.config, model.shape)
        configs = space.enumerate()
        macs = space.cost(configs)
        if max_macs is not None:
            configs = [c for c, m in zip(configs, macs) if m <= max_macs]
            macs = [m for m in macs if m <= max_macs]
        if not configs:
            raise ValueError(f"routing oracle: no sub-network within {max_macs:,} MACs")
        order = align_users(_eval_users(valid_data), _eval_users(test_data))
        valid, test = [], {}
        for cfg in configs:
            with model.active_subnet(cfg):
                self.evaluate(valid_data, load_best_model=False)
                valid.append(self.evaluator.per_user[metric][order])
                self.evaluate(test_data, load_best_model=False)
                for key, values in self.evaluator.per_user.items():
                    test.setdefault(key, []).append(values)
        return route_by_valid(np.stack(valid), {k: np.stack(v) for k, v in test.items()}, macs,
                              [c.key for c in configs])

    # ------------------------------------------------------------------ checkpoints
    def prepare_resume(self, checkpoint):
        """Enter the checkpoint's stage: its optimizer state matches that stage's groups."""
        stage = Stage.of((checkpoint.get("other_parameter") or {}).get("stage", Stage.ADAPT))
        if stage is not self.model.stage:
            self.enter_stage(stage)

    def progress_extra(self):
        return {"stage1_backbone": self.stage1_backbone}

    def restore_progress_extra(self, extra):
        self.stage1_backbone = extra.get("stage1_backbone")


def search_table(result, metric):
    """The per-budget lines of a search result: the searched sub-network (valid score, test
    metric, MACs) beside the per-user controller at the same budget."""
    metric = metric.lower()
    columns = ["budget", "budget_macs", "config", "macs", "valid_score",
               f"valid_result.{metric}", f"test_result.{metric}",
               f"controller.valid_result.{metric}", f"controller.test_result.{metric}",
               "controller.valid_result.macs", "feasible", "evaluations", "seconds"]
    present = {key for row in result.table() for key in row}
    return result.format_table([c for c in columns if c in present])


def _eval_users(data):
    """User ids of a sequential full-sort evaluation, in the order its results list them."""
    dataset = data._dataset
    return dataset.inter_feat[dataset.uid_field].numpy()
