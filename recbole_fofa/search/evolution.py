"""Subnet search for many device budgets: OFA's evolution, warm-started across budgets.

One entry point, :func:`search`; strategies in :data:`STRATEGIES`. Every strategy works through
the space's operators only (sample, mutate, crossover, repair, enumerate, cost), so it runs
unchanged on the block, elastic and compound spaces. Shared by all strategies:

* one archive of evaluated sub-networks across budgets: a key is never evaluated twice, and each
  budget is answered by the best archived sub-network that fits it;
* the estimator is called once per generation with the new children (``evaluate(list)``);
* sampling is bounded (``max_resample`` tries, then :meth:`SearchSpace.repair`), a budget below
  the cheapest sub-network raises :class:`InfeasibleBudget` before anything is evaluated, a
  budget at or above the largest sub-network is answered by it, and nothing waits for input;
* one ``numpy.random.Generator`` seeded once: the same seed gives the same result.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Sequence, Union

import numpy as np
from recbole.utils import set_color
from tqdm import tqdm

from recbole_fofa.checks import check_evolution
from recbole_fofa.registry import shipped_defaults
from recbole_fofa.search.result import BudgetResult, SearchResult, pareto_front
from recbole_fofa.search.space import InfeasibleBudget, SearchSpace, config_value
from recbole_fofa.subnet import SubnetConfig

__all__ = [
    "AUTO_EVOLUTION",
    "InfeasibleBudget",
    "STRATEGIES",
    "SearchProgress",
    "SearchSettings",
    "Strategy",
    "search",
]


# ----------------------------------------------------------------------------- settings


_YAML = shipped_defaults("ForwardOFA")


@dataclass(frozen=True)
class SearchSettings:
    """Evolution settings; each field is config key ``search_<field>`` (OFA's defaults, read
    from the shipped YAML), checked by that key's rule of the config table
    (:func:`recbole_fofa.checks.check_evolution`), so a value the config refuses is refused
    here too."""

    population: int = _YAML["search_population"]
    parents: int = _YAML["search_parents"]
    mutants: int = _YAML["search_mutants"]
    crossovers: int = _YAML["search_crossovers"]
    mutation_prob: float = _YAML["search_mutation_prob"]
    generations: int = _YAML["search_generations"]
    warm_generations: int | None = _YAML["search_warm_generations"]
    max_resample: int = _YAML["search_max_resample"]
    exhaustive_limit: int = _YAML["search_exhaustive_limit"]

    def __post_init__(self):
        check_evolution({f"search_{name}": value for name, value in asdict(self).items()},
                        each=True)

    @property
    def warm(self) -> int:
        """Generations for every budget after the first in bottom_up / top_down."""
        if self.warm_generations is not None:
            return int(self.warm_generations)
        return int(math.ceil(math.sqrt(self.generations)))

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)

    @classmethod
    def from_config(cls, config) -> SearchSettings:
        """Settings from a RecBole Config or a dict (unset keys keep the defaults above)."""
        defaults = cls()
        values = {}
        for name in cls.__dataclass_fields__:
            values[name] = config_value(config, f"search_{name}", getattr(defaults, name))
        return cls(**values)


@dataclass(frozen=True)
class SearchProgress:
    """What a ``progress`` callback receives: after every generation (``event='generation'``)
    and when a budget is answered (``event='budget'``, with its ``result``). ``done``/``total``
    count steps of the whole search: planned generations plus one per budget."""

    event: str
    strategy: str
    budget_index: int
    budget_macs: float
    generation: int
    generations: int
    done: int
    total: int
    best_score: float | None
    evaluations: int
    result: BudgetResult | None = None


# ----------------------------------------------------------------------------- the archive


class _Archive:
    """Every evaluated sub-network with its cost and score, in evaluation order."""

    def __init__(self):
        self.index: Dict[SubnetConfig, int] = {}  # a SubnetConfig hashes by value
        self.configs: List[SubnetConfig] = []
        self.keys: List[str] = []
        self._macs: List[int] = []
        self._params: List[int] = []
        self._scores: List[float] = []
        self._arrays = None

    def __len__(self):
        return len(self.configs)

    def __contains__(self, config):
        return config in self.index

    def add(self, configs, macs, params, scores):
        for config, m, p, s in zip(configs, macs, params, scores):
            self.index[config] = len(self.configs)
            self.configs.append(config)
            self.keys.append(config.key)
            self._macs.append(int(m))
            self._params.append(int(p))
            self._scores.append(float(s))
        self._arrays = None

    def score(self, config) -> float:
        return self._scores[self.index[config]]

    def arrays(self):
        if self._arrays is None:
            self._arrays = (np.array(self._macs, dtype=np.int64),
                            np.array(self._scores, dtype=np.float64))
        return self._arrays

    def best_within(self, budget: float) -> int | None:
        """Index of the best sub-network with MACs <= budget (ties: fewer MACs, then key)."""
        if not self.configs:
            return None
        macs, scores = self.arrays()
        fits = np.flatnonzero(macs <= budget)
        if fits.size == 0:
            return None
        top = fits[scores[fits] == scores[fits].max()]
        return int(min(top, key=lambda i: (self._macs[i], self.keys[i])))

    def entry(self, i):
        return self.configs[i], self._macs[i], self._params[i], self._scores[i]

    def as_dict(self):
        return {k: (m, p, s) for k, m, p, s in zip(self.keys, self._macs, self._params,
                                                  self._scores)}

    def front(self, max_macs: float) -> List[int]:
        """Indices of the Pareto front among sub-networks with MACs <= ``max_macs``."""
        points = [(i, m, p, s) for i, (m, p, s) in enumerate(zip(self._macs, self._params,
                                                                 self._scores)) if m <= max_macs]
        # pareto_front breaks ties by its first entry: the evaluation order, deterministic
        return [p[0] for p in pareto_front(points)]


# ----------------------------------------------------------------------------- the run


class _Run:
    """State of one search: space, estimator, settings, rng, archive, progress and results."""

    def __init__(self, space: SearchSpace, estimator, settings: SearchSettings,
                 rng: np.random.Generator, strategy: str, budgets: List[float], progress):
        self.space, self.estimator, self.settings, self.rng = space, estimator, settings, rng
        self.strategy = strategy
        self.budgets = budgets  # ascending
        self.archive = _Archive()
        self.results: Dict[float, BudgetResult] = {}
        self.full_macs = space.shape.full_macs()
        self.max_cost = space.max_cost()
        self._costs: Dict[SubnetConfig, int] = {}
        self._keys: Dict[SubnetConfig, str] = {}
        self._repairs: Dict[tuple, SubnetConfig] = {}
        self._progress = progress
        self.searched = [b for b in budgets if b < self.max_cost]
        self.total = STRATEGIES[strategy].planned_generations(settings, len(self.searched))
        self.total += len(budgets)
        self.done = 0
        self._phase = None

    # ------------------------------------------------------------------ costs and quality
    def costs(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        missing = [c for c in dict.fromkeys(configs) if c not in self._costs]
        if missing:
            for config, macs in zip(missing, self.space.cost(missing)):
                self._costs[config] = int(macs)
        return np.array([self._costs[c] for c in configs], dtype=np.int64)

    def key(self, config: SubnetConfig) -> str:
        if config not in self._keys:
            self._keys[config] = config.key
        return self._keys[config]

    def evaluate(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        """Scores of ``configs``; only keys never seen go to the estimator, in one batch."""
        new = [c for c in dict.fromkeys(configs) if c not in self.archive]
        if new:
            scores = np.asarray(self.estimator.evaluate(new), dtype=np.float64).reshape(-1)
            if scores.shape[0] != len(new):
                raise ValueError(f"estimator.evaluate returned {scores.shape[0]} scores for "
                                 f"{len(new)} sub-networks")
            if not np.all(np.isfinite(scores)):
                bad = [self.key(c) for c, s in zip(new, scores) if not np.isfinite(s)]
                raise ValueError(f"estimator.evaluate returned a non-finite score for {bad}")
            self.archive.add(new, self.costs(new), self.space.params(new), scores)
        return np.array([self.archive.score(c) for c in configs], dtype=np.float64)

    def best(self, budget: float) -> float | None:
        index = self.archive.best_within(budget)
        return None if index is None else self.archive.entry(index)[3]

    # ------------------------------------------------------------------ feasible configs
    def repair(self, config: SubnetConfig, budget: float) -> SubnetConfig:
        key = (config, budget)
        if key not in self._repairs:
            self._repairs[key] = self.space.repair(config, budget)
        return self._repairs[key]

    def fit(self, makers: Sequence[Callable[[], SubnetConfig]], budget: float):
        """One config per maker that fits ``budget``: each maker is retried up to
        ``max_resample`` times (all pending slots in one costing call per round), then its last
        draw is repaired."""
        out: List[SubnetConfig | None] = [None] * len(makers)
        pending, last = list(range(len(makers))), {}
        for _ in range(self.settings.max_resample):
            drawn = [makers[i]() for i in pending]
            still = []
            for i, config, macs in zip(pending, drawn, self.costs(drawn)):
                if macs <= budget:
                    out[i] = config
                else:
                    last[i] = config
                    still.append(i)
            pending = still
            if not pending:
                break
        for i in pending:
            out[i] = self.repair(last[i], budget)
        return out

    def samples(self, n: int, budget: float) -> List[SubnetConfig]:
        return self.fit([lambda: self.space.sample(self.rng)] * n, budget)

    def mutants(self, parents: Sequence[SubnetConfig], n: int, budget: float):
        picks = self.rng.integers(len(parents), size=n)
        prob = self.settings.mutation_prob
        return self.fit([lambda p=parents[i]: self.space.mutate(p, prob, self.rng)
                         for i in picks], budget)

    def crossovers(self, parents: Sequence[SubnetConfig], n: int, budget: float):
        pairs = self.rng.integers(len(parents), size=(n, 2))
        return self.fit([lambda a=parents[i], b=parents[j]: self.space.crossover(a, b, self.rng)
                         for i, j in pairs], budget)

    def archive_top(self, budget: float, n: int) -> List[SubnetConfig]:
        """The ``n`` best archived sub-networks that fit ``budget``."""
        return self.top([c for c, m in zip(self.archive.configs, self.archive.arrays()[0])
                         if m <= budget], n)

    def top(self, population: Sequence[SubnetConfig], n: int) -> List[SubnetConfig]:
        """The ``n`` best of ``population`` (unique; ties: fewer MACs, then key)."""
        unique = list(dict.fromkeys(population))
        scores = self.evaluate(unique)
        macs = self.costs(unique)
        order = sorted(range(len(unique)),
                       key=lambda i: (-scores[i], macs[i], self.key(unique[i])))
        return [unique[i] for i in order[:n]]

    # ------------------------------------------------------------------ evolution
    def evolve(self, budget: float, population: List[SubnetConfig], generations: int):
        """OFA's loop for ``generations`` generations under ``budget``: the best ``parents``
        breed ``mutants`` mutants and ``crossovers`` crossovers, evaluated in one batch; the
        next population is the parents and the children. Returns (population, curve)."""
        s = self.settings
        curve = [self.best(budget)]
        for generation in range(1, generations + 1):
            parents = self.top(population, s.parents)
            children = self.mutants(parents, s.mutants, budget)
            children += self.crossovers(parents, s.crossovers, budget)
            self.evaluate(children)
            population = list(dict.fromkeys(parents + children))
            curve.append(self.best(budget))
            self.generation_done(budget, generation, generations)
        return population, curve

    # ------------------------------------------------------------------ bookkeeping
    def begin(self, budget: float):
        self._phase = (budget, time.perf_counter(), len(self.archive))

    def finish(self, budget: float, curve, generations: int, config=None) -> BudgetResult:
        """Store the answer for ``budget``: ``config`` or the best archived one that fits."""
        start_budget, start, start_evals = self._phase
        if start_budget != budget:
            raise RuntimeError(f"budget {budget} finished while {start_budget} was open")
        if config is None:
            index = self.archive.best_within(budget)
            config = self.archive.entry(index)[0]
        score = float(self.evaluate([config])[0])
        macs, params = int(self.costs([config])[0]), int(self.space.params(config)[0])
        result = BudgetResult(
            budget_macs=budget, budget_fraction=budget / self.full_macs, config=config,
            macs=macs, params=params, valid_score=score, feasible=macs <= budget,
            curve=tuple(score if v is None else v for v in curve) if curve else (score,),
            evaluations=len(self.archive) - start_evals,
            seconds=time.perf_counter() - start, generations=generations,
        )
        if budget in self.results:
            raise RuntimeError(f"budget {budget} answered twice")
        self.results[budget] = result
        self.done += 1
        self._emit("budget", budget, generations, generations, result)
        return result

    def answer_largest(self, budget: float) -> BudgetResult:
        """A budget every sub-network fits, answered without a search of its own: the best
        archived sub-network, the largest included (a sub-network may beat the full network, and
        a larger budget must never get a worse answer than a smaller one)."""
        self.begin(budget)
        self.evaluate([self.space.largest()])
        return self.finish(budget, None, 0)

    def generation_done(self, budget, generation, generations):
        self.done += 1
        self._emit("generation", budget, generation, generations)

    def _emit(self, event, budget, generation, generations, result=None):
        if self._progress is None:
            return
        self._progress(SearchProgress(
            event=event, strategy=self.strategy, budget_index=self.budgets.index(budget),
            budget_macs=budget, generation=generation, generations=generations, done=self.done,
            total=self.total, best_score=self.best(budget), evaluations=len(self.archive),
            result=result,
        ))


# ----------------------------------------------------------------------------- strategies


@dataclass(frozen=True)
class Strategy:
    """A search strategy: ``run(run)`` answers every budget of ``run.budgets`` (through
    ``run.finish``); ``planned_generations(settings, k)`` for k budgets that need a search."""

    name: str
    run: Callable[[_Run], None]
    planned_generations: Callable[[SearchSettings, int], int]
    description: str


def _independent(run: _Run):
    s = run.settings
    for budget in run.budgets:
        if budget >= run.max_cost:
            run.answer_largest(budget)
            continue
        run.begin(budget)
        population = run.samples(s.population, budget)
        run.evaluate(population)
        _, curve = run.evolve(budget, population, s.generations)
        run.finish(budget, curve, s.generations)


def _bottom_up(run: _Run):
    s = run.settings
    population = None
    for budget in run.budgets:  # ascending: the carried population fits every later budget
        if budget >= run.max_cost:
            run.answer_largest(budget)
            continue
        run.begin(budget)
        if population is None:
            population = run.samples(s.population, budget)
            generations = s.generations
        else:
            # The carried parents, grown into the room the larger budget adds.
            grown = [run.space.grow(c, budget) for c in run.top(population, s.parents)]
            population = population + grown
            generations = s.warm
        run.evaluate(population)
        population, curve = run.evolve(budget, population, generations)
        run.finish(budget, curve, generations)


def _top_down(run: _Run):
    s = run.settings
    population, previous = None, None
    for budget in reversed(run.budgets):
        if budget >= run.max_cost and previous is not None:  # the first budget is searched
            previous = run.answer_largest(budget).config
            continue
        run.begin(budget)
        seeds = []
        if previous is not None:
            # A new value: the stored result of the larger budget is never touched.
            seed = run.space.repair(SubnetConfig(previous.widths, previous.heads), budget,
                                    quality_fn=run.evaluate)
            # Diversity: the previous parents repaired (by cost) and mutants of the seed.
            others = [run.repair(c, budget) for c in population or []][: s.parents - 1]
            seeds = [seed] + others
            seeds += run.mutants([seed], s.population - len(seeds), budget)
        if population is None:
            population = seeds + run.samples(s.population - len(seeds), budget)
            generations = s.generations
        else:
            # Free (already evaluated): the archive's best that fit, from the larger budgets.
            population = seeds + run.archive_top(budget, s.population)
            generations = s.warm
        run.evaluate(population)
        population, curve = run.evolve(budget, population, generations)
        population = run.top(population, s.parents)
        previous = run.finish(budget, curve, generations).config


def _exhaustive(run: _Run):
    configs = run.space.enumerate(limit=run.settings.exhaustive_limit)
    for budget in run.budgets:
        if budget >= run.max_cost:
            run.answer_largest(budget)
            continue
        run.begin(budget)
        run.evaluate(configs)  # evaluates on the first budget only: the archive has them after
        run.finish(budget, [run.best(budget)], 0)


def _pareto(run: _Run):
    """One evolution for all budgets: parents come from the archive's Pareto front (each
    budget's best always among them), children are made for the budgets in turn, so one
    generation serves every budget and the search's cost does not grow with their number."""
    s = run.settings
    targets = run.searched
    if not targets:
        for budget in run.budgets:
            run.answer_largest(budget)
        return
    k, top = len(targets), targets[-1]
    run.begin(targets[0])
    population = []
    for j, budget in enumerate(targets):
        share = s.population // k + (j < s.population % k)
        population += run.samples(share, budget)
    run.evaluate(population)
    curves = {b: [run.best(b)] for b in targets}
    for generation in range(1, s.generations + 1):
        front = run.archive.front(top)
        keep = {run.archive.best_within(b) for b in targets}
        rest = [i for i in front if i not in keep]
        room = max(s.parents - len(keep), 0)
        if len(rest) > room:
            rest = [rest[int(j)] for j in np.linspace(0, len(rest) - 1, room)] if room else []
        chosen = sorted(keep | set(rest))
        parents = [run.archive.entry(i)[0] for i in chosen]
        parent_macs = run.costs(parents)
        children = []
        for count, make in ((s.mutants, run.mutants), (s.crossovers, run.crossovers)):
            for j, budget in enumerate(targets):
                n = count // k + (j < count % k)
                if n:
                    eligible = [p for p, m in zip(parents, parent_macs) if m <= budget]
                    children += make(eligible, n, budget)
        run.evaluate(children)
        for b in targets:
            curves[b].append(run.best(b))
        run.generation_done(targets[0], generation, s.generations)
    run.finish(targets[0], curves[targets[0]], s.generations)
    for budget in run.budgets[1:]:
        if budget >= run.max_cost:
            run.answer_largest(budget)
        else:
            run.begin(budget)
            run.finish(budget, curves[budget], s.generations)


