"""Measure the on-device cost of any RecBole model on one real interaction of its data.

:mod:`recbole_fofa.cost` holds the formulas (it is imported by the models and stays light); this
module runs models. A model is costed by one inference call on one interaction row taken from
the data it is trained or evaluated on (the dataloader's own transform applied, RNG states
restored afterwards), counted with ``FlopCounterMode``:

* ``predict()`` of that row: one user and one candidate for general and sequential models, one
  forward pass on one interaction for context-aware and knowledge-aware models;
* if ``predict()`` refuses (GRU4RecCPR, SASRecCPR and RepeatNet only support full ranking),
  ``full_sort_predict()`` of that user, which scores every item; the result says so.

Every :class:`~recbole_fofa.cost.ModelCost` names its source: ``measured``, ``measured:
element-wise only`` (the model multiplies no matrices: its true matrix-product count is 0),
``lower bound`` (ops without a FLOP formula ran, e.g. FFTs or sparse products) or ``analytic``.
Models that score outside torch cannot be measured and are known per class (:func:`can_cost`).
"""

from __future__ import annotations

import contextlib
import copy
import random
from typing import Callable, Tuple

import numpy as np
import torch
from recbole.utils import ModelType
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from recbole_fofa import cost
from recbole_fofa.cost import CostNotMeasurableError, InferenceFailedError, ModelCost

__all__ = [
    "NOT_MEASURABLE",
    "can_cost",
    "measure_macs",
    "model_cost",
    "one_row_interaction",
    "preserved_rng",
]

_OUTSIDE_TORCH = ("computes its scores with numpy/scipy outside torch, which FlopCounterMode "
                  "cannot see")

# RecBole 1.2.1 classes whose scores do not come from torch ops (read in their predict()).
NOT_MEASURABLE = {
    "ItemKNN": f"{_OUTSIDE_TORCH} (a scipy sparse item-item similarity)",
    "AsymKNN": f"{_OUTSIDE_TORCH} (a scipy sparse asymmetric similarity)",
    "EASE": f"{_OUTSIDE_TORCH} (a dense numpy item-item matrix)",
    "SLIMElastic": f"{_OUTSIDE_TORCH} (a scipy sparse item-item matrix from scikit-learn)",
    "ADMMSLIM": f"{_OUTSIDE_TORCH} (a dense numpy item-item matrix)",
    "NCEPLRec": "holds its user and item factors as plain tensors computed with numpy, not as "
                "parameters, so its device parameters cannot be counted",
}

# Substrings of aten op names that do matmul-like work; seen without a FlopCounterMode formula,
# they make a measured count a lower bound (e.g. FFTs, fused RNN kernels, sparse products).
_HEAVY_OP_HINTS = ("fft", "rnn", "lstm", "gru", "conv", "mm", "matmul", "linear", "attention",
                   "einsum", "dot", "mv")


def can_cost(model_class) -> Tuple[bool, str]:
    """Whether the plugin can cost models of ``model_class`` (a class-level decision), and why.

    No for RecBole's decision-tree models (LightGBM, XGBoost: not torch models) and for the
    classes in :data:`NOT_MEASURABLE`; yes for everything else, which is measured on one real
    interaction when training or evaluation starts (that can still fail, e.g. a ``predict()``
    that raises; the trainer then reports it).
    """
    if getattr(model_class, "type", None) == ModelType.DECISIONTREE:
        return False, f"[{model_class.__name__}] is a decision-tree model, not a torch model"
    for klass in getattr(model_class, "__mro__", ()):
        if klass.__module__.startswith("recbole.model.") and klass.__name__ in NOT_MEASURABLE:
            return False, f"[{model_class.__name__}] {NOT_MEASURABLE[klass.__name__]}"
    return True, "measured on one interaction of its data"


@contextlib.contextmanager
def preserved_rng():
    """Run a block without consuming Python's, numpy's or torch's random streams."""
    py_state, np_state = random.getstate(), np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def one_row_interaction(data):
    """Row 0 of a RecBole dataloader's dataset, as the dataloader would hand it to the model.

    The row is joined with user/item features and passed through the dataloader's transform
    (e.g. SHAN's inverted sequence, BERT4Rec's mask token) with every RNG state restored, so the
    run's sampling is unchanged. Knowledge-based training loaders give their interaction part.
    """
    loader = getattr(data, "general_dataloader", data)
    dataset = getattr(loader, "_dataset", None)
    if dataset is None or not hasattr(loader, "transform"):
        raise TypeError(f"expected a RecBole dataloader, got {type(data).__name__}")
    if len(dataset) == 0:
        raise ValueError(f"the {type(loader).__name__}'s dataset has no interactions")
    with preserved_rng():
        return loader.transform(dataset, dataset[np.array([0])])


def _measure(fn: Callable, *args, **kwargs) -> Tuple[int, Tuple[str, ...]]:
    """(MACs counted by FlopCounterMode, heavy ops it saw but could not count)."""
    class _OpRecorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(func.overloadpacket)
            return func(*args, **(kwargs or {}))

    counter = FlopCounterMode(display=False)
    recorder = _OpRecorder()
    with torch.no_grad(), counter, recorder:
        fn(*args, **kwargs)
    uncounted = sorted(
        str(op) for op in recorder.ops
        if op not in flop_registry and any(s in str(op).split(".")[-1] for s in _HEAVY_OP_HINTS)
    )
    return int(counter.get_total_flops()) // 2, tuple(uncounted)


