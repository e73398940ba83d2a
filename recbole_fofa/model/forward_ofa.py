"""Forward-OFA (KDD 2025) as a RecBole sequential model.

A SASRec-style supernet of ``n_blocks`` removable transformer blocks; a structure controller that
reads a user's last ``rt_len`` behaviours and decides which blocks to assemble; a structural mapper
(hypernetwork) that generates the assembled blocks' parameters from the same behaviours and the
structure. Adapting to a device is one forward pass: no gradient step ever runs for a device.

Two stages (driven by :class:`recbole_fofa.trainer.ForwardOFATrainer` through :attr:`stage`):

* ``supernet``: every step trains the largest network plus sampled sub-networks (OFA's sandwich:
  the smallest, then random ones), distilling the largest network's scores into the sub-networks;
  the first ``supernet_full_epochs`` epochs train the largest network alone (OFA's progressive
  shrinking starts there).
  Without a :attr:`ForwardOFA.subnet_space` the sub-networks are block masks (the largest is the
  full network, the smallest one random block); with one (an elastic or compound search space)
  they are that space's configs, widths and heads included, so every sub-network a search may
  pick was trained;
* ``adapt``: controller + mapper (and the backbone at a scaled learning rate) under
  ``rec_loss + sparsity_weight * sum_l(cost_l * p_l) / sum_l(cost_l)``; with ``sparsity_target``
  t only the per-user excess ``max(0, sum_l(cost_l * p_l) / sum_l(cost_l) - t)`` is penalised.

For the subnet search, :meth:`ForwardOFA.active_subnet` scores every user with one fixed
:class:`~recbole_fofa.subnet.SubnetConfig` and :meth:`ForwardOFA.budget` applies a per-user budget
to the controller, both for the duration of a ``with`` block.
"""

import contextlib
import math
from enum import Enum
from numbers import Real
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss
from torch import nn

from recbole_fofa import checks, cost
from recbole_fofa.model.controller import (
    StructureController,
    deterministic_mask,
    gumbel_sigmoid,
    last_k,
    repair_to_budget,
)
from recbole_fofa.model.layers import AdaptiveTransformerBlock, group_by_structure, run_blocks
from recbole_fofa.model.mapper import StructuralMapper
from recbole_fofa.subnet import SubnetConfig, SupernetShape


