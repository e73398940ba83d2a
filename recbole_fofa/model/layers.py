"""Building blocks of Forward-OFA: where to assemble blocks, and how to parameterise them.

A supernet is a stack of ``n`` RecBole transformer blocks with residual connections, so any subset
of blocks still computes a valid representation. Per device (user session):

* the **structure controller** reads the last ``rt_len`` behaviours and outputs one logit per block:
  *where* to assemble blocks (``gumbel_sigmoid`` while training, ``deterministic_mask`` and
  ``repair_to_budget`` at evaluation);
* the **structural mapper** (a hypernetwork) maps the behaviour code and the structure vector to
  *how* each assembled block is parameterised: low-rank deltas on the feed-forward weights plus a
  LayerNorm scale and shift, all in one forward pass (no on-device gradient step).

Why parallel mapper heads: blocks are shared by users with different paths, and co-adapted blocks
receive conflicting gradients. With one independent head per block, the loss reaching block ``l``'s
generated parameters only updates head ``l``; a shared head would mix the gradients of all blocks.

Elastic blocks: a kept block may run at a smaller feed-forward width ``w`` (its first ``w`` units)
and with fewer heads ``h`` (its first ``h`` heads), the mapper's low-rank factors sliced to match;
at full width it is exactly RecBole's block. The slices are defined once, in ``sliced_weights`` of
:class:`ElasticMultiHeadAttention` and :class:`AdaptiveFeedForward`, and extraction reuses them.

Everything here is plain torch (no RecBole ``Config``); the attention and feed-forward layers are
RecBole's own (``recbole.model.layers``) subclassed, so state dicts match ``TransformerLayer``.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from recbole.model.layers import FeedForward, MultiHeadAttention
from torch import nn

from recbole_fofa.cost import EXTRACTORS, MAPPER_MODES

Factors = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class BlockParams:
    """Per-sample generated parameters of one block.

    ``g1``/``g2`` [B, r, r] are the low-rank cores of the two dense layers' deltas; ``ln_scale`` and
    ``ln_shift`` [B, d] are added to the feed-forward LayerNorm's weight and bias.
    """

    g1: torch.Tensor
    g2: torch.Tensor
    ln_scale: torch.Tensor
    ln_shift: torch.Tensor

    def index_select(self, rows: torch.Tensor) -> "BlockParams":
        """The parameters of the given rows (batch indices) only."""
        return BlockParams(*(t.index_select(0, rows) for t in self._tensors()))

    def row(self, i: int) -> "BlockParams":
        """The parameters of sample ``i``, keeping a batch dimension of 1."""
        return BlockParams(*(t[i : i + 1] for t in self._tensors()))

    def _tensors(self):
        return self.g1, self.g2, self.ln_scale, self.ln_shift


def _low_rank(x: torch.Tensor, v: torch.Tensor, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``x @ (u @ g[b] @ v).T`` per sample b, through rank r: never builds a [B, out, in] tensor."""
    a = x @ v.t()  # [B, ..., r]
    c = torch.einsum("b...s,brs->b...r", a, g)
    return c @ u.t()


def _check_slice(what: str, value: int, full: int) -> None:
    if isinstance(value, bool) or not 1 <= int(value) <= full:
        raise ValueError(f"{what} must be an integer in [1, {full}], got {value!r}")


def slice_factors(factors: Optional[Factors], width: int) -> Optional[Factors]:
    """Low-rank factors of a feed-forward at width ``width``: ``u1[:w]`` and ``v2[:, :w]``."""
    if factors is None:
        return None
    u1, v1, u2, v2 = factors
    if width == u1.size(0):
        return factors
    return u1[:width], v1, u2, v2[:, :width]