def measure_macs(fn: Callable, *args, **kwargs) -> int:
    """MACs of ``fn(*args, **kwargs)`` as counted by ``FlopCounterMode`` (its FLOPs // 2), under
    ``torch.no_grad()``. Counts mm/addmm/bmm/baddbmm/convolution/SDPA; on CPU ``nn.GRU``
    decomposes into counted mm ops, but e.g. ``nn.LSTM`` (mkldnn kernel) and FFTs count 0."""
    return _measure(fn, *args, **kwargs)[0]


def _tables(model):
    """(item-indexed, user-indexed) ``nn.Embedding`` tables of a model.

    An item table has ``n_items`` rows (``n_items + 1`` with BERT4Rec's mask token), a user table
    ``n_users``; when both counts are equal the module name decides.
    """
    n_items, n_users = getattr(model, "n_items", None), getattr(model, "n_users", None)
    item_rows = {int(n_items), int(n_items) + 1} if isinstance(n_items, int) else set()
    items, users = [], []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Embedding):
            continue
        is_item = module.num_embeddings in item_rows
        is_user = isinstance(n_users, int) and module.num_embeddings == n_users
        if is_item and is_user:
            is_item, is_user = "item" in name.lower(), "user" in name.lower()
        if is_item:
            items.append(module)
        elif is_user:
            users.append(module)
    return items, users


def _params(model) -> Tuple[int, int, int]:
    """(device params, candidate params, excluded params).

    The device holds every parameter except the item tables (cached as candidates instead) and
    the user tables, of which it keeps its own user's row.
    """
    items, users = _tables(model)
    item_ids = {id(p) for t in items for p in t.parameters()}
    user_ids = {id(p) for t in users for p in t.parameters()}
    total = item_n = user_n = 0
    for p in model.parameters():  # parameters() de-duplicates shared (tied) tensors
        if id(p) in item_ids:
            item_n += p.numel()
        elif id(p) in user_ids:
            user_n += p.numel()
        else:
            total += p.numel()
    own_rows = sum(t.embedding_dim for t in users)
    return total + own_rows, item_n, item_n + user_n - own_rows


def _count_blocks(model) -> int:
    """Stacked blocks: ``n_layers`` / ``num_layers``, NextItNet's residual blocks; 0 for models
    without stacked blocks (e.g. STAMP, Caser, BPR)."""
    for attr in ("n_layers", "num_layers"):
        value = getattr(model, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    blocks = getattr(model, "residual_blocks", None)
    if isinstance(blocks, nn.Sequential):
        return len(blocks)
    return 0


def _run_counted(model, interaction):
    """Count one inference on ``interaction``: ``predict``, else ``full_sort_predict``.

    Returns (macs, uncounted ops, what was covered); raises InferenceFailedError if both fail
    (CostNotMeasurableError if the model has neither).
    """
    errors = []
    for method, covers in (
        ("predict", "predict() on one interaction"),
        ("full_sort_predict", "full_sort_predict() of one user (scores every item)"),
    ):
        fn = getattr(model, method, None)
        if fn is None:
            continue
        try:
            with preserved_rng():
                macs, uncounted = _measure(fn, interaction)
            return macs, uncounted, covers
        except (Exception, AssertionError) as exc:  # any failure: try the next call
            errors.append(f"{method}(): {type(exc).__name__}: {exc}".rstrip(": "))
    if not errors:
        raise CostNotMeasurableError(type(model).__name__, "no predict()")
    raise InferenceFailedError(type(model).__name__, "; ".join(errors))


def model_cost(model, interaction=None) -> ModelCost:
    """Per-user on-device cost of a RecBole model instance.

    Analytic for RecBole's SASRec, BERT4Rec and GRU4Rec (exact classes; ``interaction`` unused).
    Otherwise measured on ``interaction`` (one row of the model's data, see
    :func:`one_row_interaction`) on a copy of the model in eval mode, so the model itself, its
    caches and the RNG streams are untouched. Raises :class:`CostNotMeasurableError` for the
    classes :func:`can_cost` rejects, and its :class:`InferenceFailedError` when neither ``predict``
    nor ``full_sort_predict`` runs.
    """
    name = type(model).__name__
    analytic = cost.ANALYTIC.get(name)
    if analytic is not None and type(model).__module__.startswith("recbole.model."):
        return analytic(model)
    allowed, reason = can_cost(type(model))
    if not allowed:
        raise CostNotMeasurableError(name, reason)
    if interaction is None:
        raise ValueError(f"model_cost({name}) measures one inference: pass `interaction`, one "
                         "row of the model's data (see one_row_interaction)")
    row = interaction[[0]] if len(interaction) > 1 else interaction
    macs, uncounted, covers = _measure_copy(model, row)
    if uncounted:
        source = cost.SOURCE_LOWER_BOUND
    elif macs == 0:
        source = cost.SOURCE_ELEMENTWISE
    else:
        source = cost.SOURCE_MEASURED
    params, candidates, excluded = _params(model)
    return ModelCost(name, macs, params, _count_blocks(model), source, covers,
                     candidate_params=candidates, excluded_params=excluded,
                     uncounted_ops=uncounted)


def _measure_copy(model, row):
    """Measure on a CPU copy (CPU kernels decompose into countable ops), else on the model's
    device (models that keep unregistered tensors there)."""
    try:
        target = copy.deepcopy(model).eval()
    except Exception as exc:  # e.g. a model holding a lock or an open file
        raise CostNotMeasurableError(
            type(model).__name__, f"cannot copy the model to measure it: {type(exc).__name__}: "
            f"{exc}") from exc
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type == "cpu":
        return _run_counted(target, row.to("cpu"))
    try:
        return _run_counted(target.cpu(), row.to("cpu"))
    except CostNotMeasurableError:
        return _run_counted(target.to(device), row.to(device))
