"""What the three paper analyses share: the resolved config and its checks, the seeds, the
trainings progress bar, per-user structures of a split, and statistics of a set of structures."""

from __future__ import annotations

import math
from collections import Counter
from numbers import Real
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from tqdm import tqdm

from recbole_fofa.checks import MODEL_CHECKS, is_int
from recbole_fofa.config import Config
from recbole_fofa.experiment import recbole_argv_cleared
from recbole_fofa.utils import get_trainer

MODEL = "ForwardOFA"


def resolve_config(dataset, config_file_list=None, config_dict=None) -> Config:
    """The ForwardOFA config the trainings will see (every key checked, no data loaded)."""
    with recbole_argv_cleared():
        return Config(model=MODEL, dataset=dataset, config_file_list=config_file_list,
                      config_dict=dict(config_dict or {}))


def require_metrics(config, metrics: Sequence[str], k: int = 10) -> None:
    """ValueError naming `metrics` or `topk` unless the run reports every metric (and @k)."""
    have = {str(m).lower() for m in config["metrics"]}
    missing = [m for m in metrics if m.lower() not in have]
    if missing:
        raise ValueError(f"config key `metrics` = {config['metrics']!r} lacks {missing}: this "
                         f"analysis reports {list(metrics)}")
    if k not in list(config["topk"]):
        raise ValueError(f"config key `topk` = {config['topk']!r} lacks {k}: this analysis "
                         f"reports @{k} metrics")


def require_stage2(config) -> None:
    """ValueError naming `epochs` unless ForwardOFA trains a controller (stage 2 runs)."""
    if not is_int(config["epochs"]) or config["epochs"] < 1:
        raise ValueError(f"config key `epochs` = {config['epochs']!r}: the analysis needs stage 2 "
                         "(the controller and the mapper), at least 1 epoch")


def resolve_seeds(config, seeds) -> List[int]:
    """``seeds`` as a list of distinct ints (None: the config's ``seed``)."""
    if seeds is None:
        return [int(config["seed"])]
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"seeds={seeds!r}: expected a list of integers or None")
    seeds = list(seeds)
    if not seeds or not all(is_int(s) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds!r}: expected a non-empty list of distinct integers")
    return [int(s) for s in seeds]


