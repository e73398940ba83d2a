"""Subnet search strategies and results, with a planted synthetic estimator (no model)."""

import math
import time
from collections import Counter

import numpy as np
import pytest

from recbole_fofa import checks
from recbole_fofa.registry import shipped_defaults
from recbole_fofa.search import (
    AUTO_EVOLUTION,
    STRATEGIES,
    BlockSpace,
    CompoundSpace,
    ElasticSpace,
    InfeasibleBudget,
    SearchResult,
    SearchSettings,
    search,
)
from recbole_fofa.subnet import SupernetShape

SHAPE = SupernetShape(seq_len=8, hidden_size=16, inner_size=32, n_heads=2, n_blocks=4)
SMALL = SearchSettings(population=16, parents=4, mutants=8, crossovers=8, generations=9,
                       max_resample=10)
EVOLUTIONS = ("independent", "bottom_up", "top_down", "pareto")


class PlantedEstimator:
    """Planted quality: diminishing returns on weighted kept capacity (width^0.6 and heads),
    plus a preference for block 0; counts every evaluation per key and every batch."""

    def __init__(self, shape=SHAPE, seed=0):
        self.shape = shape
        self.pref = np.random.default_rng(seed).uniform(0.4, 1.6, shape.n_blocks)
        self.calls = Counter()
        self.evaluations = 0
        self.batches = []

    def quality(self, config):
        w = np.array(config.widths) / self.shape.inner_size
        h = np.array(config.heads) / self.shape.n_heads
        capacity = float((self.pref * np.where(w > 0, w**0.6 * (0.6 + 0.4 * h), 0)).sum()) / 2
        return 1 - math.exp(-capacity) + 0.03 * (w[0] > 0)

    def evaluate(self, configs):
        self.batches.append(len(configs))
        for config in configs:
            self.calls[config.key] += 1
        self.evaluations += len(configs)
        return np.array([self.quality(c) for c in configs])


def elastic(shape=SHAPE):
    return ElasticSpace(shape, (0.25, 0.5, 0.75, 1.0), (1, 2))


def budgets_between(space, k):
    low, high = space.min_cost(), space.max_cost()
    return [low + (high - low) * (i + 1) / (k + 1) for i in range(k)]


def brute_force(space, estimator, budget):
    """Best (score, -macs, key) config within budget over the whole space."""
    configs = space.enumerate(limit=10**6)
    costs = space.cost(configs)
    fits = [c for c, m in zip(configs, costs) if m <= budget]
    return max(fits, key=lambda c: (estimator.quality(c), -space.cost(c)[0], _neg(c.key)))


def _neg(key):
    return tuple(-ord(ch) for ch in key)  # max() of this = the smallest key


@pytest.mark.parametrize("space", [
    BlockSpace(SHAPE),
    CompoundSpace(SHAPE, (0.25, 0.5, 0.75, 1.0), (1, 1, 2, 2)),
    ElasticSpace(SupernetShape(seq_len=8, hidden_size=16, inner_size=32, n_heads=2,
                               n_blocks=3), (0.5, 1.0), (1, 2)),
], ids=lambda s: s.name)
def test_exhaustive_equals_brute_force(space):
    estimator = PlantedEstimator(space.shape)
    budgets = budgets_between(space, 5)
    result = search(space, estimator, budgets, "exhaustive")
    assert result.strategy == "exhaustive"
    assert estimator.evaluations == space.size() == len(result.archive)
    for budget, got in zip(budgets, result.budgets):
        best = brute_force(space, estimator, budget)
        assert got.config == best
        assert got.valid_score == pytest.approx(estimator.quality(best))
        assert got.generations == 0 and got.curve == (got.valid_score,)


