"""The structural mapper of Forward-OFA: *how* each assembled block is parameterised.

A hypernetwork maps the behaviour code z and the structure vector s to each block's generated
parameters: low-rank deltas on the feed-forward weights plus a LayerNorm scale and shift
(:class:`~recbole_fofa.model.layers.BlockParams`), in one forward pass (no on-device gradient
step).

Why parallel heads: blocks are shared by users with different paths, and co-adapted blocks receive
conflicting gradients. With one independent head per block, the loss reaching block ``l``'s
generated parameters only updates head ``l``; a shared head would mix the gradients of all blocks.
"""

import math
from typing import List, Optional, Sequence

import torch
from torch import nn

from recbole_fofa.cost import MAPPER_MODES
from recbole_fofa.model.layers import BlockParams, Factors


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
