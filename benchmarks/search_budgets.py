"""Subnet search for k device budgets on the bundled ml-100k: strategies, spaces, predictor.

Usage: python benchmarks/search_budgets.py [--checkpoint PATH] [--supernet_epochs 2]
       [--epochs 2] [--ks 1,2,3,4,5,10] [--repeats 3] [--generations 10] [--eval_users 200]
       [--key=value ...]

Trains ForwardOFA with the elastic space on properties/main.yaml's settings (or loads
``--checkpoint``), then for every k runs each strategy ``--repeats`` times with a fresh estimator
(no evaluation shared between runs) on k budgets spread evenly between the cheapest sub-network
and the full encoder. Fitness is valid NDCG@10 on a fixed subsample of ``--eval_users`` users;
the returned sub-networks are then scored on the full valid and test splits. Prints: search
seconds (median of the repeats) and their ratios to independent and to the strategy's own k = 1;
evaluations; the worst per-budget gap of full-valid NDCG@10 to independent; compound vs elastic;
the predictor's rank correlation; the peak memory of a search; and, at every budget of the
largest k, the searched sub-network beside the per-user controller at that budget.
"""

import argparse
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from recbole_fofa import get_trainer
from recbole_fofa.quick_start import load_data_and_model, prepare
from recbole_fofa.search import CompoundSpace, SearchSettings, build_space, search
from recbole_fofa.search.estimator import SubnetEstimator
from recbole_fofa.table import format_table

MAIN = str(Path(__file__).resolve().parent.parent / "properties" / "main.yaml")
STRATEGIES = ("independent", "bottom_up", "top_down", "pareto")
METRIC = "ndcg@10"


def trained(args, overrides):
    """(config, model, trainer, valid, test) of a trained elastic ForwardOFA."""
    if args.checkpoint:
        config, model, _, _, valid, test = load_data_and_model(args.checkpoint)
        return config, model, get_trainer(config["MODEL_TYPE"], "ForwardOFA")(config, model), \
            valid, test
    settings = {"search_space": "elastic", "supernet_epochs": args.supernet_epochs,
                "epochs": args.epochs, "state": "INFO", "metrics": ["NDCG", "Hit", "MACs"],
                **overrides}
    config, model, (train, valid, test) = prepare("ForwardOFA", "ml-100k", [MAIN], settings)
    trainer = get_trainer(config["MODEL_TYPE"], "ForwardOFA")(config, model)
    start = time.perf_counter()
    trainer.fit(train, valid, saved=True, show_progress=False)
    trainer.evaluate(test, load_best_model=True)  # reloads the best checkpoint
    print(f"trained in {time.perf_counter() - start:.0f} s: {trainer.saved_model_file}")
    return config, model, trainer, valid, test


def spread(space, k):
    """k budgets (MACs) evenly inside (cheapest sub-network, full encoder]."""
    low, high = float(space.min_cost()), float(space.max_cost())
    return [low + (high - low) * (i + 1) / (k + 1) for i in range(k)]


class FullScore:
    """Full-split NDCG@10 of sub-networks, cached (scores the answers, not timed)."""

    def __init__(self, trainer, data):
        self.estimator = SubnetEstimator(trainer, data, "NDCG@10")

    def __call__(self, configs):
        return self.estimator.evaluate(configs)


def run_search(trainer, valid, space, budgets, strategy, settings, seed, eval_users):
    estimator = SubnetEstimator(trainer, valid, "NDCG@10", eval_users, seed=0)
    start = time.perf_counter()
    result = search(space, estimator, budgets, strategy, settings, seed=seed)
    return result, time.perf_counter() - start, estimator.evaluations