@pytest.mark.parametrize("strategy", EVOLUTIONS + ("auto",))
def test_every_config_fits_its_budget_recomputed(strategy):
    space, estimator = elastic(), PlantedEstimator()
    budgets = budgets_between(space, 4)
    result = search(space, estimator, budgets, strategy, SMALL, seed=1)
    assert [b.budget_macs for b in result.budgets] == sorted(budgets)
    for b in result.budgets:
        macs = int(SHAPE.cost([b.config]).encoder_macs[0])  # independent of the space's table
        assert macs == b.macs <= b.budget_macs and b.feasible
        assert b.params == int(SHAPE.cost([b.config]).encoder_params[0])
        assert b.budget_fraction == pytest.approx(b.budget_macs / SHAPE.full_macs())
        assert b.valid_score == pytest.approx(estimator.quality(b.config))
        space.validate(b.config)


@pytest.mark.parametrize("strategy", EVOLUTIONS + ("exhaustive",))
def test_no_config_is_evaluated_twice(strategy):
    space = elastic() if strategy != "exhaustive" else BlockSpace(SHAPE)
    estimator = PlantedEstimator()
    result = search(space, estimator, budgets_between(space, 5), strategy, SMALL, seed=2)
    assert max(estimator.calls.values()) == 1
    assert result.evaluations == estimator.evaluations == len(result.archive)
    assert sum(b.evaluations for b in result.budgets) == estimator.evaluations


def test_pareto_front_is_non_dominated_and_rises_with_budget():
    space, estimator = elastic(), PlantedEstimator()
    result = search(space, estimator, budgets_between(space, 3), "pareto", SMALL, seed=0)
    front = result.pareto_front()
    macs = [p[1] for p in front]
    scores = [p[3] for p in front]
    assert macs == sorted(macs) and all(a < b for a, b in zip(scores, scores[1:]))
    for key, m, _, s in front:
        assert not any((m2 <= m and s2 >= s and (m2 < m or s2 > s))
                       for m2, _, s2 in result.archive.values()), key
    kept = {p[0] for p in front}
    for key, (m, _, s) in result.archive.items():
        if key not in kept:  # everything off the front is dominated by (or equal to) a point on it
            assert any(fm <= m and fs >= s for _, fm, _, fs in front)


@pytest.mark.parametrize("strategy", ["independent", "bottom_up", "pareto", "exhaustive"])
def test_quality_never_falls_as_the_budget_grows(strategy):
    space = elastic() if strategy != "exhaustive" else BlockSpace(SHAPE)
    result = search(space, PlantedEstimator(), budgets_between(space, 5), strategy, SMALL)
    scores = [b.valid_score for b in result.budgets]
    assert scores == sorted(scores)


@pytest.mark.parametrize("strategy, first", [("bottom_up", 0), ("top_down", -1)])
def test_warm_strategies_count_generations(strategy, first):
    space = elastic()
    budgets = budgets_between(space, 4)
    events = Counter()

    def progress(event):
        if event.event == "generation":
            events[event.budget_index] += 1

    result = search(space, PlantedEstimator(), budgets, strategy, SMALL, progress=progress)
    warm = math.ceil(math.sqrt(SMALL.generations))
    assert SMALL.warm == warm == 3
    expected = [warm] * 4
    expected[first] = SMALL.generations
    assert [events[i] for i in range(4)] == expected
    assert [b.generations for b in result.budgets] == expected
    assert [len(b.curve) - 1 for b in result.budgets] == expected
    for b in result.budgets:
        assert list(b.curve) == sorted(b.curve)  # best so far never falls
    explicit = SearchSettings(**{**SMALL.to_dict(), "warm_generations": 1})
    result = search(space, PlantedEstimator(), budgets, strategy, explicit)
    assert sorted(b.generations for b in result.budgets) == [1, 1, 1, SMALL.generations]


def test_independent_gives_every_budget_all_generations():
    space = elastic()
    result = search(space, PlantedEstimator(), budgets_between(space, 3), "independent", SMALL)
    assert [b.generations for b in result.budgets] == [SMALL.generations] * 3


