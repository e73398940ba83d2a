"""Search spaces over sub-networks of the Forward-OFA supernet.

Every space describes a sub-network by a *genotype*: one integer per block, ``0`` for a dropped
block and ``1..n_options-1`` for the ways a block can be kept. Sampling, mutation, crossover,
enumeration and repair work on genotypes in this base class; a space only says what a genotype
means (``_decode``), how a config maps back (``_genes``, which also validates) and which options
of a block are one step smaller (``_smaller``). Couplings live in ``_decode``: the compound
space's genotype is the keep mask and its widths follow from the number of kept blocks, so every
operator keeps them valid by construction. The search never branches on the space type.
"""

from __future__ import annotations

import itertools
from typing import Callable, Dict, Iterable, List, Sequence, Tuple, Union

import numpy as np

from recbole_fofa.registry import shipped_defaults
from recbole_fofa.subnet import SubnetConfig, SupernetShape

__all__ = [
    "BlockSpace",
    "CompoundSpace",
    "ElasticSpace",
    "InfeasibleBudget",
    "SPACES",
    "SearchSpace",
    "build_space",
]

Configs = Union[SubnetConfig, Iterable[SubnetConfig]]
QualityFn = Callable[[List[SubnetConfig]], Sequence[float]]
# ForwardOFA's shipped YAML: the spaces' default choices and enumeration limit.
DEFAULTS = shipped_defaults("ForwardOFA")


class InfeasibleBudget(ValueError):
    """A budget below the cheapest sub-network of the space: no sub-network fits it."""

    def __init__(self, budget_macs: float, min_macs: float, full_macs: float, space: str):
        self.budget_macs = float(budget_macs)
        self.min_macs = float(min_macs)
        self.full_macs = float(full_macs)
        self.space = space
        super().__init__(
            f"search_budgets: budget {self.budget_macs:,.0f} MACs "
            f"({self.budget_macs / self.full_macs:.4f} of the full encoder) is below the cheapest "
            f"sub-network of the {space} space, {self.min_macs:,.0f} MACs "
            f"({self.min_macs / self.full_macs:.4f} of the full encoder, "
            f"{self.full_macs:,.0f} MACs)"
        )


def _canonical(widths: Tuple[int, ...], heads: Tuple[int, ...]) -> SubnetConfig:
    """A SubnetConfig from values a space built from its validated choices (Python ints, a
    dropped block 0/0): what ``SubnetConfig(widths, heads)`` gives, without re-checking them,
    because the operators make thousands per generation."""
    config = object.__new__(SubnetConfig)
    object.__setattr__(config, "widths", widths)
    object.__setattr__(config, "heads", heads)
    return config


def _as_list(configs: Configs) -> List[SubnetConfig]:
    return [configs] if isinstance(configs, SubnetConfig) else list(configs)