STRATEGIES: Dict[str, Strategy] = {
    "independent": Strategy(
        "independent", _independent, lambda s, k: k * s.generations,
        "OFA's evolution from scratch for every budget (search_generations each)"),
    "bottom_up": Strategy(
        "bottom_up", _bottom_up,
        lambda s, k: (s.generations + (k - 1) * s.warm) if k else 0,
        "ascending budgets, the population carried forward; search_generations for the first, "
        "search_warm_generations for the rest"),
    "top_down": Strategy(
        "top_down", _top_down,
        lambda s, k: (s.generations + (k - 1) * s.warm) if k else 0,
        "descending budgets; the previous best copied and repaired to fit seeds the population "
        "with its mutants; search_warm_generations after the first"),
    "exhaustive": Strategy(
        "exhaustive", _exhaustive, lambda s, k: 0,
        "evaluate every sub-network once and answer every budget from the Pareto front"),
    "pareto": Strategy(
        "pareto", _pareto, lambda s, k: s.generations if k else 0,
        "one multi-objective evolution of the archive's Pareto front for all budgets"),
}

#: What ``auto`` runs when the space is too large to enumerate: the fastest strategy that stayed
#: within 0.005 valid NDCG@10 of independent search on every budget at every k on
#: benchmarks/search_budgets.py (elastic ForwardOFA on ml-100k, k = 1, 2, 3, 4, 5, 10, median of 3).
#: bottom_up: worst budget -0.0004 at any k, 0.20x independent's time at k = 10. pareto was faster
#: (0.06x at k = 10) but lost 0.0056 on a budget at k = 5; top_down lost 0.0056 at k = 5 and took
#: 0.32x at k = 10. (On the planted quality of benchmarks/search_synthetic.py top_down was closest.)
AUTO_EVOLUTION = "bottom_up"
STRATEGY_NAMES = ("auto",) + tuple(STRATEGIES)


