"""Sub-networks of the Forward-OFA supernet: the supernet's shape, and one value per sub-network.

Training (the supernet stage samples sub-networks), the cost model, the subnet search and
extraction all speak of sub-networks through :class:`SubnetConfig`, so they share one definition
of the space; :class:`SupernetShape` is the one frozen description of the supernet they are cut
from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Sequence, Tuple, Union

import numpy as np

from recbole_fofa import cost
from recbole_fofa.budget import parse_budget


@dataclass(frozen=True)
class SubnetConfig:
    """One sub-network: for each block, dropped or kept with a feed-forward width and head count.

    ``widths[l]`` is block l's number of feed-forward units (first-k slicing of ``inner_size``)
    and ``heads[l]`` its number of attention heads (first-k slicing of ``n_heads``); a dropped
    block has ``0`` in both, so it carries no width and equal sub-networks compare, hash and key
    equal. Build with :meth:`SupernetShape.full`, :meth:`SupernetShape.from_mask`, or directly.
    """

    widths: Tuple[int, ...]
    heads: Tuple[int, ...]

    def __post_init__(self):
        widths, heads = tuple(self.widths), tuple(self.heads)
        if len(widths) != len(heads):
            raise ValueError(
                f"SubnetConfig: {len(widths)} widths but {len(heads)} head counts"
            )
        for name, values in (("widths", widths), ("heads", heads)):
            for value in values:
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise ValueError(f"SubnetConfig: {name} must be integers, got {values!r}")
                if value < 0:
                    raise ValueError(f"SubnetConfig: {name} must be >= 0, got {values!r}")
        kept = [w > 0 and h > 0 for w, h in zip(widths, heads)]
        object.__setattr__(self, "widths", tuple(int(w) if k else 0 for w, k in zip(widths, kept)))
        object.__setattr__(self, "heads", tuple(int(h) if k else 0 for h, k in zip(heads, kept)))

    @property
    def n_blocks(self) -> int:
        return len(self.widths)

    @property
    def mask(self) -> Tuple[bool, ...]:
        """Which blocks are kept."""
        return tuple(w > 0 for w in self.widths)

    @property
    def n_kept(self) -> int:
        return sum(self.mask)

    @property
    def key(self) -> str:
        """Canonical text key, e.g. ``'256x2|-|128x1'`` (``-`` = dropped): caches and dedup."""
        return "|".join(f"{w}x{h}" if w else "-" for w, h in zip(self.widths, self.heads))

    @classmethod
    def from_key(cls, key: str) -> SubnetConfig:
        widths, heads = [], []
        for part in key.split("|"):
            w, h = (0, 0) if part == "-" else (int(v) for v in part.split("x"))
            widths.append(w)
            heads.append(h)
        return cls(tuple(widths), tuple(heads))

    def to_dict(self) -> dict:
        return {"widths": list(self.widths), "heads": list(self.heads)}

    @classmethod
    def from_dict(cls, data: dict) -> SubnetConfig:
        return cls(tuple(data["widths"]), tuple(data["heads"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> SubnetConfig:
        return cls.from_dict(json.loads(text))

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class SupernetShape:
    """The supernet's shape: everything cost, search and extraction need to know about it."""

    seq_len: int
    hidden_size: int
    inner_size: int
    n_heads: int
    n_blocks: int
    rt_len: int = 10
    extractor: str = "gru"
    mapper_rank: int = 8
    mapper_hidden: int = 64
    mapper_mode: str = "parallel"
    n_candidates: int = 0

    @classmethod
    def from_config(cls, config, n_items: int) -> SupernetShape:
        """The shape a ForwardOFA built from ``config`` on a dataset of ``n_items`` has."""
        return cls(
            seq_len=int(config["MAX_ITEM_LIST_LENGTH"]),
            hidden_size=int(config["hidden_size"]),
            inner_size=int(config["inner_size"]),
            n_heads=int(config["n_heads"]),
            n_blocks=int(config["n_blocks"]),
            rt_len=int(config["rt_len"]),
            extractor=config["extractor"],
            mapper_rank=int(config["mapper_rank"]),
            mapper_hidden=int(config["mapper_hidden"]),
            mapper_mode=config["mapper_mode"],
            n_candidates=int(config["n_candidates"] or n_items),
        )

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.n_heads

    # ------------------------------------------------------------------ sub-networks
    def full(self) -> SubnetConfig:
        """Every block at full width: the supernet itself."""
        return SubnetConfig((self.inner_size,) * self.n_blocks, (self.n_heads,) * self.n_blocks)

    def from_mask(self, mask: Sequence[bool]) -> SubnetConfig:
        """The kept blocks of ``mask`` at full width (the block space)."""
        mask = [bool(m) for m in mask]
        if len(mask) != self.n_blocks:
            raise ValueError(f"mask has {len(mask)} blocks, the supernet {self.n_blocks}")
        return SubnetConfig(
            tuple(self.inner_size if m else 0 for m in mask),
            tuple(self.n_heads if m else 0 for m in mask),
        )

    def validate(self, config: SubnetConfig) -> SubnetConfig:
        """``config`` if it is a sub-network of this supernet, else a ValueError naming why."""
        if config.n_blocks != self.n_blocks:
            raise ValueError(
                f"sub-network {config.key} has {config.n_blocks} blocks, the supernet "
                f"{self.n_blocks}"
            )
        if config.n_kept == 0:
            raise ValueError("a sub-network must keep at least one block")
        for index, (w, h) in enumerate(zip(config.widths, config.heads)):
            if w > self.inner_size:
                raise ValueError(
                    f"block {index} of {config.key}: width {w} exceeds inner_size "
                    f"{self.inner_size}"
                )
            if h > self.n_heads:
                raise ValueError(
                    f"block {index} of {config.key}: {h} heads exceed n_heads {self.n_heads}"
                )
        return config

    # ------------------------------------------------------------------ costs
    def arrays(self, configs: Union[SubnetConfig, Iterable[SubnetConfig]]):
        """(mask bool [N, n], widths int64 [N, n], heads int64 [N, n]) of the configs."""
        if isinstance(configs, SubnetConfig):
            configs = [configs]
        configs = list(configs)
        widths = np.array([c.widths for c in configs], dtype=np.int64).reshape(-1, self.n_blocks)
        heads = np.array([c.heads for c in configs], dtype=np.int64).reshape(-1, self.n_blocks)
        return widths > 0, widths, heads

    def cost(self, configs: Union[SubnetConfig, Iterable[SubnetConfig]]) -> cost.CostBreakdown:
        """Device and cloud costs of each config (vectorised; one row per config)."""
        mask, widths, heads = self.arrays(configs)
        return cost.forward_ofa_cost(self, mask, widths, heads)

    def block_macs(self) -> np.ndarray:
        """MACs of each full-width block (int64 [n_blocks])."""
        per_block = cost.block_macs(self.seq_len, self.hidden_size, self.inner_size, self.n_heads)
        return np.full(self.n_blocks, per_block, dtype=np.int64)

    def full_macs(self) -> int:
        """Encoder MACs of the whole supernet (every block at full width)."""
        return int(self.block_macs().sum())

    def cheapest_macs(self, space: str = "block", width_choices=None, head_choices=None,
                      compound_widths=None, compound_heads=None) -> int:
        """Encoder MACs of the cheapest sub-network of a search space over this supernet: the
        one computation of it, for the config checks, the search spaces and the controller.

        ``'block'``: one block at full width; ``'elastic'``: one block at the smallest of
        ``width_choices`` (fractions of ``inner_size``) and of ``head_choices``;
        ``'compound'``: k blocks at ``compound_widths[k-1]`` and ``compound_heads[k-1]``, for
        the cheapest k. Costs grow with width and heads, so these are the minima.
        """
        if space == "block":
            shapes = [(1, self.inner_size, self.n_heads)]
        elif space == "elastic":
            shapes = [(1, round(min(width_choices) * self.inner_size), min(head_choices))]
        elif space == "compound":
            shapes = [(k, round(w * self.inner_size), h)
                      for k, (w, h) in enumerate(zip(compound_widths, compound_heads), start=1)]
        else:
            raise ValueError(f"search space {space!r} is invalid: expected one of "
                             "['block', 'elastic', 'compound']")
        return int(min(k * cost.block_macs(self.seq_len, self.hidden_size, width, heads,
                                           head_size=self.head_size)
                       for k, width, heads in shapes))

    def budget_macs(self, value, key: str = "budget") -> float:
        """A budget (a fraction in (0, 1] of the full encoder, or ``"<n>[K|M|G] MACs"``) in MACs.

        The one conversion used by ``device_budget`` and the subnet search; errors name ``key``.
        """
        return float(parse_budget(key, value).to_macs(self.full_macs()))
