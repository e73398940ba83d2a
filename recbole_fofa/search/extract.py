"""Extraction: one sub-network of a trained ForwardOFA as a standalone ``nn.Module``.

:func:`extract` cuts the kept blocks of a :class:`~recbole_fofa.subnet.SubnetConfig` out of the
supernet at their widths (first-k feed-forward units and heads, the slices the elastic blocks
use) into plain ``nn.Linear`` / ``nn.LayerNorm`` layers: no mapper, no controller, no dropout.

* Without a user's items it carries the supernet's weights: the sub-model of a device tier.
* With one user's recent items, that user's generated parameters (the structural mapper's
  low-rank deltas and LayerNorm shifts, conditioned on the config's mask) are folded into the
  weights: the Forward-OFA device sub-model of that user. In the supernet stage the model has no
  generated parameters (as under ``active_subnet``), so both cases give the tier's weights.

Its outputs equal the supernet's under ``model.active_subnet(cfg)``, it exports with
``torch.export``, and its ``forward`` multiplies exactly the matrices the cost model counts for
the encoder (``model.shape.cost(cfg).encoder_macs`` per sequence of ``shape.seq_len`` items):
embedding lookups, LayerNorms, activations, softmax and the final gather count 0 MACs, as in
:mod:`recbole_fofa.cost`. ``scores`` adds the candidate dot products (``C*d`` per user).
"""

import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recbole_fofa.model.layers import slice_factors
from recbole_fofa.subnet import SubnetConfig

# RecBole FeedForward's activation names -> torch functions computing the same values.
ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


class ExtractedBlock(nn.Module):
    """One transformer block at a fixed width: ``heads`` heads of ``head_size`` and ``width``
    feed-forward units, as plain layers (post-LayerNorm residuals, like RecBole's block)."""

    def __init__(self, hidden_size, width, heads, head_size, hidden_act, layer_norm_eps):
        super().__init__()
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={hidden_act!r} cannot be extracted; use one of "
                             f"{sorted(ACTIVATIONS)}")
        attn = heads * head_size
        self.heads, self.head_size, self.width = heads, head_size, width
        self.hidden_act = hidden_act
        self.query = nn.Linear(hidden_size, attn)
        self.key = nn.Linear(hidden_size, attn)
        self.value = nn.Linear(hidden_size, attn)
        self.attn_out = nn.Linear(attn, hidden_size)
        self.attn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dense_1 = nn.Linear(hidden_size, width)
        self.dense_2 = nn.Linear(width, hidden_size)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """hidden [B, L, d], additive attention_mask [B, 1, L, L] -> [B, L, d]."""
        batch, length, _ = hidden.shape
        split = (batch, length, self.heads, self.head_size)
        query = self.query(hidden).view(split).permute(0, 2, 1, 3)
        key = self.key(hidden).view(split).permute(0, 2, 3, 1)
        value = self.value(hidden).view(split).permute(0, 2, 1, 3)
        scores = torch.matmul(query, key) / math.sqrt(self.head_size) + attention_mask
        context = torch.matmul(torch.softmax(scores, dim=-1), value)
        context = context.permute(0, 2, 1, 3).reshape(batch, length, -1)
        hidden = self.attn_norm(self.attn_out(context) + hidden)
        inner = ACTIVATIONS[self.hidden_act](self.dense_1(hidden))
        return self.ffn_norm(self.dense_2(inner) + hidden)