def _resolve(strategy: str, space: SearchSpace, settings: SearchSettings):
    if strategy not in STRATEGY_NAMES:
        raise ValueError(f"config key `search_strategy` = {strategy!r} is invalid: expected one "
                         f"of {list(STRATEGY_NAMES)}")
    if strategy != "auto":
        return strategy, ""
    size = space.size()
    if size <= settings.exhaustive_limit:
        return "exhaustive", (f"auto: the {space.name} space has {size:,} sub-networks <= "
                              f"search_exhaustive_limit {settings.exhaustive_limit:,}")
    return AUTO_EVOLUTION, (f"auto: the {space.name} space has {size:,} sub-networks > "
                            f"search_exhaustive_limit {settings.exhaustive_limit:,}; "
                            f"{AUTO_EVOLUTION} (the fastest at equal quality in "
                            "benchmarks/search_budgets.py)")


def _check_budgets(budgets, space: SearchSpace) -> List[float]:
    if isinstance(budgets, (int, float)) and not isinstance(budgets, bool):
        budgets = [budgets]
    try:
        values = list(budgets)
    except TypeError:
        raise ValueError(
            f"search_budgets must be a list of budgets in MACs, got {budgets!r}") from None
    if not values:
        raise ValueError("search_budgets is empty: give at least one budget")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer,
                                                             np.floating)):
            raise ValueError(f"search_budgets: {value!r} is not a number of MACs (convert "
                             "fractions and '400K MACs' strings with SupernetShape.budget_macs)")
        out.append(float(value))
    duplicates = sorted({v for v in out if out.count(v) > 1})
    if duplicates:
        raise ValueError(f"search_budgets: budgets {duplicates} MACs are given more than once")
    for value in sorted(out):
        space.check_budget(value)  # InfeasibleBudget for the smallest first
    return sorted(out)