class SearchSpace:
    """Base class: the operators every strategy uses, built on the per-block genotype."""

    name = "base"

    def __init__(self, shape: SupernetShape, n_options: int):
        if not isinstance(shape, SupernetShape):
            raise TypeError(f"shape must be a SupernetShape, got {type(shape).__name__}")
        self.shape = shape
        self.n_blocks = int(shape.n_blocks)
        self.n_options = int(n_options)
        self._extremes: Tuple[SubnetConfig, SubnetConfig] | None = None
        # Operators run thousands of times per generation: configs and genotypes are memoised
        # (a SubnetConfig hashes by value, so it is its own cache key).
        self._configs: Dict[Tuple[int, ...], SubnetConfig] = {}
        self._genotypes: Dict[SubnetConfig, np.ndarray] = {}
        self._block_costs: Dict[Tuple[int, int], Tuple[int, int]] = {}
        self._config_costs: Dict[SubnetConfig, Tuple[int, int]] = {}
        self._fixed_params: int | None = None

    # ------------------------------------------------------------------ space-specific
    def _make(self, genes: Tuple[int, ...]) -> SubnetConfig:
        """The config of one genotype (no gene set all zero)."""
        raise NotImplementedError

    def _read(self, config: SubnetConfig) -> np.ndarray:
        """Genotype of ``config`` (int [n_blocks]); ValueError naming the bad choice."""
        raise NotImplementedError

    def _decode(self, genes: np.ndarray) -> List[SubnetConfig]:
        """Configs of genotypes ``genes`` (int [N, n_blocks]; no row all zero)."""
        out = []
        for row in np.asarray(genes, dtype=np.int64).reshape(-1, self.n_blocks).tolist():
            row = tuple(row)
            config = self._configs.get(row)
            if config is None:
                config = self._configs[row] = self._make(row)
            out.append(config)
        return out

    def _genes(self, config: SubnetConfig) -> np.ndarray:
        """Genotype of ``config`` (read-only int [n_blocks]); ValueError naming a bad choice."""
        genes = self._genotypes.get(config)
        if genes is None:
            genes = np.asarray(self._read(config), dtype=np.int64)
            genes.setflags(write=False)
            self._genotypes[config] = genes
        return genes

    def _smaller(self, gene: int) -> List[int]:
        """Options one step smaller than ``gene`` for one kept block (dropping included)."""
        raise NotImplementedError

    def _larger(self, gene: int) -> List[int]:
        """Options one step larger than ``gene`` (adding a dropped block included)."""
        raise NotImplementedError

    def _extreme_candidates(self) -> List[SubnetConfig]:
        """A few configs that include the cheapest and the most expensive of the space."""
        raise NotImplementedError

    def options(self) -> Dict[str, object]:
        """The space's choices (for results and logs)."""
        return {"name": self.name}

    # ------------------------------------------------------------------ basic queries
    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options().items() if k != "name")
        return f"{type(self).__name__}({opts})"

    def validate(self, config: SubnetConfig) -> SubnetConfig:
        """``config`` if it belongs to this space, else a ValueError naming the bad choice."""
        if not isinstance(config, SubnetConfig):
            raise TypeError(f"expected a SubnetConfig, got {type(config).__name__}")
        self.shape.validate(config)
        self._genes(config)
        return config

    def size(self) -> int:
        """Number of distinct sub-networks (every genotype but the all-dropped one)."""
        return self.n_options**self.n_blocks - 1

    def enumerate(self, limit: int | None = None) -> List[SubnetConfig]:
        """Every sub-network of the space; ValueError when there are more than ``limit``
        (default: the shipped ``search_exhaustive_limit``)."""
        limit = DEFAULTS["search_exhaustive_limit"] if limit is None else int(limit)
        if self.size() > limit:
            raise ValueError(
                f"the {self.name} space has {self.size():,} sub-networks, more than "
                f"search_exhaustive_limit = {limit:,}: use an evolutionary search_strategy "
                "(independent, bottom_up, top_down, pareto) or raise search_exhaustive_limit"
            )
        genes = np.array(
            list(itertools.product(range(self.n_options), repeat=self.n_blocks))[1:],
            dtype=np.int64,
        ).reshape(-1, self.n_blocks)
        return self._decode(genes)

    # ------------------------------------------------------------------ costs
    def _block_cost(self, width: int, heads: int) -> Tuple[int, int]:
        """(MACs, params) one block at (width, heads) adds, from the supernet's cost model."""
        pair = (width, heads)
        if pair not in self._block_costs:
            empty = (0,) * self.n_blocks
            one = SubnetConfig((width,) + empty[1:], (heads,) + empty[1:])
            costs = self.shape.cost([SubnetConfig(empty, empty), one])
            self._block_costs[pair] = (int(costs.encoder_macs[1]),
                                       int(costs.encoder_params[1] - costs.encoder_params[0]))
            self._fixed_params = int(costs.encoder_params[0])
        return self._block_costs[pair]

    def _costs_of(self, config: SubnetConfig) -> Tuple[int, int]:
        found = self._config_costs.get(config)
        if found is None:
            macs = params = 0
            for w, h in zip(config.widths, config.heads):
                if w:
                    m, p = self._block_cost(w, h)
                    macs, params = macs + m, params + p
            if self._fixed_params is None:
                self._block_cost(self.shape.inner_size, self.shape.n_heads)
            found = self._config_costs[config] = (macs, params + self._fixed_params)
        return found

    def cost(self, configs: Configs) -> np.ndarray:
        """Encoder MACs of each config (int64 [N]). The supernet's cost model is additive over
        blocks (a dropped block costs 0), so it is evaluated once per (width, heads) and summed:
        equal to ``shape.cost(configs).encoder_macs`` (tested), without a call per config."""
        return np.array([self._costs_of(c)[0] for c in _as_list(configs)], dtype=np.int64)

    def params(self, configs: Configs) -> np.ndarray:
        """Device encoder parameters of each config (int64 [N]; ``encoder_params``)."""
        return np.array([self._costs_of(c)[1] for c in _as_list(configs)], dtype=np.int64)

    def _find_extremes(self) -> Tuple[SubnetConfig, SubnetConfig]:
        if self._extremes is None:
            candidates = self._extreme_candidates()
            costs = self.cost(candidates)
            keys = [c.key for c in candidates]
            cheap = min(range(len(candidates)), key=lambda i: (costs[i], keys[i]))
            dear = max(range(len(candidates)), key=lambda i: (costs[i], keys[i]))
            self._extremes = (candidates[cheap], candidates[dear])
        return self._extremes

    def smallest(self) -> SubnetConfig:
        """The cheapest sub-network of the space."""
        return self._find_extremes()[0]

    def largest(self) -> SubnetConfig:
        """The most expensive sub-network of the space (the full network where it belongs)."""
        return self._find_extremes()[1]

    def min_cost(self) -> int:
        """Encoder MACs of the cheapest sub-network (:meth:`SupernetShape.cheapest_macs`)."""
        options = {k: v for k, v in self.options().items() if k != "name"}
        return self.shape.cheapest_macs(self.name, **options)

    def max_cost(self) -> int:
        return int(self.cost(self.largest())[0])

    def check_budget(self, budget_macs: float) -> float:
        """``budget_macs`` as a float; :class:`InfeasibleBudget` if no sub-network fits it."""
        budget = float(budget_macs)
        if not np.isfinite(budget) or budget <= 0:
            raise ValueError(f"search_budgets: a budget must be a positive number of MACs, "
                             f"got {budget_macs!r}")
        if budget < self.min_cost():
            raise InfeasibleBudget(budget, self.min_cost(), self.shape.full_macs(), self.name)
        return budget

    # ------------------------------------------------------------------ genetic operators
    def _fix_empty(self, genes: np.ndarray, rng: np.random.Generator,
                   sources: Sequence[np.ndarray] = ()) -> np.ndarray:
        """Keep one block when ``genes`` dropped them all: a kept gene of a source (a parent)
        if one has any, else a random kept option."""
        if genes.any():
            return genes
        for source in sources:
            kept = np.flatnonzero(source)
            if kept.size:
                block = int(kept[rng.integers(kept.size)])
                genes[block] = source[block]
                return genes
        genes[rng.integers(self.n_blocks)] = rng.integers(1, self.n_options)
        return genes

    def sample(self, rng: np.random.Generator) -> SubnetConfig:
        """A sub-network with each block's option drawn uniformly (never all dropped)."""
        genes = rng.integers(0, self.n_options, size=self.n_blocks)
        return self._decode(self._fix_empty(genes, rng)[None, :])[0]

    def mutate(self, config: SubnetConfig, prob: float, rng: np.random.Generator) -> SubnetConfig:
        """A new config: each block's option is redrawn with probability ``prob``."""
        genes = self._genes(config)
        child = genes.copy()  # the memoised genotype is read-only
        redraw = rng.random(self.n_blocks) < prob
        child[redraw] = rng.integers(0, self.n_options, size=int(redraw.sum()))
        return self._decode(self._fix_empty(child, rng, (genes,))[None, :])[0]

    def crossover(self, a: SubnetConfig, b: SubnetConfig,
                  rng: np.random.Generator) -> SubnetConfig:
        """Uniform crossover: each block's option from ``a`` or ``b`` with equal probability."""
        ga, gb = self._genes(a), self._genes(b)
        child = np.where(rng.random(self.n_blocks) < 0.5, ga, gb)
        return self._decode(self._fix_empty(child, rng, (ga, gb))[None, :])[0]

    def neighbours(self, config: SubnetConfig, larger: bool = False) -> List[SubnetConfig]:
        """Configs one step smaller than ``config``: one block dropped, or one block's width or
        head count one choice lower (what the coupling gives, in the compound space); with
        ``larger``, one step larger: one block added at its smallest option, or one choice up."""
        genes = self._genes(config)
        rows = []
        step = self._larger if larger else self._smaller
        for block in range(self.n_blocks) if larger else np.flatnonzero(genes):
            for option in step(int(genes[block])):
                row = genes.copy()
                row[block] = option
                if row.any():
                    rows.append(row)
        return self._decode(np.array(rows, dtype=np.int64)) if rows else []

    # ------------------------------------------------------------------ repair
    def repair(self, config: SubnetConfig, budget_macs: float,
               quality_fn: QualityFn | None = None) -> SubnetConfig:
        """A config of this space that fits ``budget_macs``, shrunk greedily from ``config``.

        ``config`` is never changed (it is frozen; the result is a new value). Each step moves to
        one of :meth:`neighbours`: if some neighbour fits, the best fitting one (highest quality;
        without ``quality_fn``, the one that removes the fewest parameters); else the one with
        the best ratio: least quality lost per MAC saved with ``quality_fn``, most MACs saved per
        parameter removed without. Ties go to the larger saving, then the key, so repair is
        deterministic. :class:`InfeasibleBudget` if nothing in the space fits.
        """
        budget = self.check_budget(budget_macs)
        self.validate(config)
        current = config
        cost = int(self.cost(current)[0])
        if cost <= budget:
            return SubnetConfig(config.widths, config.heads)  # a copy: callers may keep both
        params = int(self.params(current)[0])
        quality = float(quality_fn([current])[0]) if quality_fn is not None else 0.0
        for _ in range(self.n_blocks * self.n_options + 1):
            moves = self.neighbours(current)
            costs = self.cost(moves)
            cheaper = [i for i in range(len(moves)) if costs[i] < cost]
            if not cheaper:
                break
            moves = [moves[i] for i in cheaper]
            costs = costs[cheaper]
            params_m = self.params(moves)
            saved = (cost - costs).astype(np.float64)
            removed = (params - params_m).astype(np.float64)
            if quality_fn is not None:
                qualities = np.asarray(quality_fn(moves), dtype=np.float64)
                loss = quality - qualities
            fits = costs <= budget
            keys = [m.key for m in moves]
            if fits.any():
                order = (
                    (-qualities if quality_fn is not None else removed),
                    -saved,
                )
                candidates = np.flatnonzero(fits)
            else:
                if quality_fn is not None:
                    ratio = loss / saved
                else:
                    ratio = -np.where(removed > 0, saved / np.maximum(removed, 1.0), np.inf)
                order = (ratio, -saved)
                candidates = np.arange(len(moves))
            pick = min(candidates, key=lambda i: (order[0][i], order[1][i], keys[i]))
            current, cost = moves[pick], int(costs[pick])
            params = int(params_m[pick])
            if quality_fn is not None:
                quality = float(qualities[pick])
            if cost <= budget:
                return current
        # Only a coupling that makes a smaller step cost more can leave greedy steps stuck above
        # the budget; the cheapest config fits (check_budget passed).
        return self.smallest()

    def grow(self, config: SubnetConfig, budget_macs: float) -> SubnetConfig:
        """The opposite of :meth:`repair`: a config grown greedily from ``config`` while a
        larger neighbour fits ``budget_macs``, each step adding the most parameters per MAC
        (ties: the key). ``config`` itself if nothing larger fits; never changes its input."""
        self.validate(config)
        current = config
        cost, params = int(self.cost(current)[0]), int(self.params(current)[0])
        for _ in range(self.n_blocks * self.n_options + 1):
            moves = self.neighbours(current, larger=True)
            costs = self.cost(moves)
            ok = [i for i in range(len(moves)) if costs[i] <= budget_macs and costs[i] > cost]
            if not ok:
                break
            gained = self.params([moves[i] for i in ok]) - params
            spent = costs[ok] - cost
            pick = min(range(len(ok)),
                       key=lambda j: (-gained[j] / spent[j], moves[ok[j]].key))
            current, cost = moves[ok[pick]], int(costs[ok[pick]])
            params += int(gained[pick])
        return current

    # ------------------------------------------------------------------ predictor features
    def encode(self, configs: Configs) -> np.ndarray:
        """Fixed-length features (float32 [N, F]): per block a one-hot of its width and one of
        its head count over the values the space uses; a dropped block is all zero (OFA's
        encoding, so depth is implicit)."""
        configs = _as_list(configs)
        widths, heads = self._feature_values()
        w_index = {w: i for i, w in enumerate(widths)}
        h_index = {h: i for i, h in enumerate(heads)}
        per_block = len(widths) + len(heads)
        out = np.zeros((len(configs), self.n_blocks * per_block), dtype=np.float32)
        for row, config in enumerate(configs):
            self._genes(config)
            for block, (w, h) in enumerate(zip(config.widths, config.heads)):
                if w:
                    base = block * per_block
                    out[row, base + w_index[w]] = 1.0
                    out[row, base + len(widths) + h_index[h]] = 1.0
        return out

    def _feature_values(self) -> Tuple[List[int], List[int]]:
        raise NotImplementedError