def check_values(option: str, values, key: str | None = None, low=None, high=None,
                 non_empty: bool = True) -> List[Any]:
    """``values`` as a list, each checked by ForwardOFA's rule for config ``key`` (and in
    ``[low, high]`` when given); a ValueError names ``option``."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{option}={values!r}: expected a list")
    values = list(values)
    if non_empty and not values:
        raise ValueError(f"{option}={values!r}: expected at least one value")
    for value in values:
        try:
            if key is not None:
                MODEL_CHECKS[MODEL][key](key, value)
            if low is not None or high is not None:
                if (isinstance(value, bool) or not isinstance(value, Real)
                        or not math.isfinite(value) or (low is not None and value < low)
                        or (high is not None and value > high)):
                    raise ValueError(f"expected a number in [{low}, {high}]")
        except ValueError as error:
            raise ValueError(f"{option}={values!r}: {value!r} is invalid ({error})") from None
    if len(set(values)) != len(values):
        raise ValueError(f"{option}={values!r}: values must be distinct")
    return values


def run_config(config_dict, seed: int, **overrides) -> Dict[str, Any]:
    """The caller's config_dict for one training: its seed and stage-2 keys set."""
    return {**dict(config_dict or {}), "seed": int(seed), **overrides}


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar over trainings (RecBole's progress bars are tqdm too)."""
    return tqdm(total=total, desc=desc, unit="training", disable=not enabled, leave=False)


# ----------------------------------------------------------------------------- evaluated users
def eval_cases(model, data) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(item_seq [B, T], item_seq_len [B], target item [B]) of every evaluated case of ``data``
    once, batch by batch, as RecBole evaluates them: every row of a full-sort loader; the positive
    rows of a negative-sampling loader (a user's positives come before its sampled negatives)."""
    full_sort = isinstance(data, FullSortEvalDataLoader)
    for batch in data:
        interaction, index, positive_u = batch[0], batch[1], batch[2]
        rows = None
        if not full_sort and index is not None:
            # rows of user k are contiguous (k ascending); the first count_k are its positives
            users = torch.arange(int(index.max()) + 1)
            start = torch.searchsorted(index, users)
            offset = torch.arange(index.numel()) - start[index]
            rows = (offset < torch.bincount(positive_u, minlength=users.numel())[index])
            rows = rows.nonzero()[:, 0]
        seq, length = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
        target = interaction[model.POS_ITEM_ID]
        if rows is not None:
            seq, length, target = seq[rows], length[rows], target[rows]
        yield seq, length, target


def user_structures(model, data) -> np.ndarray:
    """Every evaluated case's kept mask under the model's eval structure: bool [users, blocks]."""
    was_training = model.training
    model.eval()
    masks = []
    try:
        with torch.no_grad():
            for seq, length, _ in eval_cases(model, data):
                _, mask, _ = model.eval_structure(seq.to(model.device), length.to(model.device))
                masks.append(mask.cpu())
    finally:
        model.train(was_training)
    if not masks:
        raise ValueError("the evaluation split has no users: nothing to analyse")
    return torch.cat(masks).numpy().astype(bool)


def bits(mask) -> str:
    """A structure as a bit string, block 1 first: ``110011``."""
    return "".join("1" if keep else "0" for keep in mask)


def structure_stats(masks: np.ndarray) -> Dict[str, Any]:
    """Statistics of per-user structures (bool [users, blocks]).

    ``keep_frequency`` [blocks] (fraction of users keeping each block), ``users_by_blocks``
    [blocks + 1] (fraction of users keeping 0..n blocks), ``distinct``, ``entropy`` (bits, of the
    distribution of structures), ``top`` (the most common structure's bit string; ties go to the
    one seen first), ``top_share``, ``mean_blocks``, ``users``.
    """
    masks = np.asarray(masks, dtype=bool)
    users, n_blocks = masks.shape
    counts = Counter(bits(row) for row in masks)
    shares = np.array(list(counts.values()), dtype=np.float64) / users
    top, top_count = counts.most_common(1)[0]
    kept = masks.sum(axis=1)
    return {
        "users": users,
        "keep_frequency": masks.mean(axis=0),
        "users_by_blocks": np.bincount(kept, minlength=n_blocks + 1) / users,
        "distinct": len(counts),
        "entropy": float(max(0.0, -(shares * np.log2(shares)).sum())),
        "top": top,
        "top_share": top_count / users,
        "mean_blocks": float(kept.mean()),
    }


def mean_std(values) -> Tuple[float, float]:
    """Mean and sample standard deviation (NaN for one value: undefined, shown as ``-``)."""
    values = np.asarray(list(values), dtype=np.float64)
    std = float(values.std(ddof=1)) if values.size > 1 else float("nan")
    return float(values.mean()), std


def error_bars(stds) -> List[float] | None:
    """Error bars for plots.lines: None when no std is defined (one seed)."""
    stds = [float(s) for s in stds]
    if all(math.isnan(s) for s in stds):
        return None
    return [0.0 if math.isnan(s) else s for s in stds]


def fmt(value: float, digits: int = 4) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


# ----------------------------------------------------------------------------- RecBole evaluation
def evaluation_trainer(model, data):
    """The model's own plugin trainer on ``data``'s config, to evaluate ``model`` with RecBole's
    evaluation (metrics, topk, collector) as a training does; it is never trained here (building
    a trainer leaves the model as it is)."""
    config = data.config
    return get_trainer(config["MODEL_TYPE"], config["model"])(config, model)


def recbole_evaluate(trainer, data) -> Dict[str, float]:
    """RecBole's result dict (floats) of ``trainer``'s model as it is now on ``data``."""
    result = trainer.evaluate(data, load_best_model=False, show_progress=False)
    return {key: float(value) for key, value in result.items()}
