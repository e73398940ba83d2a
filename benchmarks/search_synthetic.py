"""Search strategies on a synthetic quality: evaluations, seconds and quality for k budgets.

Usage: python benchmarks/search_synthetic.py [--ks 1 2 5 10] [--seeds 3] [--generations 20]

Columns: median estimator evaluations and search seconds over the seeds (and their ratios to
independent and to the same strategy at k = 1); min/mean dq: the per-budget quality minus
independent's (mean over seeds; min over budgets); max regret: the largest gap to the true
optimum of a budget over seeds and budgets; dup evals: keys evaluated twice (must be 0).

The estimator is a planted function of the sub-network (weighted kept capacity with diminishing
returns plus a per-block preference), so an evaluation costs microseconds: the table reports
the number of estimator evaluations (what dominates a real search, where each one is a RecBole
evaluation of the valid split) and the search's own wall time (median over seeds). Quality is
compared with ``independent`` (OFA's per-budget search) and with the true optimum of each budget,
found by scoring all 531,440 sub-networks of the 6-block elastic space (vectorised).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from collections import Counter

import numpy as np

from recbole_fofa.search import ElasticSpace, SearchSettings, search
from recbole_fofa.subnet import SupernetShape
from recbole_fofa.table import format_table

STRATEGIES = ("independent", "bottom_up", "top_down", "pareto")


class SyntheticEstimator:
    """quality = 1 - exp(-c) + 0.03 * [block 0 kept], c = sum over kept blocks of
    pref_l * (width/inner)^0.6 * (0.6 + 0.4 * heads/n_heads) / 2; pref_l planted per block."""

    def __init__(self, shape: SupernetShape, seed: int = 0):
        rng = np.random.default_rng(1000 + seed)
        self.shape = shape
        self.pref = rng.uniform(0.4, 1.6, shape.n_blocks)
        self.calls: Counter = Counter()
        self.evaluations = 0
        self.batches = 0

    def quality_arrays(self, widths: np.ndarray, heads: np.ndarray) -> np.ndarray:
        w = widths / self.shape.inner_size
        h = heads / self.shape.n_heads
        kept = widths > 0
        capacity = (self.pref * np.where(kept, w**0.6 * (0.6 + 0.4 * h), 0.0)).sum(axis=1) / 2
        return 1 - np.exp(-capacity) + 0.03 * kept[:, 0]

    def evaluate(self, configs):
        self.batches += 1
        for config in configs:
            self.calls[config.key] += 1
        self.evaluations += len(configs)
        _, widths, heads = self.shape.arrays(configs)
        return self.quality_arrays(widths, heads)


class Optimum:
    """The best quality per budget over every sub-network of the space (vectorised)."""

    def __init__(self, space: ElasticSpace):
        from recbole_fofa import cost

        options_w = np.array([0] + [w for w in space.width_values for _ in space.head_values])
        options_h = np.array([0] + [h for _ in space.width_values for h in space.head_values])
        genes = np.array(list(itertools.product(range(space.n_options),
                                                repeat=space.n_blocks))[1:])
        self.widths, self.heads = options_w[genes], options_h[genes]
        self.macs = cost.forward_ofa_cost(space.shape, self.widths > 0, self.widths,
                                          self.heads).encoder_macs
        self._quality = {}

    def __call__(self, estimator: SyntheticEstimator, seed: int, budgets):
        if seed not in self._quality:
            self._quality[seed] = estimator.quality_arrays(self.widths, self.heads)
        quality = self._quality[seed]
        return [float(quality[self.macs <= b].max()) for b in budgets]


def spread(space, k):
    """k budgets evenly between the cheapest sub-network and the full encoder (exclusive)."""
    low, high = space.min_cost(), space.shape.full_macs()
    return [low + (high - low) * (i + 1) / (k + 1) for i in range(k)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    args = parser.parse_args()

    shape = SupernetShape(seq_len=20, hidden_size=64, inner_size=256, n_heads=2, n_blocks=6)
    space = ElasticSpace(shape, (0.25, 0.5, 0.75, 1.0), (1, 2))
    settings = SearchSettings(generations=args.generations)
    print(f"elastic space: {space.size():,} sub-networks, 6 blocks; OFA settings, "
          f"{settings.generations} generations, {settings.warm} warm; {args.seeds} seeds")
    columns = ["k", "strategy", "evals", "x indep", "x own k=1", "seconds", "s x indep",
               "s x own k=1", "min dq", "mean dq", "max regret", "dup evals"]
    table = []
    optimum = Optimum(space)
    own_k1 = {}
    for k in args.ks:
        budgets = spread(space, k)
        rows = {}
        for name in args.strategies:
            evals, secs, quality, regret, dups = [], [], [], [], 0
            for seed in range(args.seeds):
                est = SyntheticEstimator(shape, seed)
                result = search(space, est, budgets, name, settings, seed=seed)
                assert all(b.macs <= b.budget_macs for b in result.budgets)
                evals.append(est.evaluations)
                secs.append(result.seconds)
                quality.append([b.valid_score for b in result.budgets])
                best = optimum(est, seed, budgets)
                regret.append(max(o - q for o, q in zip(best, quality[-1])))
                dups += sum(c > 1 for c in est.calls.values())
            rows[name] = (statistics.median(evals), statistics.median(secs),
                          np.mean(quality, axis=0), max(regret), dups)
            if k == 1:
                own_k1[name] = (statistics.median(evals), statistics.median(secs))
        base = rows.get("independent")
        for name, (ev, sec, q, reg, dups) in rows.items():
            dq = q - base[2] if base else np.zeros_like(q)
            k1 = own_k1.get(name, (float("nan"), float("nan")))
            table.append([k, name, int(ev), ev / base[0] if base else 1.0, ev / k1[0], sec,
                          sec / base[1] if base else 1.0, sec / k1[1], float(dq.min()),
                          float(dq.mean()), reg, dups])
    print(format_table(table, columns))

if __name__ == "__main__":
    main()
