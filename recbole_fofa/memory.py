"""The training-memory estimate that refuses, before any data loads, a config that cannot fit.

From the config alone: the item embedding and the ``batch x n_items`` scores are left out, since
the number of items is unknown before the dataset loads. Parameter counts come from
:mod:`recbole_fofa.cost`; what one training step keeps for backward was measured with
``saved_tensors_hooks`` (tests/test_config_checks.py keeps the estimate within 1.3x of it).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from recbole_fofa import cost
from recbole_fofa.checks import (
    SIZE,
    flagged,
    is_int,
    plain_values,
    resolve_model,
    supernet_block_passes,
)
from recbole_fofa.recbole_introspect import recbole_model_keys

FLOAT_BYTES = 4
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sparse_adam": 2, "rmsprop": 1, "adagrad": 1, "sgd": 0}
# Bytes saved for backward by one RecBole transformer block, per element of B*L*d, B*L*d_ff and
# B*heads*L*L (float32 activations and bool dropout masks; measured with saved_tensors_hooks).
BLOCK_SAVED = {"hidden": 10.5 * FLOAT_BYTES, "inner": 4 * FLOAT_BYTES, "scores": 3.25 * FLOAT_BYTES}
# Extra per-block tensors of ForwardOFA's adapt stage: the soft keep/skip mix, the generated
# LayerNorm affine and the low-rank paths (per element of B*L*d).
ADAPT_EXTRA = 6 * FLOAT_BYTES
EMBED_SAVED = 4 * FLOAT_BYTES  # embedding sum, LayerNorm, dropout (per element of B*L*d)
#: The size keys and their shipped defaults (the key table's ``size`` rows): when the estimate
#: does not fit, the key whose reduction to its default shrinks it most is named.
REFERENCE = flagged(SIZE)


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of training (and evaluating) a configured model, without the item table."""

    parameters: int  # parameter count, item embedding excluded
    parameter_bytes: int  # weights + gradients + optimizer state
    activation_bytes: int  # saved for backward in the heaviest training step
    eval_bytes: int  # weights + one evaluation batch's largest live tensors
    stage: str  # which training step is the heaviest

    @property
    def total_bytes(self):
        return max(self.parameter_bytes + self.activation_bytes, self.eval_bytes)


def _block_bytes(batch, length, hidden, inner, heads):
    return (BLOCK_SAVED["hidden"] * batch * length * hidden
            + BLOCK_SAVED["inner"] * batch * length * inner
            + BLOCK_SAVED["scores"] * batch * heads * length * length)


def estimate_memory(config, model=None):
    """Estimated :class:`MemoryEstimate` of ``model`` under ``config``, or None when the model has
    no transformer backbone to estimate (only ForwardOFA and RecBole models reading hidden_size,
    inner_size, n_layers and n_heads are estimated).

    Parameters count 1 + 1 + optimizer states (Adam: 2) copies; activations are what one training
    step keeps for backward: per block ``B*L*(10.5 d + 4 d_ff)`` floats plus
    ``3.25 B*heads*L^2``. ForwardOFA's supernet step keeps the full network, the one-block
    sub-network and ``supernet_subnets - 1`` random ones (at most every block each) until
    ``backward``; its adapt step runs every block softly.
    """
    values = plain_values(config)
    name, _ = resolve_model(values, model)
    return _estimate(name, values)