def _tqdm_progress():
    state = {}

    def update(event: SearchProgress):
        if "bar" not in state:
            state["bar"] = tqdm(total=event.total, ncols=100,
                                desc=set_color(f"subnet search ({event.strategy})", "pink"))
        bar = state["bar"]
        bar.set_postfix(budget=f"{event.budget_macs:,.0f}", evaluations=event.evaluations)
        bar.update(1)
        if event.done >= event.total:
            bar.close()

    return update


def search(space: SearchSpace, estimator, budgets: Sequence[float], strategy: str = "auto",
           settings: SearchSettings | None = None, seed: int | None = 0,
           progress: Union[None, bool, Callable[[SearchProgress], None]] = None) -> SearchResult:
    """The best sub-network of ``space`` for each budget (MACs; convert fractions with
    ``space.shape.budget_macs``), by ``estimator.evaluate(list_of_configs) -> scores`` (higher
    is better).

    ``strategy``: a name in :data:`STRATEGIES` or ``'auto'`` (exhaustive when the space has at
    most ``settings.exhaustive_limit`` sub-networks, else :data:`AUTO_EVOLUTION`). ``progress``:
    a callable receiving :class:`SearchProgress`, or True for a tqdm bar. Raises
    :class:`InfeasibleBudget` (before any evaluation) when a budget is below the cheapest
    sub-network.
    """
    if not isinstance(space, SearchSpace):
        raise TypeError(f"space must be a SearchSpace, got {type(space).__name__}")
    if not callable(getattr(estimator, "evaluate", None)):
        raise TypeError("estimator must have evaluate(list of SubnetConfig) -> scores")
    settings = SearchSettings() if settings is None else settings
    if not isinstance(settings, SearchSettings):
        raise TypeError(f"settings must be a SearchSettings, got {type(settings).__name__}")
    name, reason = _resolve(strategy, space, settings)
    ascending = _check_budgets(budgets, space)
    if name == "exhaustive" and space.size() > settings.exhaustive_limit:
        space.enumerate(limit=settings.exhaustive_limit)  # raises, naming the limit
    if progress is True:
        progress = _tqdm_progress()
    elif progress is False:
        progress = None
    elif progress is not None and not callable(progress):
        raise TypeError("progress must be None, True (a tqdm bar) or a callable")
    start = time.perf_counter()
    run = _Run(space, estimator, settings, np.random.default_rng(seed), name, ascending, progress)
    STRATEGIES[name].run(run)
    missing = [b for b in ascending if b not in run.results]
    if missing:
        raise RuntimeError(f"strategy {name} left budgets {missing} unanswered")
    return SearchResult(
        strategy=name, requested_strategy=strategy, reason=reason, space=space.name,
        space_options=space.options(), settings=settings.to_dict(), seed=seed,
        budgets=[run.results[b] for b in ascending], archive=run.archive.as_dict(),
        evaluations=len(run.archive), seconds=time.perf_counter() - start,
        full_macs=run.full_macs,
    )
