"""The structure controller of Forward-OFA: *where* to assemble blocks for a device.

It reads the device's real-time behaviours (the last ``rt_len`` items, :func:`last_k`) and outputs
a behaviour code and one logit per block. While training, a straight-through Gumbel-sigmoid sample
of the logits (:func:`gumbel_sigmoid`) is the structure, so the sparsity term reaches the
controller; at evaluation the structure is deterministic (:func:`deterministic_mask`) and, under a
device budget, repaired to fit it (:func:`repair_to_budget`).
"""

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from recbole_fofa.cost import EXTRACTORS


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
    noise: float = 1.0,
) -> torch.Tensor:
    """Relaxed Bernoulli sample ``sigmoid((logits + noise * logistic noise) / tau)``.

    ``hard``: forward values are exactly 0/1 (threshold 0.5, so P(1) = sigmoid(logits) at any
    ``tau`` when ``noise`` is 1; at ``noise`` 0 the structure is ``logits > 0``, evaluation's at
    ``keep_threshold`` 0.5); gradients pass straight through the soft sample.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    eps = torch.finfo(logits.dtype).eps
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    u = u.clamp(eps, 1 - eps)
    logistic = torch.log(u) - torch.log1p(-u)
    soft = torch.sigmoid((logits + (logistic if noise == 1.0 else noise * logistic)) / tau)
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