def _estimate(name, values):
    get = values.get
    batch, eval_batch = get("train_batch_size"), get("eval_batch_size")
    length = get("MAX_ITEM_LIST_LENGTH")
    hidden, inner, heads = get("hidden_size"), get("inner_size"), get("n_heads")
    if name == "ForwardOFA":
        n_blocks = get("n_blocks")
    elif {"hidden_size", "inner_size", "n_layers", "n_heads"} <= recbole_model_keys(name):
        n_blocks = get("n_layers")
    else:
        return None
    if not all(is_int(v) for v in (batch, eval_batch, length, hidden, inner, heads, n_blocks)):
        return None  # malformed values are check_keys' job
    states = OPTIMIZER_STATES.get(str(get("learner")).lower(), 2)
    # Python ints throughout: absurd sizes must not overflow into a small number.
    params = cost.device_params_fixed(length, hidden) + n_blocks * cost.block_params(hidden, inner)
    block = _block_bytes(batch, length, hidden, inner, heads)
    embed = EMBED_SAVED * batch * length * hidden
    step = {"training": n_blocks * block + embed}
    if name == "ForwardOFA":
        rank, mapper_hidden, rt_len = get("mapper_rank"), get("mapper_hidden"), get("rt_len")
        subnets = get("supernet_subnets")
        extractor, mode = get("extractor"), get("mapper_mode")
        params += cost.controller_params(hidden, n_blocks, extractor)
        params += cost.mapper_params(hidden, inner, n_blocks, rank, mapper_hidden, mode)
        out = cost.mapper_head_outputs(hidden, rank)  # generated values per block
        controller = (8 if extractor == "gru" else 2) * FLOAT_BYTES * batch * rt_len * hidden
        passes = supernet_block_passes(n_blocks, subnets)
        step = {
            "adapt": n_blocks * (block + ADAPT_EXTRA * batch * length * hidden) + embed
            + controller + 2 * FLOAT_BYTES * batch * n_blocks * out
        }
        if get("supernet_epochs"):
            step["supernet"] = passes * block + (1 + subnets) * embed
    stage = max(step, key=step.get)
    # Evaluation keeps nothing for backward: the input, one block's largest tensors and output.
    eval_live = 3 * FLOAT_BYTES * eval_batch * length * max(hidden, inner) + (
        2 * FLOAT_BYTES * eval_batch * heads * length * length)
    return MemoryEstimate(
        parameters=params,
        parameter_bytes=int((2 + states) * FLOAT_BYTES * params),
        activation_bytes=int(step[stage]),
        eval_bytes=int(FLOAT_BYTES * params + eval_live),
        stage=stage,
    )


def _cgroup_limit():
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


def available_memory(device):
    """(bytes, description) of the memory a run on ``device`` can use: free memory of a CUDA
    device, else the machine's RAM (capped by a cgroup limit when one is set)."""
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except RuntimeError:
            free = torch.cuda.get_device_properties(device).total_memory
        return int(free), f"free memory of {device}"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_limit()
    if limit is not None and limit < total:
        return limit, "the memory limit of this cgroup"
    return total, "RAM of this machine"


def _size(nbytes):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{nbytes:.0f} B"
        nbytes /= 1024
    return f"{nbytes:.1f} PiB"  # unreachable


def dominant_key(config, model=None):
    """The size key whose reduction to its shipped default shrinks the estimate most."""
    values = plain_values(config)
    name, _ = resolve_model(values, model)
    return _dominant_key(name, values)


def _dominant_key(name, values):
    total = _estimate(name, values).total_bytes
    best, best_ratio = None, 1.0
    for key, reference in REFERENCE.items():
        value = values.get(key)
        if not is_int(value) or value <= reference:
            continue
        smaller = _estimate(name, dict(values, **{key: reference}))
        ratio = total / max(smaller.total_bytes, 1)
        if ratio > best_ratio:
            best, best_ratio = key, ratio
    return best


def check_memory(config, model=None, limit=None):
    """Raise ValueError when the estimated peak memory exceeds what the device offers.

    ``limit`` (bytes) overrides the device's memory (tests, or a caller that knows better).
    """
    values = plain_values(config)
    name, _ = resolve_model(values, model)
    estimate = _estimate(name, values)
    if estimate is None:
        return None
    where = "the given limit"
    if limit is None:
        limit, where = available_memory(values.get("device"))
    if estimate.total_bytes <= limit:
        return estimate
    key = _dominant_key(name, values) or "train_batch_size"
    raise ValueError(
        f"config key `{key}` = {values.get(key)!r} makes {name} need an estimated "
        f"{_size(estimate.total_bytes)} ({_size(estimate.parameter_bytes)} for "
        f"{estimate.parameters:,} parameters with gradients and optimizer state, "
        f"{_size(estimate.activation_bytes)} of activations in a {estimate.stage} step; the item "
        f"embedding is not counted) but the limit is {_size(limit)} ({where}); lower `{key}` "
        f"(shipped default {REFERENCE.get(key)})"
    )


__all__ = ["MemoryEstimate", "REFERENCE", "available_memory", "check_memory", "dominant_key",
           "estimate_memory"]