class _PerBlockSpace(SearchSpace):
    """Spaces where each block independently picks one of ``kept`` (width, heads) options."""

    def __init__(self, shape: SupernetShape, kept: Sequence[Tuple[int, int]]):
        super().__init__(shape, 1 + len(kept))
        self._widths = np.array([0] + [w for w, _ in kept], dtype=np.int64)
        self._heads = np.array([0] + [h for _, h in kept], dtype=np.int64)
        self._width_list, self._head_list = self._widths.tolist(), self._heads.tolist()
        self._option = {(int(w), int(h)): i for i, (w, h) in enumerate(zip(self._widths,
                                                                         self._heads))}

    def _make(self, genes):
        return _canonical(tuple(self._width_list[g] for g in genes),
                          tuple(self._head_list[g] for g in genes))

    def _read(self, config):
        if config.n_blocks != self.n_blocks:
            raise ValueError(f"sub-network {config.key} has {config.n_blocks} blocks, the "
                             f"supernet {self.n_blocks}")
        genes = np.zeros(self.n_blocks, dtype=np.int64)
        for block, (w, h) in enumerate(zip(config.widths, config.heads)):
            option = self._option.get((w, h))
            if option is None:
                raise ValueError(self._bad_choice(config, block, w, h))
            genes[block] = option
        return genes

    def _bad_choice(self, config, block, width, heads) -> str:
        raise NotImplementedError

    def _extreme_candidates(self):
        # Costs add up over blocks and every block costs the same: one block at its cheapest
        # option, or all blocks at their dearest.
        one = np.zeros((self.n_options - 1, self.n_blocks), dtype=np.int64)
        one[:, 0] = np.arange(1, self.n_options)
        every = np.repeat(np.arange(1, self.n_options)[:, None], self.n_blocks, axis=1)
        return self._decode(np.concatenate([one, every]))

    def _feature_values(self):
        return sorted(set(self._widths[1:].tolist())), sorted(set(self._heads[1:].tolist()))


