"""Analytic compute / size costs of Forward-OFA and of RecBole's SASRec, BERT4Rec and GRU4Rec.

Measuring any other RecBole model (general, context-aware, knowledge-aware, sequential) on one real
interaction lives in :mod:`recbole_fofa.evaluator.measure`; this module stays import-light because
the models import it. :class:`ModelCost` carries the source of every number.

Units
-----
* **MACs** (multiply-accumulates) everywhere; every name that holds a count of operations is called
  ``macs``. ``FLOPs = 2 * MACs`` (:func:`macs_to_flops`), the convention of
  ``torch.utils.flop_counter.FlopCounterMode``, which counts ``2*M*N*K`` for an ``M x K @ K x N``
  matmul.
* **Parameters** are numbers of scalars (not bytes).

What is counted
---------------
Only multiply-accumulates against weights or activations in matrix products (linear layers,
attention score and context products, convolutions, GRU gates), i.e. exactly what
``FlopCounterMode`` counts. Element-wise work is *not* counted: bias adds, residual adds,
LayerNorm, softmax, GELU/tanh, dropout, attention scaling and masking. The embedding lookup is a
gather and costs 0 MACs. Attention is counted over the full ``L x L`` score matrix (a causal mask
does not skip the masked products). The analytic counts below are tested to equal
``FlopCounterMode``'s count on the corresponding torch modules.

Parts reported separately (see :class:`CostBreakdown`):

* device: embedding lookup (0 MACs), the encoder (kept blocks only; a skipped block costs 0),
  scoring ``C`` cached candidates (``C*d``);
* cloud: the structure controller and the structural mapper (hypernetwork), which never run on
  the device.

Everything is vectorised over block masks (``[N, n_blocks]``), so search code can cost many
sub-networks at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

import numpy as np
import torch

__all__ = [
    "CostBreakdown",
    "ANALYTIC",
    "CostNotMeasurableError",
    "InferenceFailedError",
    "ModelCost",
    "SOURCES",
    "EXTRACTORS",
    "MAPPER_MODES",
    "block_macs",
    "block_params",
    "bert4rec_cost",
    "candidate_params",
    "controller_macs",
    "controller_params",
    "device_params_fixed",
    "encoder_macs",
    "encoder_params",
    "forward_ofa_cost",
    "gru4rec_cost",
    "macs_to_flops",
    "mapper_macs",
    "mapper_head_outputs",
    "mapper_params",
    "merge_macs",
    "sasrec_cost",
    "scoring_macs",
]

EXTRACTORS = ("gru", "mean")
MAPPER_MODES = ("parallel", "shared", "none")


class CostNotMeasurableError(ValueError):
    """Raised when a model's MACs cannot be measured (the run failed or counted nothing)."""

    def __init__(self, model_name: str, reason: str):
        self.model_name = model_name
        self.reason = reason
        super().__init__(f"cannot measure the MACs of {model_name}: {reason}")


class InferenceFailedError(CostNotMeasurableError):
    """Raised when neither ``predict`` nor ``full_sort_predict`` ran on the model as it is now.
    Some models can only run once training has started (RecBole's Pop counts items in its first
    epoch), so a trainer measures such a model again at its first evaluation."""


# ----------------------------------------------------------------------------- helpers


def _as_int(x):
    """Return a Python int for 0-d input and an int64 array otherwise (the module's convention)."""
    if type(x) is int:
        return x
    arr = np.asarray(x, dtype=np.int64)
    return int(arr) if arr.ndim == 0 else arr


def _ints(*values):
    """Convert arguments to int64 arrays (broadcastable), rejecting non-integral values. Python
    ints stay Python ints, so scalar formulas never overflow (the memory estimate feeds them
    absurd sizes to refuse them)."""
    out = []
    for v in values:
        if type(v) is int:
            out.append(v)
            continue
        a = np.asarray(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v)
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                raise ValueError(f"expected integer sizes, got {v!r}")
        elif a.dtype.kind not in "biu":
            raise ValueError(f"expected integer sizes, got {v!r}")
        out.append(a.astype(np.int64))
    return out


def _masks(masks) -> np.ndarray:
    """A [N, n_blocks] int64 0/1 array from bool or 0/1 masks (numpy, torch or nested lists)."""
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    m = np.asarray(masks)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2:
        raise ValueError(f"masks must have shape [N, n_blocks], got shape {m.shape}")
    if m.dtype != np.bool_:
        if m.size and not np.all((m == 0) | (m == 1)):
            raise ValueError("masks must be boolean or contain only 0 and 1")
    return m.astype(np.int64)