def table(header, rows):
    print(format_table(rows, list(header), style="markdown"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--supernet_epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--ks", default="1,2,3,4,5,10")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--generations", type=int, default=10)
    parser.add_argument("--eval_users", type=int, default=200)
    args, extra = parser.parse_known_args()
    overrides = dict(item[2:].split("=", 1) for item in extra if item.startswith("--"))
    sys.argv = sys.argv[:1]  # RecBole's Config would read our flags as config keys
    config, model, trainer, valid, test = trained(args, overrides)
    model.eval()
    elastic = build_space(config, model.shape)
    compound = build_space(dict(config.final_config_dict, search_space="compound"), model.shape)
    assert isinstance(compound, CompoundSpace)
    settings = SearchSettings(generations=args.generations)
    full_valid, full_test = FullScore(trainer, valid), FullScore(trainer, test)
    ks = [int(k) for k in args.ks.split(",")]
    print(f"\nelastic space: {elastic.size():,} sub-networks; compound: {compound.size():,}; "
          f"generations {settings.generations}, warm {settings.warm}; fitness: valid NDCG@10 "
          f"on {args.eval_users} users; median of {args.repeats} runs")

    times, evals, answers = {}, {}, {}
    for k in ks:
        budgets = spread(elastic, k)
        for strategy in STRATEGIES:
            runs = [run_search(trainer, valid, elastic, budgets, strategy, settings, seed,
                               args.eval_users) for seed in range(args.repeats)]
            times[k, strategy] = statistics.median(t for _, t, _ in runs)
            evals[k, strategy] = statistics.median(e for _, _, e in runs)
            # full-valid NDCG@10 of each budget's answer, median over the repeats
            scores = np.array([full_valid([b.config for b in r.budgets]) for r, _, _ in runs])
            answers[k, strategy] = (np.median(scores, axis=0), runs[0][0])
            print(f"k={k:>2} {strategy:<11} {times[k, strategy]:7.1f} s  "
                  f"{evals[k, strategy]:6.0f} evaluations", flush=True)

    rows = []
    for k in ks:
        for strategy in STRATEGIES:
            gap = answers[k, strategy][0] - answers[k, "independent"][0]
            rows.append([k, strategy, f"{times[k, strategy]:.1f}",
                         f"{times[k, strategy] / times[k, 'independent']:.2f}",
                         f"{times[k, strategy] / times[ks[0], strategy]:.2f}",
                         f"{evals[k, strategy]:.0f}", f"{gap.min():+.4f}",
                         f"{answers[k, strategy][0].mean():.4f}"])
    print("\nstrategies on the elastic space (valid NDCG@10 on the full valid split)")
    table(["k", "strategy", "search s", "x independent", f"x own k={ks[0]}", "evaluations",
           "worst gap to independent", "mean NDCG@10"], rows)

    k = ks[-1]
    budgets = spread(elastic, k)
    rows = []
    for name, space, strategy in (("elastic", elastic, "top_down"),
                                  ("compound", compound, "top_down"),
                                  ("compound", compound, "exhaustive")):
        if strategy == "exhaustive" and space.size() > settings.exhaustive_limit:
            continue
        tracemalloc.start()
        result, seconds, n = run_search(trainer, valid, space, budgets, strategy, settings, 0,
                                        args.eval_users)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        scores = full_valid([b.config for b in result.budgets])
        rows.append([name, strategy, f"{seconds:.1f}", n, f"{scores.mean():.4f}",
                     " ".join(f"{s:.4f}" for s in scores), f"{peak / 2**20:.1f}"])
    print(f"\ncompound vs elastic at k={k} (full-valid NDCG@10 per budget; Python heap peak)")
    table(["space", "strategy", "search s", "evaluations", "mean NDCG@10", "per budget",
           "peak MiB"], rows)

    estimator = SubnetEstimator(trainer, valid, "NDCG@10", args.eval_users, seed=0)
    report = estimator.fit_predictor(elastic, 100, 0.8, rng=np.random.default_rng(0))
    print(f"\naccuracy predictor on {report.train} + {report.held_out} configs: held-out "
          f"Spearman {report.spearman:.3f}, Kendall {report.kendall:.3f}")

    result = answers[k, "top_down"][1]
    rows = []
    for entry in result.budgets:
        searched = (full_valid([entry.config])[0], full_test([entry.config])[0])
        row = [f"{entry.budget_fraction:.3f}", f"{entry.budget_macs:,.0f}", entry.config.key,
               f"{entry.macs:,}", f"{searched[0]:.4f}", f"{searched[1]:.4f}"]
        if entry.budget_macs >= model.controller_min_macs:
            with model.budget(entry.budget_macs):
                valid_result = trainer.evaluate(valid, load_best_model=False)
                test_result = trainer.evaluate(test, load_best_model=False)
            row += [f"{valid_result[METRIC]:.4f}", f"{test_result[METRIC]:.4f}",
                    f"{valid_result.get('macs', float('nan')):,.0f}"]
        else:
            row += ["below one block"] * 3
        rows.append(row)
    print(f"\nsearched sub-network (top_down) vs the per-user controller, k={k}")
    table(["budget", "budget MACs", "sub-network", "MACs", "valid NDCG@10", "test NDCG@10",
           "controller valid", "controller test", "controller MACs"], rows)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nprocess peak RSS {peak_rss:.0f} MiB")


if __name__ == "__main__":
    main()