def test_top_down_never_alters_an_earlier_budgets_stored_result():
    space = elastic()
    budgets = budgets_between(space, 4)
    stored = {}

    def progress(event):
        if event.event == "budget":
            stored[event.budget_index] = (event.result, event.result.to_dict())

    result = search(space, PlantedEstimator(), budgets, "top_down", SMALL, seed=4,
                    progress=progress)
    assert sorted(stored) == [0, 1, 2, 3]
    for index, final in enumerate(result.budgets):
        same_object, snapshot = stored[index]
        assert final is same_object and final.to_dict() == snapshot
    # a larger budget's answer did not fit the next smaller budget: repair made a new config
    # and the stored answer kept its own
    assert any(larger.macs > smaller.budget_macs
               for larger, smaller in zip(result.budgets[1:], result.budgets[:-1]))


def test_batches_one_estimator_call_per_generation():
    space, estimator = elastic(), PlantedEstimator()
    search(space, estimator, budgets_between(space, 1), "independent", SMALL)
    assert 1 <= len(estimator.batches) <= 1 + SMALL.generations  # initial population + children


def test_infeasible_budget_raises_fast_before_any_evaluation():
    space, estimator = elastic(), PlantedEstimator()
    low = space.min_cost()
    start = time.perf_counter()
    with pytest.raises(InfeasibleBudget) as info:
        search(space, estimator, [low * 2, low * 0.5], "bottom_up", SMALL)
    assert time.perf_counter() - start < 1.0
    assert estimator.evaluations == 0
    message = str(info.value)
    assert f"{low:,} MACs" in message and "search_budgets" in message
    assert f"{low / SHAPE.full_macs():.4f} of the full encoder" in message


@pytest.mark.parametrize("strategy", EVOLUTIONS + ("exhaustive",))
def test_budgets_at_or_above_the_full_network_get_the_best_archived_config(strategy):
    space = elastic() if strategy != "exhaustive" else BlockSpace(SHAPE)
    full = float(space.max_cost())
    result = search(space, PlantedEstimator(), [full * 0.5, full, full * 3], strategy, SMALL)
    largest = PlantedEstimator().evaluate([space.largest()])[0]
    best = max(score for _, _, score in result.archive.values())
    for answer in result.budgets[1:]:  # anything fits: the best evaluated config, never worse
        assert answer.valid_score == best >= largest
        assert answer.valid_score >= result.budgets[0].valid_score
    assert result.budgets[1].config == result.budgets[2].config
    if strategy != "top_down":  # top_down searches its first (largest) budget
        assert [b.generations for b in result.budgets[1:]] == [0, 0]


@pytest.mark.parametrize("strategy", EVOLUTIONS)
def test_same_seed_same_result(strategy):
    space = elastic()
    budgets = budgets_between(space, 3)

    def run(seed):
        result = search(space, PlantedEstimator(), budgets, strategy, SMALL, seed=seed)
        data = result.to_dict()
        data.pop("seconds")
        for b in data["budgets"]:
            b.pop("seconds")
        return data

    assert run(7) == run(7)
    assert run(7)["archive"] != run(8)["archive"]


def test_auto_picks_exhaustive_for_small_spaces_and_the_warm_evolution_else():
    result = search(BlockSpace(SHAPE), PlantedEstimator(), [SHAPE.full_macs() / 2], "auto")
    assert result.strategy == "exhaustive" and result.requested_strategy == "auto"
    assert "15 sub-networks <= search_exhaustive_limit 1,024" in result.reason
    space = elastic()
    settings = SearchSettings(**{**SMALL.to_dict(), "exhaustive_limit": 100})
    result = search(space, PlantedEstimator(), budgets_between(space, 2), "auto", settings)
    assert result.strategy == AUTO_EVOLUTION in ("bottom_up", "top_down")
    assert "6,560 sub-networks > search_exhaustive_limit 100" in result.reason


def test_exhaustive_refuses_a_large_space_before_evaluating():
    estimator = PlantedEstimator()
    with pytest.raises(ValueError, match="search_exhaustive_limit = 1,024"):
        search(elastic(), estimator, [SHAPE.full_macs() / 2], "exhaustive")
    assert estimator.evaluations == 0