def _masked_sum(masks, per_block, what: str) -> np.ndarray:
    """Sum ``per_block`` ([n_blocks] or [N, n_blocks]) over the kept blocks of each mask row."""
    m = _masks(masks)
    pb = np.asarray(per_block, dtype=np.int64)
    n, b = m.shape
    if pb.ndim == 1:
        if pb.shape[0] != b:
            raise ValueError(f"{what} has {pb.shape[0]} blocks but masks have {b}")
        return m @ pb
    if pb.ndim == 2:
        if pb.shape[1] != b or pb.shape[0] not in (1, n):
            raise ValueError(f"{what} has shape {pb.shape}, expected [{b}] or [{n}, {b}]")
        return (m * pb).sum(axis=1)
    raise ValueError(f"{what} must be [n_blocks] or [N, n_blocks], got shape {pb.shape}")


def macs_to_flops(macs):
    """FLOPs of a MAC count (``2 * macs``), for tables that quote FLOPs."""
    return _as_int(2 * np.asarray(macs, dtype=np.int64))


# ----------------------------------------------------------------------------- transformer block


def block_macs(seq_len, hidden_size, inner_size, n_heads=1, head_size=None):
    """MACs of one RecBole ``TransformerLayer`` on one sequence of length L.

    With attention width ``a`` (``d`` for a RecBole layer): Q, K, V projections ``3*L*d*a``,
    scores ``Q K^T`` and context ``P V`` ``2*L^2*a``, output projection ``L*a*d``, feed-forward
    ``2*L*d*d_ff``; for ``a = d`` that is ``4*L*d^2 + 2*L^2*d + 2*L*d*d_ff`` (the head split does
    not change it). An elastic block that keeps ``n_heads`` heads of ``head_size`` each (first-k
    slicing) has ``a = n_heads * head_size``. Broadcasts over numpy arrays (per-block widths and
    heads); a Python int for scalar inputs.
    """
    L, d, f, h = _ints(seq_len, hidden_size, inner_size, n_heads)
    if head_size is None:
        if np.any(h <= 0) or np.any(d % h != 0):
            raise ValueError(
                f"hidden_size {hidden_size} must be a positive multiple of n_heads {n_heads}"
            )
        a = d
    else:
        if np.any(h < 0):
            raise ValueError(f"n_heads must be >= 0, got {n_heads}")
        a = h * _ints(head_size)[0]
    return _as_int(3 * L * d * a + 2 * L * L * a + L * a * d + 2 * L * d * f)


