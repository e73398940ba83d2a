"""ForwardOFATrainer: supernet stage, then controller + mapper stage, on RecBole's Trainer."""

import math

from recbole.utils import set_color

from recbole_fofa import compat
from recbole_fofa.trainer.base import Trainer


class ForwardOFATrainer(Trainer):
    """Two stages on RecBole's ``fit``: early stopping, checkpoints and resume work in each.

    Stage 1 (``supernet_epochs``) trains the supernet with sandwich sub-networks; stage 2
    (``epochs``) trains the structure controller and the mapper, the backbone at
    ``learning_rate * backbone_lr_scale`` (0 freezes it), with the Gumbel temperature annealed
    from ``tau_start`` to ``tau_end`` over ``tau_anneal_epochs``. The best checkpoint of each stage
    is kept in the same file, so after ``fit`` it holds the best stage-2 model.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.supernet_epochs = config["supernet_epochs"]
        self.adapt_epochs = config["epochs"]
        self._enter_stage(model.stage)  # a trained (or reloaded) model keeps its stage

    # ------------------------------------------------------------------ stages
    def _enter_stage(self, stage):
        self.model.stage = stage
        self.epochs = self.supernet_epochs if stage == "supernet" else self.adapt_epochs
        self.eval_step = min(self.config["eval_step"], max(self.epochs, 1))
        self.start_epoch, self.cur_step = 0, 0
        self.best_valid_score = -math.inf if self.valid_metric_bigger else math.inf
        self.best_valid_result = None
        self.optimizer = self._build_stage_optimizer(stage)

    def _build_stage_optimizer(self, stage):
        if stage == "supernet":
            return self._build_optimizer(params=self.model.parameters())
        scale = self.config["backbone_lr_scale"]
        backbone = list(self.model.backbone_parameters())
        ids = {id(parameter) for parameter in backbone}
        groups = [{"params": [p for p in self.model.parameters() if id(p) not in ids]}]
        if scale > 0:
            groups.append({"params": backbone, "lr": self.learning_rate * scale})
        for parameter in backbone:
            parameter.requires_grad_(scale > 0)
        return self._build_optimizer(params=groups)

    def temperature(self, epoch_idx):
        """Gumbel-sigmoid temperature of stage-2 epoch ``epoch_idx`` (exponential annealing)."""
        start, end = self.config["tau_start"], self.config["tau_end"]
        span = self.config["tau_anneal_epochs"]
        progress = 1.0 if span == 0 else min(epoch_idx / span, 1.0)
        return start * (end / start) ** progress

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        if self.model.stage == "supernet":
            self.logger.info(set_color(f"stage 1: supernet ({self.epochs} epochs)", "blue"))
            super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
            if saved and valid_data:
                with compat.trusted_checkpoint_loads():  # continue from the best supernet
                    checkpoint = compat.torch_load_trusted(self.saved_model_file, self.device)
                self.model.load_state_dict(checkpoint["state_dict"])
            self._enter_stage("adapt")
        self.logger.info(set_color(f"stage 2: controller + mapper ({self.epochs} epochs)", "blue"))
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.reset_train_stats()
        if self.model.stage == "adapt":
            self.model.tau = self.temperature(epoch_idx)
        losses = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        if self.model.stage == "adapt":
            rec_loss, sparsity_loss = losses
            self.logger.info(
                set_color(f"epoch {epoch_idx} adapt", "green")
                + f": rec loss {rec_loss:.4f}, sparsity loss {sparsity_loss:.4f}, "
                f"mean kept blocks {self.model.train_stats():.3f}, tau {self.model.tau:.3f}"
            )
        return losses

    # ------------------------------------------------------------------ checkpoints
    def resume_checkpoint(self, resume_file):
        checkpoint = compat.torch_load_trusted(resume_file, self.device)
        stage = (checkpoint.get("other_parameter") or {}).get("stage", "adapt")
        if stage != self.model.stage:
            self._enter_stage(stage)  # the optimizer state matches that stage's groups
        super().resume_checkpoint(resume_file)