class AdaptiveFeedForward(FeedForward):
    """RecBole's ``FeedForward`` whose weights and LayerNorm affine can be shifted per sample,
    run at any width (its first ``width`` units).

    With ``gen`` (a ``BlockParams``) and ``factors`` (u1 [d_ff, r], v1 [r, d], u2 [d, r],
    v2 [r, d_ff]) sample b uses ``W1 + u1 g1[b] v1``, ``W2 + u2 g2[b] v2`` and LayerNorm affine
    ``(weight + ln_scale[b], bias + ln_shift[b])``. With ``gen=None`` at full width it is exactly
    ``FeedForward``.
    """

    def __init__(self, hidden_size, inner_size, hidden_dropout_prob, hidden_act, layer_norm_eps):
        super().__init__(hidden_size, inner_size, hidden_dropout_prob, hidden_act, layer_norm_eps)
        self.hidden_act = hidden_act  # the name, for extraction into plain layers

    @property
    def inner_size(self) -> int:
        return self.dense_1.out_features

    def sliced_weights(self, width: Optional[int] = None):
        """(W1 [w, d], b1 [w], W2 [d, w], b2 [d]) of the first ``width`` units (views)."""
        width = self.inner_size if width is None else width
        _check_slice("feed-forward width", width, self.inner_size)
        d1, d2 = self.dense_1, self.dense_2
        if width == self.inner_size:
            return d1.weight, d1.bias, d2.weight, d2.bias
        return d1.weight[:width], d1.bias[:width], d2.weight[:, :width], d2.bias

    def forward(
        self,
        input_tensor: torch.Tensor,
        gen: Optional[BlockParams] = None,
        factors: Optional[Factors] = None,
        width: Optional[int] = None,
    ) -> torch.Tensor:
        full = width is None or width == self.inner_size
        if gen is None and full:
            return super().forward(input_tensor)
        if gen is not None and factors is None:
            raise ValueError("AdaptiveFeedForward: `gen` was given without low-rank `factors`")
        w1, b1, w2, b2 = self.sliced_weights(width)
        hidden = F.linear(input_tensor, w1, b1)
        if gen is not None:
            u1, v1, u2, v2 = slice_factors(factors, w1.size(0))
            hidden = hidden + _low_rank(input_tensor, v1, gen.g1, u1)
        hidden = self.intermediate_act_fn(hidden)
        out = F.linear(hidden, w2, b2)
        if gen is not None:
            out = out + _low_rank(hidden, v2, gen.g2, u2)
        out = self.dropout(out)
        if gen is None:
            return self.LayerNorm(out + input_tensor)
        ln = self.LayerNorm
        normed = F.layer_norm(out + input_tensor, ln.normalized_shape, eps=ln.eps)
        shape = (gen.ln_scale.size(0),) + (1,) * (normed.dim() - 2) + (-1,)
        weight = (ln.weight + gen.ln_scale).view(shape)
        bias = (ln.bias + gen.ln_shift).view(shape)
        return normed * weight + bias


class ElasticMultiHeadAttention(MultiHeadAttention):
    """RecBole's ``MultiHeadAttention`` that can run its first ``heads`` heads only.

    Heads are sliced first-k: the query/key/value projections keep their first
    ``heads * head_size`` outputs and the output projection the same input columns. With all
    heads it is exactly RecBole's layer (same state dict, same outputs).
    """

    def sliced_weights(self, heads: Optional[int] = None):
        """((Wq, bq), (Wk, bk), (Wv, bv), (Wo, bo)) of the first ``heads`` heads (views)."""
        heads = self.num_attention_heads if heads is None else heads
        _check_slice("head count", heads, self.num_attention_heads)
        a = heads * self.attention_head_size
        qkv = tuple((lin.weight[:a], lin.bias[:a]) for lin in (self.query, self.key, self.value))
        return qkv + ((self.dense.weight[:, :a], self.dense.bias),)

    def forward(
        self, input_tensor: torch.Tensor, attention_mask: torch.Tensor, heads: Optional[int] = None
    ) -> torch.Tensor:
        if heads is None or heads == self.num_attention_heads:
            return super().forward(input_tensor, attention_mask)
        (wq, bq), (wk, bk), (wv, bv), (wo, bo) = self.sliced_weights(heads)
        batch, length = input_tensor.shape[:2]
        split = (batch, length, heads, self.attention_head_size)
        query = F.linear(input_tensor, wq, bq).view(split).permute(0, 2, 1, 3)
        key = F.linear(input_tensor, wk, bk).view(split).permute(0, 2, 3, 1)
        value = F.linear(input_tensor, wv, bv).view(split).permute(0, 2, 1, 3)
        scores = torch.matmul(query, key) / self.sqrt_attention_head_size + attention_mask
        probs = self.attn_dropout(self.softmax(scores))
        context = torch.matmul(probs, value).permute(0, 2, 1, 3).reshape(batch, length, -1)
        out = self.out_dropout(F.linear(context, wo, bo))
        return self.LayerNorm(out + input_tensor)


