"""One training run as the benchmark and the analyses need it: timed, quiet, and able to start
ForwardOFA's stage 2 from a supernet trained earlier.

:func:`train` is :func:`recbole_fofa.quick_start.run_recbole_fofa` split open: it returns the
trained model, trainer and dataloaders (a :class:`Trained`) instead of only the scores, times each
training epoch by stage (the trainer's ``epoch_times``), and, given ``supernet=`` (the backbone of
an earlier ForwardOFA run with the same data and sizes), skips stage 1 so that variants differing
only in stage 2 share it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List

import torch

from recbole_fofa import checks
from recbole_fofa.model import Stage
from recbole_fofa.quick_start import prepare, quiet_console, quieten_console
from recbole_fofa.trainer import load_checkpoint
from recbole_fofa.utils import get_trainer

#: ForwardOFA keys that act in stage 2 only: runs differing in these alone can share the supernet
#: (``train(..., supernet=...)``), as the benchmark's ablations and the analyses' sweeps do
#: (the key table's ``stage2`` rows, :data:`recbole_fofa.checks.STAGE2_KEYS`)
STAGE2_KEYS = checks.STAGE2_KEYS

__all__ = ["STAGE2_KEYS", "Trained", "train", "quiet_console", "quieten_console",
           "recbole_argv_cleared"]


@contextlib.contextmanager
def recbole_argv_cleared():
    """RecBole's Config reads ``--key=value`` flags from ``sys.argv`` and lets them override
    ``config_dict``; inside this block it sees none, so each run gets exactly its own dict."""
    saved = sys.argv
    sys.argv = sys.argv[:1]
    try:
        yield
    finally:
        sys.argv = saved


@dataclass
class Trained:
    """A trained model with its trainer, config, dataloaders and timings."""

    config: object
    model: torch.nn.Module
    trainer: object
    train_data: object
    valid_data: object
    test_data: object
    best_valid_score: float = float("nan")
    best_valid_result: dict | None = None
    #: seconds of each training epoch, by stage ('train' for RecBole models; 'supernet' and
    #: 'adapt' for ForwardOFA; a shared supernet's epochs are listed under 'supernet' too)
    epoch_seconds: Dict[str, List[float]] = field(default_factory=dict)
    #: the ForwardOFA backbone at the end of stage 1 (best supernet), for :func:`train` reuse
    supernet: Dict[str, torch.Tensor] | None = None

    def evaluate(self, data=None, load_best_model=False):
        """``(result dict of floats, seconds)`` of RecBole's evaluation on ``data`` (test)."""
        data = self.test_data if data is None else data
        start = time.perf_counter()
        result = self.trainer.evaluate(data, load_best_model=load_best_model,
                                       show_progress=False)
        return {k: float(v) for k, v in result.items()}, time.perf_counter() - start

    def mean_epoch_seconds(self):
        """``{stage: mean seconds per epoch}``."""
        return {stage: sum(v) / len(v) for stage, v in self.epoch_seconds.items() if v}


def train(model, dataset, config_file_list=None, config_dict=None, saved=True, supernet=None,
          supernet_seconds=None, progress_file=None, checkpoint_file=None) -> Trained:
    """Prepare, fit (best checkpoint reloaded when ``saved``) and return a :class:`Trained`.

    ``supernet``: the backbone of an earlier ForwardOFA run (:attr:`Trained.supernet`) with the
    same dataset, split, seed and sizes; the new ForwardOFA starts in stage 2 from it, and
    ``supernet_seconds`` (that run's stage-1 epoch times) are recorded as its own.
    ``progress_file``: the run's progress after each validation; an interrupted run resumes
    from it (the trainer's ``keep_progress``). ``checkpoint_file``: the best checkpoint's path
    (default: RecBole's ``<model>-<time>.pth`` in ``checkpoint_dir``).
    """
    with recbole_argv_cleared():
        config, net, (train_data, valid_data, test_data) = prepare(
            model, dataset, config_file_list, config_dict
        )
    seconds: Dict[str, List[float]] = {}
    if supernet is not None:
        if config["model"] != "ForwardOFA":
            raise ValueError(f"supernet= starts ForwardOFA's stage 2; got model {config['model']}")
        missing, unexpected = net.load_state_dict(supernet, strict=False)
        backbone_missing = [k for k in missing if net.is_backbone(k)]
        if backbone_missing or unexpected:
            raise ValueError(f"supernet= does not match this ForwardOFA: missing "
                             f"{backbone_missing}, unexpected {unexpected}")
        net.stage = Stage.ADAPT
        seconds[Stage.SUPERNET.value] = list(supernet_seconds or [])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    if supernet is not None:
        trainer.stage1_backbone = supernet  # stage 2 starts from it, not from backbone_init
    if progress_file is not None:
        trainer.keep_progress(progress_file)
    if checkpoint_file is not None:  # after the progress's own: a moved output keeps its folder
        trainer.saved_model_file = str(checkpoint_file)
    best_score, best_result = trainer.fit(train_data, valid_data, saved=saved,
                                          show_progress=False)
    if saved:  # the best checkpoint, as RecBole's evaluate(load_best_model=True) loads it
        load_checkpoint(net, trainer.saved_model_file, config["device"])
    for epoch in trainer.epoch_times:
        seconds.setdefault(epoch.stage, []).append(epoch.seconds)
    trained = Trained(config, net, trainer, train_data, valid_data, test_data,
                      best_valid_score=float(best_score),
                      best_valid_result={k: float(v) for k, v in (best_result or {}).items()},
                      epoch_seconds=seconds,
                      supernet=getattr(trainer, "stage1_backbone", None))
    return trained