class Stage(str, Enum):
    """ForwardOFA's training stage: the supernet (stage 1), then controller + mapper (stage 2).

    A ``str``: ``Stage.ADAPT == "adapt"``, and a stage read from an old checkpoint (a plain
    string) is coerced by :attr:`ForwardOFA.stage`.
    """

    SUPERNET = "supernet"
    ADAPT = "adapt"

    def __str__(self):
        return self.value

    @classmethod
    def of(cls, value):
        """``value`` (a Stage or its string) as a Stage; a ValueError names the allowed values."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"stage = {value!r}: use one of {[s.value for s in cls]}") from None


class Encoded(NamedTuple):
    """One forward pass of a batch (:meth:`ForwardOFA._encode_batch`)."""

    #: user representations [B, d]
    user: torch.Tensor
    #: the structure each row ran [B, n]: 0/1 floats (straight-through) while a controller
    #: trains, else bool
    mask: torch.Tensor
    #: keep probabilities [B, n] the sparsity term penalises; None where no learned structure
    #: decides (supernet stage, a fixed sub-network, ``controller: none`` while training)
    probs: Optional[torch.Tensor]


class ForwardOFA(SequentialRecommender):
    """Device-specific sub-networks, structure and parameters, in one forward pass."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self._check_config(config)
        self.n_blocks = config["n_blocks"]
        self.n_heads = config["n_heads"]
        self.hidden_size = config["hidden_size"]
        self.inner_size = config["inner_size"]
        self.initializer_range = config["initializer_range"]
        self.loss_type = config["loss_type"]
        self.rt_len = config["rt_len"]
        self.keep_threshold = config["keep_threshold"]
        self.controller_mode = config["controller"]
        self.sparsity_weight = config["sparsity_weight"]
        self.supernet_subnets = config["supernet_subnets"]
        self.supernet_full_epochs = config["supernet_full_epochs"]
        self.sparsity_target = config["sparsity_target"]
        self.distill_weight = config["distill_weight"]
        self.adapt_distill_weight = config["adapt_distill_weight"]
        self.eval_grouping = config["eval_grouping"]

        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.blocks = nn.ModuleList(
            AdaptiveTransformerBlock(
                self.n_heads,
                self.hidden_size,
                self.inner_size,
                config["hidden_dropout_prob"],
                config["attn_dropout_prob"],
                config["hidden_act"],
                config["layer_norm_eps"],
            )
            for _ in range(self.n_blocks)
        )
        self.controller = StructureController(self.hidden_size, self.n_blocks, config["extractor"])
        self.mapper = StructuralMapper(
            self.hidden_size,
            self.inner_size,
            self.n_blocks,
            config["mapper_rank"],
            config["mapper_hidden"],
            config["mapper_mode"],
        )
        if self.loss_type == "BPR":
            self.loss_fct = BPRLoss()
        elif self.loss_type == "CE":
            self.loss_fct = nn.CrossEntropyLoss()
        else:
            raise ValueError(f"config key `loss_type` = {self.loss_type!r}: use 'CE' or 'BPR'")

        self.shape = SupernetShape.from_config(config, self.n_items)
        self.register_buffer(
            "block_costs", torch.as_tensor(self.shape.block_macs(), dtype=torch.float32),
            persistent=False,
        )
        self.device_budget = self.budget_in_macs(config["device_budget"], key="device_budget")

        # A new model starts where training starts; a loaded one keeps its saved stage.
        self.stage = Stage.SUPERNET if config["supernet_epochs"] > 0 else Stage.ADAPT
        self.tau = config["tau_start"]
        self.gumbel_noise = 1.0  # the trainer anneals it towards `gumbel_noise_end` with tau
        # Supernet steps taken so far: with a subnet_space, step t samples from rng(seed, t), and
        # a resumed run continues the sequence.
        self.supernet_step = 0
        # Stage-1 epoch being trained (the trainer sets it): the first `supernet_full_epochs`
        # train the full network alone.
        self.supernet_epoch = 0
        self.sample_seed = int(config["seed"])
        self.other_parameter_name = ["stage", "supernet_step"]
        self._subnet_space = None
        self._active = None  # the SubnetConfig inside `active_subnet`
        self._eval_masks = None  # a list while an evaluation records per-user structures
        self.reset_kept_blocks()
        self.apply(self._init_weights)
        self.mapper.reset_parameters()  # generated deltas start at exactly zero
        if config["controller_init_keep"] is not None:  # start near "keep every block"
            p = float(config["controller_init_keep"])
            nn.init.constant_(self.controller.linear.bias, math.log(p / (1 - p)))

    @property
    def stage(self) -> Stage:
        """The training stage (:class:`Stage`); set from a Stage or its string."""
        return self._stage

    @stage.setter
    def stage(self, value):
        self._stage = Stage.of(value)

    def other_parameter(self):
        """What a checkpoint keeps beside the weights; the stage as its plain string."""
        return {"stage": self.stage.value, "supernet_step": self.supernet_step}

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _check_config(config):
        """ValueError naming the key, the value and what is allowed, for every ForwardOFA key.

        The plugin's Config already ran these checks before the dataset loaded; they run again
        here for a model built from RecBole's own Config.
        """
        checks.check_keys(config, "ForwardOFA")

    @property
    def controller_min_macs(self):
        """The smallest budget the per-user controller can meet: one full block's MACs."""
        return self.shape.cheapest_macs()

    def budget_in_macs(self, budget, key=None):
        """A per-user budget in MACs as the controller applies it (None: no budget).

        ``key`` (config key ``device_budget``): a fraction of the full encoder or a string with a
        unit, read by :meth:`SupernetShape.budget_macs`. Without it (:meth:`budget`): MACs as a
        number or a string. A ValueError when it is below one full block: the controller drops
        whole blocks.
        """
        if budget is None:
            return None
        if key is not None or isinstance(budget, str):
            what = f"config key `{key or 'device_budget'}` = {budget!r}"
            macs = self.shape.budget_macs(budget, key or "device_budget")
        elif isinstance(budget, bool) or not isinstance(budget, Real) or not math.isfinite(budget):
            raise ValueError(f"budget(): expected MACs (a number), a string such as "
                             f"'400K MACs', or None; got {budget!r}")
        else:
            what, macs = f"budget({budget!r})", budget
        cheapest = self.controller_min_macs
        if macs < cheapest:
            raise ValueError(
                f"{what} is below the cheapest sub-network: one block costs {cheapest:,} MACs "
                f"(a fraction >= {1 / self.n_blocks:.4f}); the per-user controller drops whole "
                "blocks (budget() takes MACs: convert a fraction with "
                "model.shape.budget_macs(fraction))"
            )
        return float(macs)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    @staticmethod
    def is_backbone(name):
        """Whether parameter or state ``name`` belongs to the supernet (embeddings and blocks), as
        opposed to the controller and the mapper."""
        return not name.startswith(("controller.", "mapper."))

    def backbone_parameters(self):
        """The supernet's parameters (embeddings and blocks), as opposed to controller + mapper."""
        for name, parameter in self.named_parameters():
            if self.is_backbone(name):
                yield parameter

    def load_sasrec_backbone(self, state_dict):
        """Make the supernet the SASRec whose ``state_dict`` is given (a SASRec of ``n_layers =
        n_blocks`` and the same sizes): the same network, its ``trm_encoder.layer.<i>`` being
        block ``i``. The controller and mapper are left as they are. A ValueError names the
        weights that do not fit."""
        mapped = {name.replace("trm_encoder.layer.", "blocks.", 1): tensor
                  for name, tensor in state_dict.items()}
        ours = {k: v for k, v in self.state_dict().items() if self.is_backbone(k)}
        missing = sorted(ours.keys() - mapped.keys())
        extra = sorted(mapped.keys() - ours.keys())
        shapes = sorted(k for k in ours.keys() & mapped.keys()
                        if ours[k].shape != mapped[k].shape)
        if missing or extra or shapes:
            raise ValueError(f"backbone_init: the SASRec weights do not fit the supernet: missing "
                             f"{missing[:5]}, unexpected {extra[:5]}, other shapes {shapes[:5]}")
        self.load_state_dict(mapped, strict=False)

    def backbone_state_dict(self):
        """A detached copy of the supernet's state (what stage 2 can start from)."""
        return {name: tensor.detach().clone() for name, tensor in self.state_dict().items()
                if self.is_backbone(name)}

    # ------------------------------------------------------------------ the method
    # controller -> structure -> mapper -> blocks
    def embed(self, item_seq):
        positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
        hidden = self.item_embedding(item_seq) + self.position_embedding(positions)
        return self.dropout(self.LayerNorm(hidden))

    def code_and_logits(self, item_seq, item_seq_len):
        """The controller's behaviour code z [B, d] and block logits [B, n] from the last
        ``rt_len`` items."""
        recent, recent_len = last_k(item_seq, item_seq_len, self.rt_len)
        return self.controller(self.item_embedding(recent), recent_len)

    def keep_probs(self, logits):
        """Keep probabilities [B, n] of block logits [B, n]: ``sigmoid(logits)``; with
        ``controller: none`` every block is kept (p = 1)."""
        return self._decide(logits, sample=False)[1]

    def _decide(self, logits, *, sample):
        """(structure [B, n], keep probabilities [B, n]) from block logits; the one place that
        knows ``controller: none`` (every block kept, p = 1, nothing learned or penalised).

        ``sample``: a straight-through Gumbel-sigmoid structure (training), whose probabilities
        are None under ``controller: none``. Otherwise only the probabilities are computed (the
        structure is None): :meth:`structure_of` makes them a deterministic mask.
        """
        if self.controller_mode == "none":
            fixed = torch.ones_like(logits)
            return (fixed, None) if sample else (None, fixed)
        probs = torch.sigmoid(logits)
        return (gumbel_sigmoid(logits, self.tau, hard=True, noise=self.gumbel_noise) if sample
                else None), probs

    def structure_of(self, behaviours, lengths):
        """Deterministic structure of behaviour embeddings ``behaviours`` [B, k, d] (right-padded,
        ``lengths`` [B]): (z [B, d], kept mask [B, n] bool, keep probabilities [B, n]).

        Keep block l iff p_l >= ``keep_threshold`` (a row keeping none keeps its most probable
        block), then under ``device_budget`` drop the least probable kept blocks until it fits.
        """
        z, logits = self.controller(behaviours, lengths)
        probs = self.keep_probs(logits)
        mask = deterministic_mask(probs, self.keep_threshold)
        if self.device_budget is not None:
            mask = repair_to_budget(mask, probs, self.block_costs, self.device_budget)
        return z, mask, probs

    def eval_structure(self, item_seq, item_seq_len):
        """Deterministic per-user structure of item sequences: (z, kept mask [B, n] bool, keep
        probabilities), :meth:`structure_of` the last ``rt_len`` items."""
        recent, recent_len = last_k(item_seq, item_seq_len, self.rt_len)
        return self.structure_of(self.item_embedding(recent), recent_len)

    def encode(self, item_seq, item_seq_len, mask, *, gen=None, straight_through=False,
               widths=None, heads=None):
        """User representations [B, d] through the blocks that ``mask`` ([B, n] or batch-wide
        [n]) keeps, kept block l at feed-forward width ``widths[l]`` with ``heads[l]`` heads
        (None: full). ``straight_through``: every block runs on every row and the 0/1 mask mixes
        its output in, so gradients reach the controller (:func:`run_blocks`)."""
        hidden = run_blocks(
            self.blocks,
            self.embed(item_seq),
            self.get_attention_mask(item_seq),
            mask,
            gen,
            [self.mapper.factors(block) for block in range(self.n_blocks)],
            straight_through=straight_through,
            widths=widths,
            heads=heads,
        )
        return self.gather_indexes(hidden, item_seq_len - 1)

    def generated_params(self, z, cfg):
        """The mapper's per-user parameters for the fixed structure ``cfg`` (behaviour codes z
        [B, d]), or None in the supernet stage (whose network has no generated parameters)."""
        if self.stage is Stage.SUPERNET:
            return None
        mask = torch.tensor(cfg.mask, dtype=z.dtype, device=z.device).expand(z.size(0), -1)
        kept = [index for index, keep in enumerate(cfg.mask) if keep]
        return self.mapper(z, mask, blocks=kept)

    def encode_subnet(self, item_seq, item_seq_len, cfg, gen=None):
        """User representations [B, d] of every row through the one sub-network ``cfg``: each
        kept block runs once on the whole batch at its width (no per-row gathers)."""
        # a batch-wide mask only lists the kept blocks: kept on the host, no device copy or sync
        mask = torch.tensor(cfg.mask, dtype=torch.bool)
        return self.encode(item_seq, item_seq_len, mask, gen=gen, widths=cfg.widths,
                           heads=cfg.heads)

    def encode_grouped(self, item_seq, item_seq_len, z, mask):
        """User representations [B, d] of per-user structures (``mask`` [B, n] bool, behaviour
        codes z [B, d]), grouped by structure: each distinct structure runs its kept blocks
        densely on its own rows, with the mapper generating those blocks' parameters for those
        rows only. The batch is permuted into groups once and the outputs back once, instead of a
        gather and a scatter per block (:func:`run_blocks` with a per-row mask)."""
        structures, kept, counts, order = group_by_structure(mask)
        if len(kept) == 1:  # one structure: no permutation
            return self._encode_group(item_seq, item_seq_len, z, structures[0], kept[0])
        groups = zip(item_seq[order].split(counts), item_seq_len[order].split(counts),
                     z[order].split(counts), structures, kept)
        outputs = [self._encode_group(*group) for group in groups]
        grouped = torch.cat(outputs)
        return torch.empty_like(grouped).index_copy_(0, order, grouped)

    def _encode_group(self, item_seq, item_seq_len, z, structure, blocks):
        """Rows sharing one structure (``structure`` [n] on the device, ``blocks`` its kept
        indices): their generated parameters, then the dense sub-network."""
        gen = self.mapper(z, structure.expand(z.size(0), -1), blocks=blocks)
        keep = torch.zeros(self.n_blocks, dtype=torch.bool)
        keep[blocks] = True
        return self.encode(item_seq, item_seq_len, keep, gen=gen)

    def _encode_batch(self, item_seq, item_seq_len) -> Encoded:
        """The network the model is set to run, on one batch.

        A fixed sub-network inside :meth:`active_subnet`; the full network in the supernet stage
        (the same dense path in training and evaluation); in the adapt stage each user's
        structure: a straight-through Gumbel-sigmoid sample with generated parameters while
        training, the deterministic structure at evaluation (only kept blocks run: rows grouped
        by structure, or per block, ``eval_grouping``).
        """
        if self._active is not None:
            return self._encode_fixed(item_seq, item_seq_len, self._active)
        if self.stage is Stage.SUPERNET:
            return self._encode_fixed(item_seq, item_seq_len, self.shape.full())
        if self.training:
            z, logits = self.code_and_logits(item_seq, item_seq_len)
            mask, probs = self._decide(logits, sample=True)
            user = self.encode(item_seq, item_seq_len, mask, gen=self.mapper(z, mask),
                               straight_through=True)
            return Encoded(user, mask, probs)
        z, mask, probs = self.eval_structure(item_seq, item_seq_len)
        if self.eval_grouping == "structure":
            return Encoded(self.encode_grouped(item_seq, item_seq_len, z, mask), mask, probs)
        kept = mask.any(dim=0).nonzero().flatten().tolist()
        gen = self.mapper(z, mask.to(z.dtype), blocks=kept)
        return Encoded(self.encode(item_seq, item_seq_len, mask, gen=gen), mask, probs)

    def _encode_fixed(self, item_seq, item_seq_len, cfg) -> Encoded:
        """Every row through ``cfg``; in the adapt stage with each user's generated parameters,
        conditioned on ``cfg``'s mask as the structure vector."""
        gen = None
        if self.stage is not Stage.SUPERNET:
            z, _ = self.code_and_logits(item_seq, item_seq_len)
            gen = self.generated_params(z, cfg)
        mask = torch.tensor(cfg.mask, dtype=torch.bool).expand(item_seq.size(0), -1)
        return Encoded(self.encode_subnet(item_seq, item_seq_len, cfg, gen), mask, None)

    def forward(self, item_seq, item_seq_len):
        """User representations [B, d] of the network the model is set to run
        (:meth:`_encode_batch`): one forward pass."""
        return self._encode_batch(item_seq, item_seq_len).user

    # ------------------------------------------------------------------ fixed structures
    @property
    def active_config(self):
        """The SubnetConfig inside :meth:`active_subnet`, else None."""
        return self._active

    @contextlib.contextmanager
    def active_subnet(self, cfg):
        """Score every user with the fixed sub-network ``cfg`` inside the ``with`` block.

        The mapper still generates each user's parameters (adapt stage), conditioned on ``cfg``'s
        mask; evaluation costs recorded inside report ``cfg``'s cost for every user. The model is
        restored on exit, also on an error. Nesting is an error (one structure at a time).
        """
        if not isinstance(cfg, SubnetConfig):
            raise TypeError(f"active_subnet() takes a SubnetConfig, got {type(cfg).__name__}")
        self.shape.validate(cfg)
        if self._active is not None:
            raise RuntimeError(
                f"active_subnet({cfg.key}) inside active_subnet({self._active.key}): nesting is "
                "not supported; leave the outer block first"
            )
        self._active = cfg
        try:
            yield self
        finally:
            self._active = None

    @contextlib.contextmanager
    def budget(self, macs):
        """Apply a per-user encoder budget to the controller inside the ``with`` block
        (``device_budget`` is restored on exit, also on an error; nesting works).

        ``macs``: MACs as a number, a string with a unit (``"400K MACs"``), or None (no budget).
        A fraction of the full encoder is converted first with ``model.shape.budget_macs(f)``.
        The controller drops whole blocks, so the budget must cover one full block.
        """
        previous = self.device_budget
        self.device_budget = self.budget_in_macs(macs)
        try:
            yield self
        finally:
            self.device_budget = previous

    # ------------------------------------------------------------------ sub-network sampling
    @property
    def subnet_space(self):
        """The space the supernet stage samples from (None: block masks, the default)."""
        return self._subnet_space

    @subnet_space.setter
    def subnet_space(self, space):
        if space is not None:
            missing = [m for m in ("largest", "smallest", "sample") if not hasattr(space, m)]
            if missing:
                raise TypeError(f"subnet_space must have largest(), smallest() and sample(rng); "
                                f"{type(space).__name__} lacks {missing}")
            self.shape.validate(space.largest())
            self.shape.validate(space.smallest())
        self._subnet_space = space

    # ------------------------------------------------------------------ losses
    def scores(self, seq_output):
        """Scores [B, n_items] of user representations [B, d] against every item."""
        return seq_output @ self.item_embedding.weight.t()

    def _rec_loss(self, seq_output, interaction):
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_type == "BPR":
            pos = (seq_output * self.item_embedding(pos_items)).sum(-1)
            neg = (seq_output * self.item_embedding(interaction[self.NEG_ITEM_ID])).sum(-1)
            return self.loss_fct(pos, neg)
        return self.loss_fct(self.scores(seq_output), pos_items)

    def calculate_loss(self, interaction):
        """Supernet stage: the sandwich loss. Adapt stage: ``(rec_loss, sparsity_loss)``."""
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        if self._active is not None:
            raise RuntimeError(
                f"calculate_loss() inside active_subnet({self._active.key}): training steps "
                "sample their own structures; leave the active_subnet block to train"
            )
        if self.stage is Stage.SUPERNET:
            return self._supernet_loss(interaction, item_seq, item_seq_len)
        encoded = self._encode_batch(item_seq, item_seq_len)
        rec_loss = self._rec_loss(encoded.user, interaction)
        if self.adapt_distill_weight:
            rec_loss = rec_loss + self.adapt_distill_weight * self._distill_from_full(
                encoded.user, item_seq, item_seq_len)
        # detached tensors, read once per epoch (mean_kept_blocks): no host sync per step
        self._kept_sum = self._kept_sum + encoded.mask.detach().sum()
        self._kept_rows += encoded.mask.size(0)
        if encoded.probs is None:  # a fixed structure: nothing to penalise
            return rec_loss, rec_loss.new_zeros(())
        return rec_loss, self.sparsity_weight * self.penalised_cost(encoded.probs).mean()

    def _distill_from_full(self, user, item_seq, item_seq_len):
        """KL from the full network's item distribution (every block, no generated parameters,
        no gradient: the supernet as the teacher) to each user's own sub-network's
        (``adapt_distill_weight``)."""
        with torch.no_grad():
            teacher = F.softmax(self.scores(self.encode_subnet(
                item_seq, item_seq_len, self.largest_subnet())), dim=-1)
        return F.kl_div(F.log_softmax(self.scores(user), dim=-1), teacher,
                        reduction="batchmean")

    def penalised_cost(self, probs):
        """Per-user cost [B] the sparsity term penalises, from keep probabilities ``probs``
        [B, n]: the expected fraction of the full encoder's MACs, or, with ``sparsity_target``,
        only its part above the target (a per-user MACs target: users under it are not pushed
        further)."""
        expected = (probs @ self.block_costs) / self.block_costs.sum()
        if self.sparsity_target is None:
            return expected
        return F.relu(expected - self.sparsity_target)

    def largest_subnet(self):
        """The supernet stage's teacher: the space's largest config, or the full network."""
        space = self._subnet_space
        return self.shape.full() if space is None else space.largest()

    def sample_subnets(self, step=None):
        """``supernet_subnets`` SubnetConfigs for one sandwich step: the smallest, then random.

        Drawn from a numpy generator seeded by (seed, ``step``; default: the current supernet
        step), as OFA seeds its sampling with the step: a step samples the same configs whenever
        it runs, and every rank of a distributed run trains the same sub-networks. Without a
        subnet_space they are block masks: the smallest is one random block, the others keep
        each block with probability 1/2 (at least one). With one: ``space.smallest()``, then
        ``space.sample(rng)``.
        """
        space = self._subnet_space
        step = self.supernet_step if step is None else int(step)
        rng = np.random.default_rng([self.sample_seed, step])
        if space is None:
            return [self.shape.from_mask(mask.tolist()) for mask in self._sample_masks(rng)]
        configs = [space.smallest() if index == 0 else space.sample(rng)
                   for index in range(self.supernet_subnets)]
        return [self.shape.validate(cfg) for cfg in configs]

    def _sample_masks(self, rng):
        masks = []
        for index in range(self.supernet_subnets):
            if index == 0:
                mask = np.zeros(self.n_blocks, dtype=bool)
                mask[rng.integers(self.n_blocks)] = True
            else:
                mask = rng.random(self.n_blocks) < 0.5
                if not mask.any():
                    mask[rng.integers(self.n_blocks)] = True
            masks.append(mask)
        return masks

    def _supernet_loss(self, interaction, item_seq, item_seq_len):
        step = self.supernet_step
        self.supernet_step += 1
        full = self.encode_subnet(item_seq, item_seq_len, self.largest_subnet())
        loss = self._rec_loss(full, interaction)
        if self.supernet_epoch < self.supernet_full_epochs:
            return loss  # progressive shrinking starts from the full network alone
        teacher = F.softmax(self.scores(full).detach(), dim=-1) if self.distill_weight else None
        for cfg in self.sample_subnets(step):
            sub = self.encode_subnet(item_seq, item_seq_len, cfg)
            loss = loss + self._rec_loss(sub, interaction)
            if teacher is not None:
                log_student = F.log_softmax(self.scores(sub), dim=-1)
                loss = loss + self.distill_weight * F.kl_div(
                    log_student, teacher, reduction="batchmean"
                )
        return loss

    # ------------------------------------------------------------------ inference
    # The network runs under torch.inference_mode; the scores are computed outside it (under
    # no_grad) because RecBole's evaluation writes into them, which inference tensors forbid:
    # a [B, d] inference tensor may be read there, and no [B, n_items] copy is needed.
    def predict(self, interaction):
        seq_output = self._served(interaction)
        with torch.no_grad():
            return (seq_output * self.item_embedding(interaction[self.ITEM_ID])).sum(dim=1)

    def full_sort_predict(self, interaction):
        seq_output = self._served(interaction)
        with torch.no_grad():
            return self.scores(seq_output)

    def _served(self, interaction):
        """User representations of an evaluation batch; inside an evaluation that records costs
        (:meth:`reset_evaluation_costs`) each row's structure is kept for the collector."""
        with torch.inference_mode():
            encoded = self._encode_batch(interaction[self.ITEM_SEQ],
                                         interaction[self.ITEM_SEQ_LEN])
        if self._eval_masks is not None:
            active = self._active
            self._record(encoded.mask, *((active.widths, active.heads) if active else ()))
        return encoded.user

    # ------------------------------------------------------------------ statistics and costs
    def reset_kept_blocks(self):
        """Start counting the blocks training samples keep (the trainer calls it per epoch)."""
        self._kept_sum = 0.0
        self._kept_rows = 0

    def mean_kept_blocks(self):
        """Mean kept blocks per adapt-stage training sample since :meth:`reset_kept_blocks`
        (one host read)."""
        return float(self._kept_sum) / max(self._kept_rows, 1)

    def _record(self, mask, widths=None, heads=None):
        """Keep each evaluated row's structure: mask [B, n] and, for a fixed sub-network, its
        per-block widths and heads (default: full)."""
        rows = (mask.size(0), self.n_blocks)
        width = self.inner_size if widths is None else np.asarray(widths, dtype=np.int64)
        head = self.n_heads if heads is None else np.asarray(heads, dtype=np.int64)
        self._eval_masks.append(
            (mask.cpu(), np.broadcast_to(width, rows), np.broadcast_to(head, rows))
        )

    def reset_evaluation_costs(self):
        """Start recording each evaluated user's structure (plugin trainers call it in evaluate)."""
        self._eval_masks = []

    def stop_evaluation_costs(self):
        """Stop recording and drop what was recorded (plugin trainers call it after evaluate)."""
        self._eval_masks = None

    def evaluation_costs(self):
        """Per-user on-device costs recorded since ``reset_evaluation_costs`` (then forgotten)."""
        if not self._eval_masks:
            raise RuntimeError(
                "ForwardOFA.evaluation_costs(): no evaluated users were recorded; call "
                "reset_evaluation_costs() before evaluating"
            )
        records, self._eval_masks = self._eval_masks, None
        masks = torch.cat([mask for mask, _, _ in records]).numpy()
        widths = np.concatenate([w for _, w, _ in records])
        heads = np.concatenate([h for _, _, h in records])
        breakdown = cost.forward_ofa_cost(self.shape, masks, widths, heads)
        return {
            "macs": breakdown.encoder_macs,
            "params": breakdown.encoder_params,
            "blocks": breakdown.kept_blocks,
            "full_macs": float(self.block_costs.sum()),
            "candidate_params": np.asarray(breakdown.candidate_params, dtype=np.float64),
        }
