"""The sparsity sweep (the paper's figure 5): test quality and on-device cost of ForwardOFA against
the weight lambda (``sparsity_weight``) of its sparsity constraint.

Per seed the supernet is trained once; stage 2 (controller and mapper) is then trained from it
for each lambda, so the curves differ only in what lambda changes.
"""

from __future__ import annotations

import math

from recbole_fofa import experiment, plots
from recbole_fofa.analysis import AnalysisResult
from recbole_fofa.analysis._common import (
    MODEL,
    check_values,
    error_bars,
    fmt,
    mean_std,
    progress_bar,
    require_metrics,
    require_stage2,
    resolve_config,
    resolve_seeds,
    run_config,
)
from recbole_fofa.model import Stage

__all__ = ["run_sparsity", "METRICS"]

NAME = "sparsity"
#: (metric key, label) of each reported value, as RecBole's evaluation names them
METRICS = (("ndcg@10", "NDCG@10"), ("hit@10", "Hit@10"), ("macs", "MACs"),
           ("params", "Params"), ("blocks", "Blocks"))


def run_sparsity(dataset, config_file_list=None, config_dict=None, output_dir="fofa-output",
                 seeds=None, progress=True, weights=(0.0, 0.03, 0.1, 0.3, 1.0)) -> AnalysisResult:
    """Test NDCG@10, Hit@10, MACs, Params and Blocks of ForwardOFA for each ``sparsity_weight``
    in ``weights`` (mean and std over ``seeds``; None: the config's seed), one supernet per seed.

    Writes ``<output_dir>/sparsity.png`` (four panels against lambda), ``sparsity.md`` and
    ``sparsity.csv``; returns the :class:`AnalysisResult` (one row per weight, ascending).
    """
    weights = sorted(check_values("weights", weights, key="sparsity_weight"))
    config = resolve_config(dataset, config_file_list, config_dict)
    require_metrics(config, ["NDCG", "Hit", "MACs", "Params", "Blocks"])
    require_stage2(config)
    seeds = resolve_seeds(config, seeds)

    results = {w: [] for w in weights}  # weight -> one test result per seed
    full_macs = None
    with progress_bar(len(seeds) * len(weights), "sparsity sweep", progress) as bar:
        for seed in seeds:
            supernet, seconds = None, None
            for weight in weights:
                trained = experiment.train(
                    MODEL, dataset, config_file_list,
                    run_config(config_dict, seed, sparsity_weight=weight),
                    supernet=supernet, supernet_seconds=seconds,
                )
                if supernet is None:  # the first weight trained the seed's supernet
                    supernet = trained.supernet
                    seconds = trained.epoch_seconds.get(Stage.SUPERNET.value)
                full_macs = float(trained.model.block_costs.sum())
                results[weight].append(trained.evaluate(trained.test_data)[0])
                bar.update(1)

    rows = []
    for weight in weights:
        row = {"sparsity_weight": weight}
        for key, _ in METRICS:
            row[key], row[f"{key}_std"] = mean_std(r[key] for r in results[weight])
        row["macs_fraction"] = row["macs"] / full_macs
        rows.append(row)
    columns = ["sparsity_weight"]
    for key, _ in METRICS:
        columns += [key, f"{key}_std"]
    columns.append("macs_fraction")

    result = AnalysisResult(
        NAME, rows, columns, _findings(rows, config["n_blocks"]),
        settings={"dataset": dataset, "model": MODEL, "seeds": seeds, "weights": weights,
                  "n_blocks": config["n_blocks"], "supernet_epochs": config["supernet_epochs"],
                  "epochs (stage 2)": config["epochs"], "full encoder MACs": full_macs,
                  "split": "test", "supernet": "trained once per seed (with the first weight); "
                  "stage 2 retrained from it for every weight"},
    )
    png = _plot(rows, f"{output_dir}/{NAME}.png", dataset)
    return result.save(output_dir, png)


