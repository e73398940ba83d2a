"""The blocks of the Forward-OFA supernet and the execution of a structure over them.

A supernet is a stack of ``n`` RecBole transformer blocks with residual connections, so any subset
of blocks still computes a valid representation. The structure controller
(:mod:`recbole_fofa.model.controller`) decides which blocks a user keeps; the structural mapper
(:mod:`recbole_fofa.model.mapper`) generates their parameters (:class:`BlockParams`); this module
runs a structure: :func:`run_blocks` (one batch under a keep mask) and :func:`group_by_structure`
(rows grouped by the structure they share).

Elastic blocks: a kept block may run at a smaller feed-forward width ``w`` (its first ``w`` units)
and with fewer heads ``h`` (its first ``h`` heads), the mapper's low-rank factors sliced to match;
at full width it is exactly RecBole's block. The slices are defined once, in ``sliced_weights`` of
:class:`ElasticMultiHeadAttention` and :class:`AdaptiveFeedForward`, and extraction reuses them.

Everything here is plain torch (no RecBole ``Config``); the attention and feed-forward layers are
RecBole's own (``recbole.model.layers``) subclassed, so state dicts match ``TransformerLayer``.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from recbole.model.layers import FeedForward, MultiHeadAttention
from torch import nn

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

    def _tensors(self):
        return self.g1, self.g2, self.ln_scale, self.ln_shift


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
        if gen is None:
            hidden = self.intermediate_act_fn(F.linear(input_tensor, w1, b1))
            out = self.dropout(F.linear(hidden, w2, b2))
            return self.LayerNorm(out + input_tensor)
        u1, v1, u2, v2 = slice_factors(factors, w1.size(0))
        # W1 x + u1 (g1 (v1 x)) as one matmul of [x, g1 v1 x] by [W1, u1]: a rank-r product
        # alone is a poor matmul (r = 8 inner or outer dimension)
        core1 = torch.einsum("b...s,brs->b...r", input_tensor @ v1.t(), gen.g1)
        hidden = F.linear(torch.cat([input_tensor, core1], -1), torch.cat([w1, u1], 1), b1)
        hidden = self.intermediate_act_fn(hidden)
        # W2 h and v2 h from one matmul by [W2; v2], then u2 (g2 (v2 h))
        both = hidden @ torch.cat([w2, v2], 0).t()
        out, projected = both.split([w2.size(0), v2.size(0)], dim=-1)
        core2 = torch.einsum("b...s,brs->b...r", projected, gen.g2)
        out = self.dropout(out + b2 + core2 @ u2.t())
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


class _StraightThroughMix(torch.autograd.Function):
    """``keep * block_out + (1 - keep) * hidden`` for a 0/1 ``keep`` [B, 1, 1]: one ``where`` in
    the forward pass (the same values), the same gradients as the formula in the backward pass
    (``keep`` gets ``sum(g * block_out) - sum(g * hidden)`` per row: the straight-through
    estimator)."""

    @staticmethod
    def forward(ctx, keep, block_out, hidden):
        ctx.save_for_backward(keep, block_out, hidden)
        return torch.where(keep.bool(), block_out, hidden)

    @staticmethod
    def backward(ctx, grad):
        keep, block_out, hidden = ctx.saved_tensors
        grad_keep = grad_block = grad_hidden = None
        if ctx.needs_input_grad[0]:
            dims = tuple(range(1, grad.dim()))
            grad_keep = ((grad * block_out).sum(dims, keepdim=True)
                         - (grad * hidden).sum(dims, keepdim=True))
        if ctx.needs_input_grad[1]:
            grad_block = grad * keep
        if ctx.needs_input_grad[2]:
            grad_hidden = grad * (1 - keep)
        return grad_keep, grad_block, grad_hidden


def run_blocks(
    blocks: Sequence[AdaptiveTransformerBlock],
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    mask: torch.Tensor,
    gen_list: Optional[Sequence[Optional[BlockParams]]] = None,
    factors_list: Optional[Sequence[Optional[Factors]]] = None,
    *,
    straight_through: bool = False,
    widths: Optional[Sequence[int]] = None,
    heads: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Apply the block stack under a keep mask: per row [B, n], or batch-wide [n].

    ``straight_through`` (controller training, a 0/1 mask [B, n] that carries gradients): every
    block runs on every row and ``h = m_l * block_l(h) + (1 - m_l) * h``, so the mask's gradient
    reaches the controller. Otherwise (evaluation, and batch-wide masks in supernet training)
    block l runs only on the rows that keep it (a block kept by no row is never called), which is
    what a device running only its own sub-model computes; a batch-wide mask runs each kept block
    once on the whole batch. ``widths`` / ``heads`` (per block, batch-wide; None: full) run kept
    block l at feed-forward width ``widths[l]`` with ``heads[l]`` heads.
    """
    n = len(blocks)
    gen_list = [None] * n if gen_list is None else gen_list
    factors_list = [None] * n if factors_list is None else factors_list
    widths = [None] * n if widths is None else widths
    heads = [None] * n if heads is None else heads

    def call(i, h, att, gen):
        return blocks[i](h, att, gen, factors_list[i], widths[i], heads[i])

    if straight_through:
        m = mask.to(hidden.dtype)
        for i in range(n):
            keep = m[:, i].view(-1, 1, 1)
            out = call(i, hidden, attention_mask, gen_list[i])
            hidden = _StraightThroughMix.apply(keep, out, hidden)
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