class BlockSpace(_PerBlockSpace):
    """Keep masks: each block dropped or kept at full width and all heads (2^n - 1 configs)."""

    name = "block"

    def __init__(self, shape: SupernetShape):
        super().__init__(shape, [(shape.inner_size, shape.n_heads)])

    def _smaller(self, gene):
        return [0]

    def _larger(self, gene):
        return [1] if gene == 0 else []

    def _bad_choice(self, config, block, width, heads):
        return (f"block {block} of {config.key}: the block space keeps a block at full width "
                f"{self.shape.inner_size} with {self.shape.n_heads} heads or drops it, got "
                f"width {width} with {heads} heads (use search_space: elastic for other widths)")


def _width_units(shape: SupernetShape, fractions, key: str) -> List[int]:
    """Feed-forward widths (units of ``inner_size``) of width fractions; errors name ``key``."""
    values = list(fractions) if isinstance(fractions, (list, tuple)) else None
    allowed = "a non-empty list of distinct fractions in (0, 1] of inner_size"
    if not values:
        raise ValueError(f"config key `{key}` = {fractions!r} is invalid: expected {allowed}")
    units = []
    for value in values:
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not 0 < value <= 1):
            raise ValueError(f"config key `{key}` = {fractions!r} is invalid: expected {allowed}"
                             f" ({value!r} is not)")
        width = int(round(value * shape.inner_size))
        if width < 1:
            raise ValueError(f"config key `{key}`: {value} of inner_size {shape.inner_size} is "
                             "less than one feed-forward unit")
        units.append(width)
    return units


