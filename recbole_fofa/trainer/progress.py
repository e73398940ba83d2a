"""A run's progress after each validation, kept in one file so that an interrupted run resumes
from its last validated epoch and ends with the numbers an uninterrupted run gives.

RecBole's checkpoint keeps the *best* epoch's weights; resuming from it repeats the epochs after
the best one and draws other random numbers. The progress file keeps the *last* validated epoch:
weights, optimizer, early-stopping state, the model's own state (ForwardOFA's stage), the
trainer's logs (epoch times, validation scores, how earlier stages ended) and every random
generator the next epoch draws from (torch's, numpy's, Python's and the training loader's
shuffle). It is written atomically (a temporary file, then a rename) and read with the plugin's
restricted loader (:func:`recbole_fofa.compat.load_checkpoint_file`).
"""

import os
import random
from typing import Any, Dict

import numpy as np
import torch

from recbole_fofa import compat

__all__ = ["capture", "read", "restore_generators", "write", "write_atomically"]

#: bumped when the file's layout changes: an older file is refused, not misread
VERSION = 1


def _generators(train_data) -> Dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "loader": None}
    generator = getattr(train_data, "generator", None)
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def restore_generators(state, train_data):
    """Put every random generator back as :func:`capture` found it."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    generator = getattr(train_data, "generator", None)
    if state["loader"] is not None and generator is not None:
        generator.set_state(state["loader"])


def capture(trainer, model, train_data, epoch_idx, stage_done, extra=None) -> Dict[str, Any]:
    """The state after validating ``epoch_idx``; ``stage_done``: early stopping or the epoch cap
    ended the current ``fit`` there."""
    return {
        "version": VERSION, "epoch": int(epoch_idx), "stage_done": bool(stage_done),
        "cur_step": int(trainer.cur_step), "best_valid_score": float(trainer.best_valid_score),
        "best_valid_result": {k: float(v) for k, v in (trainer.best_valid_result or {}).items()},
        "state_dict": model.state_dict(), "other_parameter": model.other_parameter(),
        "optimizer": trainer.optimizer.state_dict(),
        "epoch_times": [tuple(e) for e in trainer.epoch_times],
        "valid_scores": [tuple(v) for v in trainer.valid_scores],
        "stage_ends": [tuple(e) for e in trainer.stage_ends],
        "train_loss": {int(k): float(v) for k, v in trainer.train_loss_dict.items()},
        "generators": _generators(train_data), "extra": extra or {},
    }


def write_atomically(path, write):
    """``write(temporary path)``, then rename it to ``path``: a reader sees the old file or the
    new one, never half of one (the progress file here, the benchmark's run files too). The
    temporary name carries the pid: processes that write the same file do not share it."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    write(temporary)
    os.replace(temporary, path)


def write(state, path):
    """Write ``state`` to ``path`` atomically."""
    write_atomically(path, lambda temporary: torch.save(state, temporary))


def read(path):
    """The progress at ``path``, or None when there is none. A file that cannot be read or has
    another layout raises ValueError naming it (delete it to start the run over)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return None
    try:
        state = compat.load_checkpoint_file(path, "cpu")
    except Exception as err:
        raise ValueError(f"{path}: cannot read this run's progress file ({type(err).__name__}: "
                         f"{err}); delete it to start the run over") from err
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise ValueError(f"{path}: not a progress file of this version ({VERSION}); delete it "
                         "to start the run over")
    return state