class AdaptiveTransformerBlock(nn.Module):
    """An ``ElasticMultiHeadAttention`` followed by an ``AdaptiveFeedForward``.

    Attribute names match ``recbole.model.layers.TransformerLayer``, so its state dict loads
    strictly and, with ``gen=None`` at full width, the outputs are identical.
    """

    def __init__(
        self,
        n_heads: int,
        hidden_size: int,
        inner_size: int,
        hidden_dropout_prob: float,
        attn_dropout_prob: float,
        hidden_act: str,
        layer_norm_eps: float,
    ):
        super().__init__()
        self.multi_head_attention = ElasticMultiHeadAttention(
            n_heads, hidden_size, hidden_dropout_prob, attn_dropout_prob, layer_norm_eps
        )
        self.feed_forward = AdaptiveFeedForward(
            hidden_size, inner_size, hidden_dropout_prob, hidden_act, layer_norm_eps
        )

    @property
    def inner_size(self) -> int:
        return self.feed_forward.inner_size

    @property
    def n_heads(self) -> int:
        return self.multi_head_attention.num_attention_heads

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        gen: Optional[BlockParams] = None,
        factors: Optional[Factors] = None,
        width: Optional[int] = None,
        heads: Optional[int] = None,
    ) -> torch.Tensor:
        """hidden [B, L, d], additive attention_mask [B or 1, 1, L, L] -> [B, L, d], at
        feed-forward ``width`` and ``heads`` heads (None: full)."""
        attention_output = self.multi_head_attention(hidden, attention_mask, heads)
        return self.feed_forward(attention_output, gen, factors, width)


def merge_block_params(
    ffn_or_block: Union[FeedForward, AdaptiveTransformerBlock],
    gen_row: Optional[BlockParams],
    factors: Optional[Factors],
) -> dict:
    """Fold ONE sample's generated parameters into plain weights.

    ``gen_row`` holds a single sample (batch dimension 1, or none). Returns a detached state dict
    that loads strictly into RecBole's ``FeedForward`` (for a feed-forward) or ``TransformerLayer``
    (for a block), which then reproduces the generated block for that sample.
    """
    if isinstance(ffn_or_block, AdaptiveTransformerBlock):
        state = {k: t.detach().clone() for k, t in ffn_or_block.state_dict().items()}
        merged = merge_block_params(ffn_or_block.feed_forward, gen_row, factors)
        state.update({f"feed_forward.{k}": t for k, t in merged.items()})
        return state
    state = {k: t.detach().clone() for k, t in ffn_or_block.state_dict().items()}
    if gen_row is None:
        return state
    if gen_row.ln_scale.dim() == 2 and gen_row.ln_scale.size(0) != 1:
        raise ValueError("merge_block_params: `gen_row` must hold one sample (use .row(i))")
    u1, v1, u2, v2 = (f.detach() for f in factors)
    g1, g2 = (g.detach().reshape(g.shape[-2:]) for g in (gen_row.g1, gen_row.g2))
    scale, shift = (t.detach().reshape(-1) for t in (gen_row.ln_scale, gen_row.ln_shift))
    state["dense_1.weight"] += u1 @ g1 @ v1
    state["dense_2.weight"] += u2 @ g2 @ v2
    state["LayerNorm.weight"] += scale
    state["LayerNorm.bias"] += shift
    return state


class _Factors(nn.Module):
    """Static low-rank factors of one block's feed-forward deltas (``W + u g v``)."""

    def __init__(self, hidden_size: int, inner_size: int, rank: int):
        super().__init__()
        self.u1 = nn.Parameter(torch.empty(inner_size, rank))
        self.v1 = nn.Parameter(torch.empty(rank, hidden_size))
        self.u2 = nn.Parameter(torch.empty(hidden_size, rank))
        self.v2 = nn.Parameter(torch.empty(rank, inner_size))

    def reset_parameters(self) -> None:
        # Scale-preserving random projections: x @ v.T and c @ u.T keep the per-coordinate scale
        # of their input, so the generated r x r core acts like an ordinary weight matrix.
        rank = self.u1.size(1)
        for v in (self.v1, self.v2):
            nn.init.normal_(v, std=1.0 / math.sqrt(v.size(1)))
        for u in (self.u1, self.u2):
            nn.init.normal_(u, std=1.0 / math.sqrt(rank))

    def as_tuple(self) -> Factors:
        return self.u1, self.v1, self.u2, self.v2