def _plot(rows, path, dataset):
    first, last = rows[0], rows[-1]
    headline = "; ".join(
        f"{label} {first[key]:.4g} -> {last[key]:.4g}" for key, label in METRICS[:4]
        if isinstance(first.get(key), (int, float)) and isinstance(last.get(key), (int, float)))
    fig, axes = plots.figure(4, width=4.2, height=3.4, title=(
        f"ForwardOFA on {dataset}: sparsity weight lambda {first['sparsity_weight']:g} -> "
        f"{last['sparsity_weight']:g}: {headline}"))
    x = [row["sparsity_weight"] for row in rows]
    for ax, (key, label) in zip(axes, METRICS[:4]):
        errors = error_bars(row[f"{key}_std"] for row in rows)
        series = {label: ([row[key] for row in rows], errors)}
        plots.lines(ax, x, series, xlabel="lambda (sparsity_weight)", ylabel=f"test {label}",
                    log_x=_wide(x))
    return plots.save(fig, path)


def _wide(x):
    """A (sym)log lambda axis when the positive weights span more than a factor of 20."""
    positive = [v for v in x if v > 0]
    return len(positive) > 1 and max(positive) / min(positive) > 20


def _findings(rows, n_blocks):
    """Where MACs fall along lambda and what that costs in NDCG@10, in numbers."""
    first, last = rows[0], rows[-1]
    findings = []
    if len(rows) == 1:
        return [f"lambda = {first['sparsity_weight']:g}: NDCG@10 {fmt(first['ndcg@10'])}, "
                f"{first['blocks']:.2f} of {n_blocks} blocks, MACs {first['macs']:,.0f}"]
    change = (last["macs"] - first["macs"]) / first["macs"] if first["macs"] else math.nan
    findings.append(
        f"From lambda = {first['sparsity_weight']:g} to {last['sparsity_weight']:g}, MACs per "
        f"user go from {first['macs']:,.0f} to {last['macs']:,.0f} ({change:+.1%}), kept blocks "
        f"from {first['blocks']:.2f} to {last['blocks']:.2f} of {n_blocks}, and NDCG@10 from "
        f"{fmt(first['ndcg@10'])} to {fmt(last['ndcg@10'])} "
        f"({last['ndcg@10'] - first['ndcg@10']:+.4f})."
    )
    drops = [(a, b) for a, b in zip(rows, rows[1:]) if b["macs"] < a["macs"]]
    if not drops:
        findings.append("MACs do not fall anywhere along the sweep: the sparsity constraint did "
                        "not remove blocks at these weights.")
    else:
        a, b = max(drops, key=lambda pair: pair[0]["macs"] - pair[1]["macs"])
        findings.append(
            f"The largest MACs drop is between lambda = {a['sparsity_weight']:g} and "
            f"{b['sparsity_weight']:g}: {a['macs']:,.0f} -> {b['macs']:,.0f} "
            f"({(b['macs'] - a['macs']) / a['macs']:+.1%}), NDCG@10 {fmt(a['ndcg@10'])} -> "
            f"{fmt(b['ndcg@10'])} ({b['ndcg@10'] - a['ndcg@10']:+.4f})."
        )
    rises = [(a["sparsity_weight"], b["sparsity_weight"]) for a, b in zip(rows, rows[1:])
             if b["macs"] > a["macs"]]
    if rises:
        findings.append("MACs are not monotone in lambda: they rise between "
                        + ", ".join(f"{a:g} and {b:g}" for a, b in rises) + ".")
    best = max(rows, key=lambda row: row["ndcg@10"])
    findings.append(f"The best NDCG@10 ({fmt(best['ndcg@10'])}) is at lambda = "
                    f"{best['sparsity_weight']:g}, with {best['macs']:,.0f} MACs "
                    f"({best['macs_fraction']:.1%} of the full encoder).")
    return findings