def _head_counts(shape: SupernetShape, counts, key: str) -> List[int]:
    values = list(counts) if isinstance(counts, (list, tuple)) else None
    allowed = f"a non-empty list of distinct integers in [1, n_heads = {shape.n_heads}]"
    if not values or any(isinstance(h, bool) or not isinstance(h, (int, np.integer))
                         or not 1 <= h <= shape.n_heads for h in values):
        raise ValueError(f"config key `{key}` = {counts!r} is invalid: expected {allowed}")
    return [int(h) for h in values]


class ElasticSpace(_PerBlockSpace):
    """Per block: dropped, or kept with a feed-forward width from ``width_choices`` (fractions
    of ``inner_size``, first-k units) and a head count from ``head_choices`` (first-k heads);
    None: the shipped defaults. ``(1 + W*H)^n - 1`` configs: 531,440 for 6 blocks, 4 widths and
    2 head counts."""

    name = "elastic"

    def __init__(self, shape: SupernetShape, width_choices=None, head_choices=None):
        if width_choices is None:
            width_choices = DEFAULTS["width_choices"]
        if head_choices is None:
            head_choices = DEFAULTS["head_choices"]
        widths = _width_units(shape, width_choices, "width_choices")
        heads = _head_counts(shape, head_choices, "head_choices")
        for key, given, values in (("width_choices", width_choices, widths),
                                   ("head_choices", head_choices, heads)):
            if len(set(values)) != len(values):
                raise ValueError(f"config key `{key}` = {given!r} is invalid: its choices must "
                                 f"be distinct (they give {values})")
        self.width_choices = tuple(float(v) for v in width_choices)
        self.head_choices = tuple(heads)
        self.width_values = tuple(sorted(widths))
        self.head_values = tuple(sorted(heads))
        kept = [(w, h) for w in self.width_values for h in self.head_values]
        super().__init__(shape, kept)

    def options(self):
        return {"name": self.name, "width_choices": list(self.width_choices),
                "head_choices": list(self.head_choices)}

    def _smaller(self, gene):
        n_heads = len(self.head_values)
        w_index, h_index = divmod(gene - 1, n_heads)
        out = [0]
        if w_index > 0:
            out.append(1 + (w_index - 1) * n_heads + h_index)
        if h_index > 0:
            out.append(1 + w_index * n_heads + h_index - 1)
        return out

    def _larger(self, gene):
        if gene == 0:
            return [1]
        n_heads = len(self.head_values)
        w_index, h_index = divmod(gene - 1, n_heads)
        out = []
        if w_index + 1 < len(self.width_values):
            out.append(1 + (w_index + 1) * n_heads + h_index)
        if h_index + 1 < n_heads:
            out.append(1 + w_index * n_heads + h_index + 1)
        return out

    def _bad_choice(self, config, block, width, heads):
        if width not in self.width_values:
            return (f"block {block} of {config.key}: width {width} is not one of the "
                    f"width_choices {list(self.width_choices)} of inner_size "
                    f"{self.shape.inner_size} (widths {list(self.width_values)})")
        return (f"block {block} of {config.key}: {heads} heads is not one of the head_choices "
                f"{list(self.head_values)}")