def test_json_round_trip_is_exact(tmp_path):
    space = elastic()
    result = search(space, PlantedEstimator(), budgets_between(space, 3), "top_down", SMALL)
    result.budgets[1] = result.budgets[1].with_extra(
        test_result={"ndcg@10": 0.1234, "hit@10": 0.5}, controller={"valid_score": 0.2})
    path = result.to_json(tmp_path / "out" / "search.json")
    loaded = SearchResult.from_json(path)
    assert loaded == result
    assert loaded.budgets[1].extra["test_result"]["ndcg@10"] == 0.1234
    import json

    data = json.loads(path.read_text())
    assert [b["budget_macs"] for b in data["budgets"]] == sorted(b["budget_macs"]
                                                                 for b in data["budgets"])
    entry = data["budgets"][1]
    for key in ("budget_macs", "config", "macs", "params", "valid_score", "test_result",
                "feasible", "evaluations", "seconds", "controller"):
        assert key in entry
    assert data["strategy"] == "top_down" and data["pareto_front"] and data["archive"]
    rows = result.table()
    assert len(rows) == 3 and rows[1]["test_result.ndcg@10"] == 0.1234
    assert "test_result.ndcg@10" in result.format_table()


def test_extra_may_not_shadow_a_field():
    space = elastic()
    result = search(space, PlantedEstimator(), budgets_between(space, 1), "independent", SMALL)
    with pytest.raises(ValueError, match="field names"):
        result.budgets[0].with_extra(macs=1)


@pytest.mark.parametrize("budgets, strategy, message", [
    ([], "auto", "search_budgets is empty"),
    (["0.5"], "auto", "not a number of MACs"),
    ([1e6, 1e6], "auto", "more than once"),
    ([1e6], "greedy", r"`search_strategy` = 'greedy' is invalid"),
])
def test_bad_arguments_are_clear_errors(budgets, strategy, message):
    with pytest.raises(ValueError, match=message):
        search(elastic(), PlantedEstimator(), budgets, strategy, SMALL)


def test_settings_from_config_and_checks():
    settings = SearchSettings.from_config({"search_generations": 16, "search_parents": 5,
                                           "search_warm_generations": None})
    assert settings.generations == 16 and settings.parents == 5 and settings.warm == 4
    assert SearchSettings().population == 100 and SearchSettings().warm == 5
    with pytest.raises(ValueError, match="`search_mutation_prob` = 1.5"):
        SearchSettings(mutation_prob=1.5)
    with pytest.raises(ValueError, match="`search_parents` = 200 .* search_population"):
        SearchSettings(parents=200)
    with pytest.raises(ValueError, match="`search_generations` = 0"):
        SearchSettings(generations=0)


def test_settings_defaults_are_the_yaml_ones():
    defaults = shipped_defaults("ForwardOFA")
    assert {f"search_{k}": v for k, v in SearchSettings().to_dict().items()} == {
        key: defaults[key] for key in checks.EVOLUTION_KEYS}


EDGES = (-1, 0, 1, 2, 25, 100, 2**20, 2**20 + 1, 0.0, 0.5, 1.0, 1.5, None, True, "3")


@pytest.mark.parametrize("key", checks.EVOLUTION_KEYS)
def test_settings_and_the_config_refuse_the_same_values(key):
    """For every evolution key, a value one refuses the other refuses too (the config table's
    rules and cross-rules are the settings' own)."""
    base = dict(shipped_defaults("ForwardOFA"), model="ForwardOFA")
    checks.check_keys(base)  # the shipped values pass
    field = key[len("search_"):]
    for value in checks.MODEL_CHECKS["ForwardOFA"][key].bad + EDGES:
        try:
            SearchSettings(**{field: value})
            settings_refuse = False
        except ValueError:
            settings_refuse = True
        try:
            checks.check_keys(dict(base, **{key: value}))
            config_refuses = False
        except ValueError:
            config_refuses = True
        assert settings_refuse == config_refuses, (key, value)


def test_tqdm_progress_bar_runs(capsys):
    space = elastic()
    search(space, PlantedEstimator(), budgets_between(space, 2), "bottom_up", SMALL,
           progress=True)
    assert "subnet search" in capsys.readouterr().err


def test_registry_lists_every_strategy():
    assert set(STRATEGIES) == {"independent", "bottom_up", "top_down", "exhaustive", "pareto"}