def block_params(hidden_size, inner_size, attn_width=None):
    """Parameters of one RecBole ``TransformerLayer``: Q, K, V ``3*(d*a + a)``, output
    projection ``a*d + d``, the two FFN Linears ``2*d*d_ff + d_ff + d`` and 2 LayerNorms ``4*d``,
    with attention width ``a`` (default ``d``: ``4*(d^2+d) + 2*d*d_ff + d_ff + d + 4*d``).
    Broadcasts."""
    d, f = _ints(hidden_size, inner_size)
    a = d if attn_width is None else _ints(attn_width)[0]
    return _as_int(3 * (d * a + a) + (a * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d)


def encoder_macs(masks, per_block_macs) -> np.ndarray:
    """MACs of each masked encoder: ``masks`` [N, n_blocks] (bool/0-1, numpy or torch) times
    ``per_block_macs`` ([n_blocks] or [N, n_blocks]); int64 [N]. Skipped blocks cost 0."""
    return _masked_sum(masks, per_block_macs, "per_block_macs")


def encoder_params(masks, per_block_params) -> np.ndarray:
    """Parameters of the kept blocks of each mask row (int64 [N]); same shapes as
    :func:`encoder_macs`. Add :func:`device_params_fixed` for a whole device encoder."""
    return _masked_sum(masks, per_block_params, "per_block_params")


def scoring_macs(n_candidates, hidden_size):
    """MACs of scoring ``C`` cached candidates by dot product with the user vector: ``C*d``
    (full sort: C = number of items)."""
    c, d = _ints(n_candidates, hidden_size)
    return _as_int(c * d)


def candidate_params(n_candidates, hidden_size):
    """Scalars of ``C`` cached candidate embeddings on the device: ``C*d``."""
    c, d = _ints(n_candidates, hidden_size)
    return _as_int(c * d)


def device_params_fixed(seq_len, hidden_size):
    """What a SASRec-style device holds besides its blocks and candidates: the position
    embedding ``L*d`` and the input LayerNorm ``2*d``."""
    L, d = _ints(seq_len, hidden_size)
    return _as_int(L * d + 2 * d)


# ----------------------------------------------------------------------------- cloud side


def _check_extractor(extractor):
    if extractor not in EXTRACTORS:
        raise ValueError(f"extractor must be one of {EXTRACTORS}, got {extractor!r}")


def _check_mapper_mode(mode):
    if mode not in MAPPER_MODES:
        raise ValueError(f"mapper_mode must be one of {MAPPER_MODES}, got {mode!r}")


def controller_macs(hidden_size, n_blocks, rt_len, extractor):
    """MACs of the structure controller for one device (cloud side).

    ``'gru'``: a 1-layer ``nn.GRU(d, d)`` over ``rt_len`` steps, ``rt_len*3*(d*d + d*d)``
    (input and hidden projections of 3 gates); ``'mean'``: 0 (pooling multiplies no weights).
    Plus the linear head ``d*n_blocks``.
    """
    _check_extractor(extractor)
    d, n, t = _ints(hidden_size, n_blocks, rt_len)
    ext = t * 3 * (d * d + d * d) if extractor == "gru" else 0 * d
    return _as_int(ext + d * n)


def controller_params(hidden_size, n_blocks, extractor):
    """Parameters of the structure controller: GRU ``6*d*d + 6*d`` (weight_ih, weight_hh,
    bias_ih, bias_hh) or 0 for mean pooling, plus the linear head ``d*n_blocks + n_blocks``."""
    _check_extractor(extractor)
    d, n = _ints(hidden_size, n_blocks)
    ext = 6 * d * d + 6 * d if extractor == "gru" else 0 * d
    return _as_int(ext + d * n + n)


def mapper_head_outputs(hidden_size, rank):
    """Values the mapper generates per block: cores G1, G2 (r x r each) and LayerNorm scale and
    shift (d each): ``2*r^2 + 2*d``."""
    return 2 * rank * rank + 2 * hidden_size


def _generator_macs(d, n, r, h, mode, k):
    """MACs of the mapper's heads for ``k`` kept blocks (merges excluded)."""
    if mode == "parallel":
        return k * ((d + n) * h + h * mapper_head_outputs(d, r))
    return (d + n) * h + h * n * mapper_head_outputs(d, r)  # shared: one head for all


def _merge_macs(d, f, r):
    """MACs of merging both low-rank deltas into one block: (U G) then (U G) V, for
    W1 (d_ff x d) and W2 (d x d_ff)."""
    return 2 * r * d * f + r * r * (d + f)


def merge_macs(hidden_size, inner_size, rank):
    """MACs of folding one user's low-rank deltas into one block of feed-forward width
    ``inner_size`` (:func:`~recbole_fofa.search.extract.fold_block`): ``2*r*d*d_ff +
    r^2*(d + d_ff)``; part of :func:`mapper_macs`, and the device's cost when it folds."""
    d, f, r = _ints(hidden_size, inner_size, rank)
    return _as_int(_merge_macs(d, f, r))


def mapper_macs(hidden_size, inner_size, n_blocks, rank, mapper_hidden, mode, n_kept):
    """MACs of the structural mapper (hypernetwork) for one device (cloud side).

    ``'parallel'``: ``n_kept`` heads ``Linear(d+n -> h) -> tanh -> Linear(h -> 2r^2+2d)`` plus
    the merge ``2*r*d*d_ff + r^2*(d+d_ff)`` of each kept block; ``'shared'``: one MLP emitting
    all blocks ``(d+n)*h + h*n*(2r^2+2d)`` plus ``n_kept`` merges; ``'none'``: 0.
    ``n_kept`` may be an array (vectorised over devices).
    """
    _check_mapper_mode(mode)
    d, f, n, r, h, k = _ints(hidden_size, inner_size, n_blocks, rank, mapper_hidden, n_kept)
    if mode == "none":
        return _as_int(0 * k)
    return _as_int(_generator_macs(d, n, r, h, mode, k) + k * _merge_macs(d, f, r))


def mapper_params(hidden_size, inner_size, n_blocks, rank, mapper_hidden, mode):
    """Parameters of the structural mapper: ``'parallel'`` n heads (MLP with biases) plus the
    static factors U1, V1, U2, V2 (``2*r*(d+d_ff)`` per block); ``'shared'`` one MLP with output
    ``n*(2r^2+2d)`` plus the same factors; ``'none'`` 0."""
    _check_mapper_mode(mode)
    d, f, n, r, h = _ints(hidden_size, inner_size, n_blocks, rank, mapper_hidden)
    if mode == "none":
        return _as_int(0 * d)
    out = mapper_head_outputs(d, r)
    factors = 2 * r * (d + f)
    if mode == "parallel":
        return _as_int(n * ((d + n) * h + h + h * out + out + factors))
    return _as_int((d + n) * h + h + h * n * out + n * out + n * factors)


# ----------------------------------------------------------------------------- Forward-OFA


@dataclass
class CostBreakdown:
    """Costs of Forward-OFA sub-networks, one row per mask; scalars apply to every row.

    ``encoder_params`` includes :func:`device_params_fixed` (position embedding + input
    LayerNorm); candidate embeddings are ``candidate_params``. Controller and mapper run in the
    cloud and are not part of the device's cost.
    """

    encoder_macs: np.ndarray
    encoder_params: np.ndarray
    kept_blocks: np.ndarray
    scoring_macs: int
    candidate_params: int
    controller_macs: int
    controller_params: int
    mapper_macs: np.ndarray
    mapper_params: int


def forward_ofa_cost(shape, masks, widths=None, heads=None) -> CostBreakdown:
    """Device and cloud costs of Forward-OFA sub-networks of the supernet ``shape``.

    ``shape`` is a :class:`recbole_fofa.subnet.SupernetShape`; ``masks`` [N, n_blocks] says which
    blocks each row keeps; ``widths`` / ``heads`` (optional, [N, n_blocks] or [n_blocks]) give each
    kept block's feed-forward width and head count (default: the supernet's). Heads are sliced
    first-k, so a block with ``h`` heads has attention width ``h * shape.head_size``. The encoder
    and the mapper's merges follow each kept block's width; ``mapper_params`` sizes the static
    factors at the supernet's width.
    """
    _check_extractor(shape.extractor)
    _check_mapper_mode(shape.mapper_mode)
    m = _masks(masks)
    n_rows, n = m.shape
    if n != int(shape.n_blocks):
        raise ValueError(f"masks have {n} blocks but the supernet has {shape.n_blocks}")
    rows = (n_rows, n)
    try:
        f_rows = np.broadcast_to(_ints(shape.inner_size if widths is None else widths)[0], rows)
        h_rows = np.broadcast_to(_ints(shape.n_heads if heads is None else heads)[0], rows)
    except ValueError as exc:
        raise ValueError(f"widths / heads must be [{n}] or [{n_rows}, {n}]: {exc}") from exc
    L, d = shape.seq_len, shape.hidden_size
    per_block = block_macs(L, d, f_rows, h_rows, head_size=shape.head_size)
    per_block_p = block_params(d, f_rows, h_rows * shape.head_size)
    kept = m.sum(axis=1)

    if shape.mapper_mode == "none":
        mapper = np.zeros_like(kept)
    else:  # the merges follow each kept block's width
        r, h = _ints(shape.mapper_rank, shape.mapper_hidden)
        mapper = (_generator_macs(d, n, r, h, shape.mapper_mode, kept)
                  + encoder_macs(m, _merge_macs(d, f_rows, r)))
    return CostBreakdown(
        encoder_macs=encoder_macs(m, per_block),
        encoder_params=device_params_fixed(L, d) + encoder_params(m, per_block_p),
        kept_blocks=kept,
        scoring_macs=scoring_macs(shape.n_candidates, d),
        candidate_params=candidate_params(shape.n_candidates, d),
        controller_macs=controller_macs(d, n, shape.rt_len, shape.extractor),
        controller_params=controller_params(d, n, shape.extractor),
        mapper_macs=np.asarray(mapper, dtype=np.int64),
        mapper_params=int(mapper_params(d, shape.inner_size, n, shape.mapper_rank,
                                        shape.mapper_hidden, shape.mapper_mode)),
    )


# ----------------------------------------------------------------------------- baselines


SOURCE_ANALYTIC = "analytic"
SOURCE_MEASURED = "measured"
SOURCE_ELEMENTWISE = "measured: element-wise only (0 matrix-product MACs)"
SOURCE_LOWER_BOUND = "lower bound"
SOURCES = (SOURCE_ANALYTIC, SOURCE_MEASURED, SOURCE_ELEMENTWISE, SOURCE_LOWER_BOUND)


@dataclass
class ModelCost:
    """Cost of one user's inference with a RecBole model, and where the numbers come from.

    ``macs``: matrix-product MACs of what ``covers`` says (e.g. the encoder of one full-length
    sequence, or one ``predict()`` call on one interaction). ``source``: one of :data:`SOURCES`:
    ``analytic`` (a formula tested against ``FlopCounterMode``), ``measured`` (counted by
    ``FlopCounterMode``), ``measured: element-wise only ...`` (the model multiplies no matrices:
    0 is the true matrix-product count, its element-wise work is not counted) or ``lower bound``
    (ops without a FLOP formula ran, listed in ``uncounted_ops``). ``params``: what one device
    holds besides the item tables (its own user's embedding row, not the whole user table);
    ``candidate_params``: the item-indexed scalars a device caches to score candidates;
    ``excluded_params``: everything left out of ``params`` (item tables, other users' rows).
    """

    model: str
    macs: int
    params: int
    blocks: int
    source: str
    covers: str = ""
    candidate_params: int = 0
    excluded_params: int = 0
    uncounted_ops: Tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")

    @property
    def flops(self) -> int:
        """``2 * macs``."""
        return 2 * self.macs

    def as_dict(self) -> Dict[str, Any]:
        """A plain dict (for JSON and tables)."""
        return {
            "model": self.model, "macs": self.macs, "params": self.params, "blocks": self.blocks,
            "source": self.source, "covers": self.covers,
            "candidate_params": self.candidate_params, "excluded_params": self.excluded_params,
            "uncounted_ops": list(self.uncounted_ops),
        }


_ENCODER = "encoder of one full-length sequence (scoring excluded)"


def sasrec_cost(model) -> ModelCost:
    """Exact cost of RecBole's SASRec: ``n_layers`` blocks at L = ``max_seq_length``; params =
    position embedding + input LayerNorm + blocks (the item embedding is excluded)."""
    L, d, f = model.max_seq_length, model.hidden_size, model.inner_size
    n = model.n_layers
    per = block_macs(L, d, f, model.n_heads)
    params = device_params_fixed(L, d) + n * block_params(d, f)
    items = int(model.n_items) * d
    return ModelCost("SASRec", n * per, params, n, SOURCE_ANALYTIC, _ENCODER,
                     candidate_params=items, excluded_params=items)


def bert4rec_cost(model) -> ModelCost:
    """Exact cost of RecBole's BERT4Rec ``forward`` for one user.

    ``predict`` drops the oldest item and appends the mask token (``reconstruct_test_data``), so
    the encoder runs at L = ``max_seq_length`` (not L+1). After the blocks, ``output_ffn``
    (d x d) runs on all L positions (``L*d^2``), then GELU and ``output_ln``. Params add
    ``output_ffn`` and ``output_ln``; excluded: the item table (n_items+1 rows, with the mask
    token) and the per-item ``output_bias``.
    """
    L, d, f = model.max_seq_length, model.hidden_size, model.inner_size
    n = model.n_layers
    macs = n * block_macs(L, d, f, model.n_heads) + L * d * d
    params = device_params_fixed(L, d) + n * block_params(d, f) + (d * d + d) + 2 * d
    excluded = (int(model.n_items) + 1) * d + int(model.n_items)
    return ModelCost("BERT4Rec", macs, params, n, SOURCE_ANALYTIC, _ENCODER,
                     candidate_params=int(model.n_items) * (d + 1), excluded_params=excluded)


def gru4rec_cost(model) -> ModelCost:
    """Exact cost of RecBole's GRU4Rec ``forward`` for one user: a GRU (3 gates, input and hidden
    projections on every step, the first step included) over L = ``max_seq_length`` steps, then
    ``dense`` (hidden -> embedding) on all L positions. Kept analytic because a fused RNN kernel
    (e.g. cuDNN on GPU) is one op that ``FlopCounterMode`` does not count."""
    L, e, h = model.max_seq_length, model.embedding_size, model.hidden_size
    layers = model.num_layers
    bias = bool(getattr(getattr(model, "gru_layers", None), "bias", False))
    macs = L * 3 * h * (e + h) + (layers - 1) * L * 3 * h * (h + h) + L * h * e
    params = 3 * h * (e + h) + (layers - 1) * 3 * h * (h + h) + (6 * h * layers if bias else 0)
    params += h * e + e
    items = int(model.n_items) * e  # it scores with the item embedding (embedding_size wide)
    return ModelCost("GRU4Rec", macs, params, layers, SOURCE_ANALYTIC, _ENCODER,
                     candidate_params=items, excluded_params=items)


ANALYTIC = {"SASRec": sasrec_cost, "BERT4Rec": bert4rec_cost, "GRU4Rec": gru4rec_cost}