class CompoundSpace(SearchSpace):
    """CompOFA's compound space: the keep mask is searched, and every kept block runs at the
    width ``compound_widths[k-1]`` (a fraction of ``inner_size``) and head count
    ``compound_heads[k-1]`` when ``k`` blocks are kept (2^n - 1 configs); None: the shipped
    defaults."""

    name = "compound"

    def __init__(self, shape: SupernetShape, compound_widths=None, compound_heads=None):
        if compound_widths is None:
            compound_widths = DEFAULTS["compound_widths"]
        if compound_heads is None:
            compound_heads = DEFAULTS["compound_heads"]
        for key, given in (("compound_widths", compound_widths),
                           ("compound_heads", compound_heads)):
            if not isinstance(given, (list, tuple)) or len(given) != shape.n_blocks:
                raise ValueError(f"config key `{key}` = {given!r} is invalid: expected one entry"
                                 f" per number of kept blocks (n_blocks = {shape.n_blocks})")
        allowed_heads = f"integers in [1, n_heads = {shape.n_heads}]"
        if any(isinstance(h, bool) or not isinstance(h, (int, np.integer))
               or not 1 <= h <= shape.n_heads for h in compound_heads):
            raise ValueError(f"config key `compound_heads` = {compound_heads!r} is invalid: "
                             f"expected {allowed_heads}")
        self.compound_widths = tuple(float(v) for v in compound_widths)
        self.compound_heads = tuple(int(h) for h in compound_heads)
        self.width_by_kept = tuple(_width_units(shape, compound_widths, "compound_widths"))
        super().__init__(shape, 2)

    def options(self):
        return {"name": self.name, "compound_widths": list(self.compound_widths),
                "compound_heads": list(self.compound_heads)}

    def _make(self, genes):
        k = sum(genes)
        w, h = self.width_by_kept[k - 1], self.compound_heads[k - 1]
        return _canonical(tuple(w if g else 0 for g in genes), tuple(h if g else 0 for g in genes))

    def _read(self, config):
        if config.n_blocks != self.n_blocks:
            raise ValueError(f"sub-network {config.key} has {config.n_blocks} blocks, the "
                             f"supernet {self.n_blocks}")
        k = config.n_kept
        if k == 0:
            raise ValueError("a sub-network must keep at least one block")
        w, h = self.width_by_kept[k - 1], self.compound_heads[k - 1]
        for block, (width, heads) in enumerate(zip(config.widths, config.heads)):
            if width and (width, heads) != (w, h):
                raise ValueError(
                    f"block {block} of {config.key}: with {k} kept blocks the compound space "
                    f"runs every kept block at width {w} (compound_widths[{k - 1}] = "
                    f"{self.compound_widths[k - 1]}) with {h} heads (compound_heads[{k - 1}]), "
                    f"got width {width} with {heads} heads"
                )
        return np.array(config.mask, dtype=np.int64)

    def _smaller(self, gene):
        return [0]

    def _larger(self, gene):
        return [1] if gene == 0 else []

    def _extreme_candidates(self):
        # Costs depend only on the number of kept blocks: the first k blocks for each k.
        genes = np.tril(np.ones((self.n_blocks, self.n_blocks), dtype=np.int64))
        return self._decode(genes)

    def _feature_values(self):
        return sorted(set(self.width_by_kept)), sorted(set(self.compound_heads))