class SubnetModel(nn.Module):
    """A standalone sub-model: embeddings, the kept blocks at their widths, and scoring.

    ``subnet`` is the :class:`SubnetConfig` it was cut with; ``user_specific`` says whether one
    user's generated parameters are folded in.
    """

    def __init__(self, subnet, n_items, seq_len, hidden_size, head_size, hidden_act,
                 layer_norm_eps, user_specific=False):
        super().__init__()
        self.subnet = subnet
        self.user_specific = user_specific
        self.item_embedding = nn.Embedding(n_items, hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(seq_len, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.blocks = nn.ModuleList(
            ExtractedBlock(hidden_size, w, h, head_size, hidden_act, layer_norm_eps)
            for w, h in zip(subnet.widths, subnet.heads)
            if w
        )

    @classmethod
    def from_state(cls, state: Dict[str, torch.Tensor], mask: Sequence[bool], head_size: int,
                   hidden_act: str, layer_norm_eps: float, user_specific: bool = False):
        """The model holding exactly ``state``'s tensors (no copy, no random init): ``mask``
        places the kept blocks among all blocks; sizes, widths and head counts are read off
        the tensors."""
        widths, heads, kept = [], [], 0
        for keep in mask:
            if keep:
                widths.append(state[f"blocks.{kept}.dense_1.weight"].size(0))
                heads.append(state[f"blocks.{kept}.query.weight"].size(0) // head_size)
                kept += 1
            else:
                widths.append(0)
                heads.append(0)
        n_items, hidden_size = state["item_embedding.weight"].shape
        seq_len = state["position_embedding.weight"].size(0)
        with torch.device("meta"):
            model = cls(SubnetConfig(tuple(widths), tuple(heads)), n_items, seq_len,
                        hidden_size, head_size, hidden_act, layer_norm_eps, user_specific)
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()

    @staticmethod
    def attention_mask(item_seq: torch.Tensor) -> torch.Tensor:
        """Additive causal mask over non-padding items: [B, 1, L, L], 0 allowed, -1e4 not."""
        length = item_seq.size(1)
        causal = torch.ones(length, length, dtype=torch.bool, device=item_seq.device).tril()
        allowed = (item_seq != 0)[:, None, None, :] & causal
        return torch.where(allowed, 0.0, -10000.0)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """Right-padded item_seq [B, L] and lengths [B] -> user representations [B, d]."""
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        hidden = self.item_embedding(item_seq) + self.position_embedding(positions)[None]
        hidden = self.LayerNorm(hidden)
        mask = self.attention_mask(item_seq)
        for block in self.blocks:
            hidden = block(hidden, mask)
        index = (item_seq_len - 1).view(-1, 1, 1).expand(-1, 1, hidden.size(-1))
        return hidden.gather(1, index).squeeze(1)

    def scores(self, item_seq, item_seq_len, candidates: Optional[torch.Tensor] = None):
        """Scores of every item [B, n_items] (like ``full_sort_predict``), of shared candidates
        (ids [C] -> [B, C]) or of each row's own candidates (ids [B, C] -> [B, C])."""
        user = self.forward(item_seq, item_seq_len)
        if candidates is None:
            return user @ self.item_embedding.weight.t()
        emb = self.item_embedding(candidates)
        if candidates.dim() == 1:
            return user @ emb.t()
        if candidates.dim() == 2 and candidates.size(0) == user.size(0):
            return torch.einsum("bd,bcd->bc", user, emb)
        raise ValueError(f"candidates must be item ids [C] or [B, C] with B = {user.size(0)}, "
                         f"got shape {tuple(candidates.shape)}")


def _user_inputs(item_seq, item_seq_len, device):
    """One user's right-padded sequence as ([1, T], [1]); the length defaults to its non-pad
    items."""
    seq = torch.as_tensor(item_seq, device=device)
    if seq.dim() == 2 and seq.size(0) == 1:
        seq = seq[0]
    if seq.dim() != 1:
        raise ValueError(f"extract(): item_seq must be ONE user's items, shape [T] or [1, T]; "
                         f"got shape {tuple(torch.as_tensor(item_seq).shape)}")
    if item_seq_len is None:
        length = int((seq != 0).sum())
    else:
        length = int(torch.as_tensor(item_seq_len).reshape(-1)[0])
    if not 1 <= length <= seq.numel():
        raise ValueError(f"extract(): item_seq_len must be in [1, {seq.numel()}], got {length}")
    return seq[None], torch.tensor([length], device=device)


@torch.no_grad()
def subnet_state(model, cfg: SubnetConfig, gen=None,
                 items: bool = True) -> Dict[str, torch.Tensor]:
    """The weights of sub-network ``cfg`` of ``model`` (a ForwardOFA), keyed as a
    :class:`SubnetModel`'s ``state_dict``: fresh tensors, no module built.

    ``gen`` (``model.generated_params(z, cfg)`` for one user) folds that user's low-rank deltas
    and LayerNorm shifts in (:func:`merge_generated`); None keeps the supernet's weights.
    ``items=False`` leaves out the item table (what the cloud sends a device, which holds its own
    cached embeddings).
    """
    state = {}
    if items:
        state["item_embedding.weight"] = model.item_embedding.weight
    state["position_embedding.weight"] = model.position_embedding.weight
    state["LayerNorm.weight"] = model.LayerNorm.weight
    state["LayerNorm.bias"] = model.LayerNorm.bias
    kept = [index for index, keep in enumerate(cfg.mask) if keep]
    for position, index in enumerate(kept):
        attention = model.blocks[index].multi_head_attention
        ffn = model.blocks[index].feed_forward
        prefix = f"blocks.{position}."
        names = ("query", "key", "value", "attn_out")
        for name, (weight, bias) in zip(names, attention.sliced_weights(cfg.heads[index])):
            state[prefix + name + ".weight"] = weight
            state[prefix + name + ".bias"] = bias
        w1, b1, w2, b2 = ffn.sliced_weights(cfg.widths[index])
        state.update({
            prefix + "attn_norm.weight": attention.LayerNorm.weight,
            prefix + "attn_norm.bias": attention.LayerNorm.bias,
            prefix + "dense_1.weight": w1, prefix + "dense_1.bias": b1,
            prefix + "dense_2.weight": w2, prefix + "dense_2.bias": b2,
            prefix + "ffn_norm.weight": ffn.LayerNorm.weight,
            prefix + "ffn_norm.bias": ffn.LayerNorm.bias,
        })
    state = {key: tensor.detach().clone() for key, tensor in state.items()}
    return state if gen is None else merge_generated(state, model, cfg, gen)


@torch.no_grad()
def merge_generated(state: Dict[str, torch.Tensor], model, cfg: SubnetConfig,
                    gen) -> Dict[str, torch.Tensor]:
    """``state`` (:func:`subnet_state` of ``cfg`` without generated parameters) with one user's
    generated parameters ``gen`` folded into the kept feed-forwards: a new dict whose merged
    tensors are new and whose other tensors are ``state``'s own (not copied), so a server can
    keep one tier state per structure and pay only the merge per user."""
    merged = dict(state)
    kept = [index for index, keep in enumerate(cfg.mask) if keep]
    for position, index in enumerate(kept):
        user = gen[index]
        if user is None:
            continue
        prefix = f"blocks.{position}."
        names = [prefix + name for name in FOLDED]
        folded = fold_block(*(state[name] for name in names),
                            slice_factors(model.mapper.factors(index), cfg.widths[index]),
                            user.g1[0], user.g2[0], user.ln_scale[0], user.ln_shift[0])
        merged.update(zip(names, folded))
    return merged


#: The tensors of an extracted block that a user's generated parameters change (in this order).
FOLDED = ("dense_1.weight", "dense_2.weight", "ffn_norm.weight", "ffn_norm.bias")


def fold_block(dense_1, dense_2, ln_weight, ln_bias, factors, g1, g2, ln_scale, ln_shift):
    """One block's :data:`FOLDED` tensors with a user's generated parameters folded in: the
    low-rank deltas ``u1 g1 v1`` and ``u2 g2 v2`` (``factors`` = (u1, v1, u2, v2) at the block's
    width) and the LayerNorm scale and shift added. The one formula of the fold: cores [r, r]
    give one user's tensors, cores [B, r, r] (and shifts [B, d]) a batch of users'."""
    u1, v1, u2, v2 = factors
    return (dense_1 + u1 @ g1 @ v1, dense_2 + u2 @ g2 @ v2, ln_weight + ln_scale,
            ln_bias + ln_shift)


@torch.no_grad()
def extract(model, cfg: SubnetConfig, item_seq=None, item_seq_len=None,
            z: Optional[torch.Tensor] = None) -> SubnetModel:
    """The sub-network ``cfg`` of ``model`` (a ForwardOFA) as a standalone :class:`SubnetModel`.

    ``item_seq`` (one user's right-padded items, [T] or [1, T]) with optional ``item_seq_len``
    folds that user's generated parameters in (adapt stage); so does ``z``, the user's behaviour
    code [1, d] when the caller computed it already (the cloud does, from the features a device
    uploads). With neither, the supernet's weights are used. The result is in eval mode, on the
    model's device, detached from the model.
    """
    if not isinstance(cfg, SubnetConfig):
        raise TypeError(f"extract() takes a SubnetConfig, got {type(cfg).__name__}")
    if z is not None and item_seq is not None:
        raise ValueError("extract(): pass item_seq or z (one user's behaviour code), not both")
    model.shape.validate(cfg)
    device = model.item_embedding.weight.device
    if item_seq is not None:
        seq, length = _user_inputs(item_seq, item_seq_len, device)
        was_training = model.training
        model.eval()
        try:
            z, _ = model.code_and_logits(seq, length)
        finally:
            model.train(was_training)
    gen = None
    if z is not None:
        if z.dim() != 2 or z.size(0) != 1:
            raise ValueError(f"extract(): z must be one user's behaviour code [1, d], got shape "
                             f"{tuple(z.shape)}")
        gen = model.generated_params(z, cfg)
    return SubnetModel.from_state(
        subnet_state(model, cfg, gen), cfg.mask, model.shape.head_size,
        model.blocks[0].feed_forward.hidden_act, model.LayerNorm.eps,
        user_specific=gen is not None,
    )