class StructuralMapper(nn.Module):
    """Hypernetwork: (behaviour code z [B, d], structure vector s [B, n]) -> per-block params.

    ``mode='parallel'``: one independent head per block, ``Linear(d+n, h) -> tanh -> Linear(h, P)``
    with ``P = 2 r^2 + 2 d``; ``'shared'``: one such MLP emitting ``n * P`` values; ``'none'``:
    generates nothing. Each block has its own static factors (``factors(l)``). The last layer of
    every head starts at zero, so at initialisation every block equals the plain supernet block.
    """

    def __init__(
        self,
        hidden_size: int,
        inner_size: int,
        n_blocks: int,
        rank: int,
        mapper_hidden: int,
        mode: str = "parallel",
    ):
        super().__init__()
        if mode not in MAPPER_MODES:
            raise ValueError(f"mapper_mode={mode!r} is not supported; use one of {MAPPER_MODES}")
        self.mode = mode
        self.hidden_size = hidden_size
        self.n_blocks = n_blocks
        self.rank = rank
        self.params_per_block = 2 * rank * rank + 2 * hidden_size
        n_heads = {"parallel": n_blocks, "shared": 1, "none": 0}[mode]
        out_size = self.params_per_block * (n_blocks if mode == "shared" else 1)
        self.heads = nn.ModuleList(
            nn.Sequential(
                nn.Linear(hidden_size + n_blocks, mapper_hidden),
                nn.Tanh(),
                nn.Linear(mapper_hidden, out_size),
            )
            for _ in range(n_heads)
        )
        n_factor_sets = 0 if mode == "none" else n_blocks
        self.factor_sets = nn.ModuleList(
            _Factors(hidden_size, inner_size, rank) for _ in range(n_factor_sets)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the factors and zero the heads' last layers.

        Call again after a blanket weight init (e.g. ``model.apply(model._init_weights)``).
        """
        for head in self.heads:
            head[0].reset_parameters()
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)
        for factors in self.factor_sets:
            factors.reset_parameters()

    def factors(self, block: int) -> Optional[Factors]:
        """(u1 [d_ff, r], v1 [r, d], u2 [d, r], v2 [r, d_ff]) of ``block``; None in 'none' mode."""
        return self.factor_sets[block].as_tuple() if self.mode != "none" else None

    def _split(self, flat: torch.Tensor) -> BlockParams:
        r, d = self.rank, self.hidden_size
        g1, g2, scale, shift = flat.split([r * r, r * r, d, d], dim=-1)
        return BlockParams(g1.view(-1, r, r), g2.view(-1, r, r), scale, shift)

    def forward(
        self, z: torch.Tensor, s: torch.Tensor, blocks: Optional[Sequence[int]] = None
    ) -> List[Optional[BlockParams]]:
        """List of ``n_blocks`` entries: ``BlockParams`` for requested blocks, else None.

        ``blocks`` restricts generation to those block indices (default: all); in 'parallel' mode
        only their heads run.
        """
        out: List[Optional[BlockParams]] = [None] * self.n_blocks
        if self.mode == "none":
            return out
        wanted = range(self.n_blocks) if blocks is None else blocks
        x = torch.cat([z, s.to(z.dtype)], dim=-1)
        if self.mode == "parallel":
            for b in wanted:
                out[b] = self._split(self.heads[b](x))
        else:
            flat = self.heads[0](x).view(x.size(0), self.n_blocks, self.params_per_block)
            for b in wanted:
                out[b] = self._split(flat[:, b])
        return out


def last_k(
    item_seq: torch.Tensor, item_seq_len: torch.Tensor, k: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Last ``k`` valid items of right-padded sequences, right-padded with 0.

    item_seq [B, T], item_seq_len [B] -> ([B, k], min(len, k) [B]).
    """
    lengths = item_seq_len.clamp(min=0, max=item_seq.size(1))
    new_len = lengths.clamp(max=k)
    start = lengths - new_len
    pos = torch.arange(k, device=item_seq.device)
    idx = (start.unsqueeze(1) + pos).clamp(max=item_seq.size(1) - 1)
    out = item_seq.gather(1, idx)
    return out.masked_fill(pos >= new_len.unsqueeze(1), 0), new_len


class StructureController(nn.Module):
    """Where to assemble blocks: behaviours [B, T, d] -> (code z [B, d], block logits [B, n]).

    Extractor ``'gru'`` (hidden state at the last valid step) or ``'mean'`` (masked mean), then one
    linear layer. Sequences are right-padded; pass the ``last_k`` window of real-time behaviours.
    """

    def __init__(self, hidden_size: int, n_blocks: int, extractor: str = "gru"):
        super().__init__()
        if extractor not in EXTRACTORS:
            raise ValueError(f"extractor={extractor!r} is not supported; use one of {EXTRACTORS}")
        self.extractor = extractor
        self.gru = None
        if extractor == "gru":
            self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.linear = nn.Linear(hidden_size, n_blocks)

    def forward(
        self, item_emb: torch.Tensor, lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        lengths = lengths.clamp(min=1, max=item_emb.size(1))
        if self.gru is not None:
            # Right padding only follows the valid steps, so output[len - 1] is exactly the
            # state after the last valid item (same as packing, without the repacking cost).
            output, _ = self.gru(item_emb)
            idx = (lengths - 1).view(-1, 1, 1).expand(-1, 1, output.size(-1))
            z = output.gather(1, idx).squeeze(1)
        else:
            pos = torch.arange(item_emb.size(1), device=item_emb.device)
            valid = (pos < lengths.unsqueeze(1)).unsqueeze(-1).to(item_emb.dtype)
            z = (item_emb * valid).sum(1) / lengths.unsqueeze(1).to(item_emb.dtype)
        return z, self.linear(z)


def gumbel_sigmoid(
    logits: torch.Tensor,
    tau: float,
    hard: bool = True,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Relaxed Bernoulli sample ``sigmoid((logits + logistic noise) / tau)``.

    ``hard``: forward values are exactly 0/1 (threshold 0.5, so P(1) = sigmoid(logits) at any
    ``tau``); gradients pass straight through the soft sample.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    eps = torch.finfo(logits.dtype).eps
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    u = u.clamp(eps, 1 - eps)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / tau)
    if not hard:
        return soft
    hard_y = (soft > 0.5).to(soft.dtype)
    # Exact 0/1: soft > 0.5 makes (1 - soft) + soft exact in floating point (Sterbenz).
    return hard_y - soft.detach() + soft


def deterministic_mask(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep block l iff p_l >= threshold; a row that keeps nothing keeps its argmax. Bool [B, n]."""
    mask = probs >= threshold
    empty = ~mask.any(dim=1)
    fallback = F.one_hot(probs.argmax(dim=1), probs.size(1)).bool()
    return torch.where(empty.unsqueeze(1), fallback, mask)


def repair_to_budget(
    mask: torch.Tensor,
    probs: torch.Tensor,
    block_costs: torch.Tensor,
    budget: Union[float, torch.Tensor],
) -> torch.Tensor:
    """Drop the lowest-probability kept blocks of each row until its cost is <= ``budget``.

    mask bool [B, n], probs [B, n], block_costs [n], budget scalar or [B] -> bool [B, n].
    If even the most probable kept block does not fit, the row keeps its most probable kept
    block that fits alone, or else the cheapest block (callers check budget >= cheapest block).
    """
    mask = mask.bool()
    costs = block_costs.to(device=probs.device, dtype=torch.float64)
    budget = torch.as_tensor(budget, dtype=torch.float64, device=probs.device).reshape(-1, 1)
    neg_inf = torch.full_like(probs, float("-inf"))
    order = torch.where(mask, probs, neg_inf).argsort(dim=1, descending=True, stable=True)
    kept_sorted = mask.gather(1, order)
    cum = (costs[order] * kept_sorted).cumsum(dim=1)
    keep = torch.zeros_like(mask).scatter(1, order, kept_sorted & (cum <= budget))

    fits_alone = mask & (costs <= budget)
    cheapest = torch.where(costs == costs.min(), probs, neg_inf).argmax(dim=1)
    best_fit = torch.where(fits_alone, probs, neg_inf).argmax(dim=1)
    choice = torch.where(fits_alone.any(dim=1), best_fit, cheapest)
    fallback = F.one_hot(choice, mask.size(1)).bool()
    return torch.where(keep.any(dim=1, keepdim=True), keep, fallback)


#: Structures of up to this many blocks are grouped through one integer code per row
MAX_CODE_BLOCKS = 62


def group_by_structure(
    mask: torch.Tensor,
) -> Tuple[torch.Tensor, List[List[int]], List[int], torch.Tensor]:
    """Rows of a keep mask grouped by structure (one host sync for the whole batch).

    mask bool [B, n] -> (distinct structures [G, n] on mask's device, in lexicographic order
    (block 0 first, dropped before kept), their kept block indices (G host lists), rows per
    structure (G ints), ``order`` [B]: the row indices sorted by structure, stably, so
    ``order[sum(counts[:g]):sum(counts[:g + 1])]`` are structure g's rows in batch order).
    Up to ``MAX_CODE_BLOCKS`` blocks a row is one integer (block 0 the most significant bit) and
    the grouping one sort of B integers; ``torch.unique(dim=0)`` is several times slower.
    """
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"group_by_structure: expected a bool mask [B, n], got {mask.dtype} "
                         f"{tuple(mask.shape)}")
    n = mask.size(1)
    if n <= MAX_CODE_BLOCKS:
        bits = torch.arange(n - 1, -1, -1, device=mask.device)
        weights = torch.ones_like(bits).bitwise_left_shift(bits)
        codes = (mask.long() * weights).sum(dim=1)
        sorted_codes, order = codes.sort(stable=True)
        unique_codes, counts = torch.unique_consecutive(sorted_codes, return_counts=True)
        structures = unique_codes.unsqueeze(1).bitwise_and(weights).ne(0)
    else:
        structures, inverse, counts = torch.unique(
            mask, dim=0, return_inverse=True, return_counts=True
        )
        order = inverse.argsort(stable=True)
    kept = [[i for i, keep in enumerate(row) if keep] for row in structures.tolist()]
    return structures, kept, counts.tolist(), order


def run_blocks(
    blocks: Sequence[AdaptiveTransformerBlock],
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    mask: torch.Tensor,
    gen_list: Optional[Sequence[Optional[BlockParams]]],
    factors_list: Optional[Sequence[Optional[Factors]]],
    soft: bool,
    widths: Optional[Sequence[int]] = None,
    heads: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Apply the block stack under a keep mask: per row [B, n], or batch-wide [n].

    ``soft`` (controller training): ``h = m_l * block_l(h) + (1 - m_l) * h`` on all rows, so the
    straight-through mask m carries gradients. Otherwise (evaluation, and batch-wide masks in
    supernet training) block l runs only on the rows that keep it (a block kept by no row is never
    called), which is what a device running only its own sub-model computes; a batch-wide mask
    runs each kept block once on the whole batch. ``widths`` / ``heads`` (per block, batch-wide;
    None: full) run kept block l at feed-forward width ``widths[l]`` with ``heads[l]`` heads.
    """
    n = len(blocks)
    gen_list = [None] * n if gen_list is None else gen_list
    factors_list = [None] * n if factors_list is None else factors_list
    widths = [None] * n if widths is None else widths
    heads = [None] * n if heads is None else heads

    def call(i, h, att, gen):
        return blocks[i](h, att, gen, factors_list[i], widths[i], heads[i])

    if soft:
        m = mask.to(hidden.dtype)
        for i in range(n):
            keep = m[:, i].view(-1, 1, 1)
            hidden = keep * call(i, hidden, attention_mask, gen_list[i]) + (1 - keep) * hidden
        return hidden
    mask = mask if mask.dtype == torch.bool else mask > 0.5
    if mask.dim() == 1:
        for i in mask.nonzero().flatten().tolist():
            hidden = call(i, hidden, attention_mask, gen_list[i])
        return hidden
    batch = hidden.size(0)
    for i in range(n):
        rows = mask[:, i].nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        if rows.numel() == batch:
            hidden = call(i, hidden, attention_mask, gen_list[i])
            continue
        sub_mask = attention_mask if attention_mask.size(0) == 1 else attention_mask[rows]
        gen = gen_list[i].index_select(rows) if gen_list[i] is not None else None
        out = call(i, hidden.index_select(0, rows), sub_mask, gen)
        hidden = hidden.index_copy(0, rows, out)
    return hidden