SPACES = {"block": BlockSpace, "elastic": ElasticSpace, "compound": CompoundSpace}


def config_value(config, key: str, default=None):
    """``config[key]`` for a RecBole Config or a dict; ``default`` when unset or null."""
    value = config[key] if key in config else None
    return default if value is None else value


def build_space(config, shape: SupernetShape) -> SearchSpace:
    """The search space the config's ``search_space`` names, over the supernet ``shape``."""
    get = lambda key: config_value(config, key, DEFAULTS[key])  # noqa: E731
    name = get("search_space")
    if name not in SPACES:
        raise ValueError(f"config key `search_space` = {name!r} is invalid: expected one of "
                         f"{sorted(SPACES)}")
    if name == "block":
        return BlockSpace(shape)
    width_choices, head_choices = get("width_choices"), get("head_choices")
    if name == "elastic":
        return ElasticSpace(shape, width_choices, head_choices)
    space = CompoundSpace(shape, get("compound_widths"), get("compound_heads"))
    # The supernet is trained on width_choices x head_choices: the coupling must pick from them.
    for key, values, allowed in (("compound_widths", space.compound_widths, width_choices),
                                 ("compound_heads", space.compound_heads, head_choices)):
        outside = [v for v in values if v not in allowed]
        if outside:
            other = "width_choices" if key == "compound_widths" else "head_choices"
            raise ValueError(f"config key `{key}` = {list(values)!r} is invalid: {outside} not "
                             f"in `{other}` = {allowed!r}")
    return space
