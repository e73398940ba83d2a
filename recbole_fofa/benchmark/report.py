"""The benchmark's report: per-model means and deviations over seeds, paired comparisons with a
reference model, a markdown table, CSVs of every run and of the comparisons, and a PNG of NDCG@10
against MACs."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from recbole_fofa import plots
from recbole_fofa.benchmark import stats, tuning
from recbole_fofa.table import format_table
from recbole_fofa.trainer.progress import write_atomically

__all__ = ["BenchmarkReport", "COST", "ORACLE", "PRIMARY", "QUALITY", "SEARCHED",
           "comparison_text"]

#: the quality columns of the summary (RecBole's lower-case result keys)
QUALITY = ["ndcg@5", "ndcg@10", "ndcg@20", "hit@5", "hit@10", "hit@20", "mrr@10"]
#: the cost columns (per user, on the device)
COST = ["macs", "params", "blocks"]
_TIMES = ["train_s_per_epoch", "eval_s_per_1k_users"]
#: the metric whose comparison with the reference the printed table shows
PRIMARY = "ndcg@10"
#: label suffixes of a routed model's derived records: its best fixed sub-network at its own
#: MACs and the per-user routing oracle (``"<label> search@own"``, ``"<label> oracle"``)
SEARCHED, ORACLE = "search@own", "oracle"


def _stats(values):
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _pm(mean, std, digits=4):
    if math.isnan(mean):
        return "-"
    if abs(mean) >= 1e4:
        return f"{mean:,.0f}" + (f" ± {std:,.0f}" if std else "")
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _whole(value):
    return None if math.isnan(value) else int(round(value))


class BenchmarkReport:
    """Run records (one per model and seed) and what they add up to."""

    def __init__(self, records: List[Dict[str, Any]], settings: Dict[str, Any]):
        self.records = records
        self.settings = settings
        self.files: Dict[str, str] = {}
        self._comparisons = None

    @property
    def reference(self):
        """The label every model is compared with (``settings["reference"]``), or None when it
        has no finished run here."""
        reference = self.settings.get("reference")
        finished = {r["label"] for r in self.records if r["status"] == "ok"}
        return reference if reference in finished else None

    def routing_records(self) -> List[Dict[str, Any]]:
        """Run-like records of what the ForwardOFA runs' ``routing`` scored (benchmark
        ``routing=True``): ``<label> search@own`` (the best fixed sub-network at its MACs) and
        ``<label> oracle`` (each user's best sub-network on valid), per seed."""
        derived = []
        for record in self.records:
            routing = record.get("routing") if record["status"] == "ok" else None
            if not routing:
                continue
            searched, oracle = routing["searched_at_own_macs"], routing["oracle"]
            for suffix, test, per_user in (
                    (SEARCHED, searched["test"], searched["per_user"]),
                    (ORACLE, {**oracle["test"], "macs": oracle["macs"]}, oracle["per_user"])):
                derived.append({"label": f"{record['label']} {suffix}", "seed": record["seed"],
                                "status": "ok", "test": test, "per_user": per_user})
        return derived

    def comparisons(self) -> List[Dict[str, Any]]:
        """Paired comparisons (:func:`recbole_fofa.benchmark.stats.compare`) for every quality
        metric: each model and routing record with :attr:`reference`, and, for each model whose
        runs scored routing, the model against its best fixed sub-network at the same MACs and
        the routing oracle against the model. Empty without a reference."""
        if self._comparisons is None:
            self._comparisons = []
            if self.reference is not None:
                routing = self.routing_records()
                self._comparisons = stats.compare(self.records + routing, self.reference,
                                                  QUALITY)
                routed = dict.fromkeys(r["label"] for r in self.records if r.get("routing"))
                for label in routed:
                    for model, reference in ((label, f"{label} {SEARCHED}"),
                                             (f"{label} {ORACLE}", label)):
                        if reference == self.reference:
                            continue  # compared above with every model
                        pair = [r for r in self.records + routing
                                if r["label"] in (model, reference)]
                        self._comparisons += stats.compare(pair, reference, QUALITY)
        return self._comparisons

    def _primary_comparisons(self):
        return {row["model"]: row for row in self.comparisons()
                if row["metric"] == PRIMARY and row["reference"] == self.reference}

    # ------------------------------------------------------------------ aggregation
    def labels(self):
        return list(dict.fromkeys(r["label"] for r in self.records))

    def summary(self) -> List[Dict[str, Any]]:
        """One dict per model: ``<key>_mean``/``<key>_std`` over its successful seeds for the
        quality, cost and time columns, the seeds that ran and the errors of those that failed."""
        rows = []
        for label in self.labels():
            runs = [r for r in self.records if r["label"] == label]
            ok = [r for r in runs if r["status"] == "ok"]
            row = {"label": label, "model": runs[0]["model"], "kind": runs[0]["kind"],
                   "seeds_ok": len(ok), "seeds": len(runs),
                   "errors": sorted({r["error"] for r in runs if r["status"] != "ok"})}
            for key in QUALITY + COST:
                row[f"{key}_mean"], row[f"{key}_std"] = _stats(
                    [r["test"].get(key) for r in ok if key in r["test"]])
            for key in _TIMES:
                row[f"{key}_mean"], row[f"{key}_std"] = _stats([r.get(key) for r in ok])
            rows.append(row)
        return rows

    def search_points(self) -> List[Dict[str, Any]]:
        """Per budget, over seeds: the searched sub-network's and the controller's test NDCG@10
        and MACs (means and deviations)."""
        by_budget: Dict[str, List[Dict[str, Any]]] = {}
        for record in self.records:
            for entry in record.get("search") or []:
                by_budget.setdefault(str(entry["budget"]), []).append(entry)
        points = []
        for budget, entries in by_budget.items():
            for kind, key in (("searched", "test"), ("controller", "controller_test")):
                results = [e[key] for e in entries if e.get(key)]
                if not results:
                    continue
                ndcg, ndcg_std = _stats([r.get("ndcg@10") for r in results])
                macs, macs_std = _stats([r.get("macs") for r in results])
                points.append({"budget": budget, "kind": kind, "ndcg@10_mean": ndcg,
                               "ndcg@10_std": ndcg_std, "macs_mean": macs, "macs_std": macs_std,
                               "seeds": len(results),
                               "configs": sorted({e["config"] for e in entries})
                               if kind == "searched" else []})
        return points

    # ------------------------------------------------------------------ tables
    def table(self, style: str = "text") -> str:
        """Mean ± standard deviation over seeds per model; seconds are per training epoch and
        per 1,000 evaluated users; with a reference, each model's paired NDCG@10 difference from
        it with the 95% interval over seeds, the verdict and the minimum detectable difference."""
        columns = ["model", "seeds", "NDCG@10", "NDCG@5", "NDCG@20", "Hit@10", "Hit@5",
                   "Hit@20", "MRR@10", "MACs", "Params", "Blocks", "train s/epoch",
                   "eval s/1k users"]
        compared = self._primary_comparisons()
        if self.reference is not None:
            columns += [f"NDCG@10 - {self.reference} [95% CI]", "verdict", "MDE"]
        rows = []
        for row in self.summary():
            cells = [row["label"], f"{row['seeds_ok']}/{row['seeds']}"]
            for key in ["ndcg@10", "ndcg@5", "ndcg@20", "hit@10", "hit@5", "hit@20", "mrr@10"]:
                cells.append(_pm(row[f"{key}_mean"], row[f"{key}_std"]))
            cells += [_whole(row["macs_mean"]), _whole(row["params_mean"]),
                      None if math.isnan(row["blocks_mean"]) else f"{row['blocks_mean']:.2f}",
                      _pm(row["train_s_per_epoch_mean"], row["train_s_per_epoch_std"], 1),
                      _pm(row["eval_s_per_1k_users_mean"], row["eval_s_per_1k_users_std"], 3)]
            if self.reference is not None:
                cells += _comparison_cells(compared.get(row["label"]), row["label"] ==
                                           self.reference)
            rows.append(cells)
        return format_table(rows, columns, style=style)

    def comparison_table(self, style: str = "text") -> str:
        rows = [[c["model"], c["metric"], c["n_seeds"], _signed(c["mean_diff"]),
                 _interval(c["ci_low"], c["ci_high"]), _p(c["p_value"]), c["verdict"],
                 _signed(c["mde"]).lstrip("+"), _count(c["seeds_needed"]),
                 _ratio(c["macs_ratio"]), c["users_significant"]]
                for c in self.comparisons()]
        return format_table(rows, ["model", "metric", "seeds", "mean diff", "95% CI", "p",
                                   "verdict", "MDE", f"seeds for MDE {stats.TARGET_MDE}",
                                   "MACs ratio", "users p<0.05"], style=style)

    def search_table(self, style: str = "text") -> str:
        rows = [[p["budget"], p["kind"], _pm(p["ndcg@10_mean"], p["ndcg@10_std"]),
                 _whole(p["macs_mean"]), p["seeds"], " ".join(p["configs"])]
                for p in self.search_points()]
        return format_table(rows, ["budget", "ForwardOFA", "test NDCG@10", "MACs", "seeds",
                                   "searched configs"], style=style)

    def tuning_table(self, style: str = "text") -> str:
        """Every model's grid points: mean valid score over the tuning seeds, the chosen one."""
        rows = tuning.tuning_rows(self.settings.get("tuning") or {})
        if not rows:
            return ""
        columns = list(rows[0])
        cells = [[f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else
                  ("-" if isinstance(v, float) else v) for v in row.values()] for row in rows]
        return format_table(cells, columns, style=style)

    def errors(self) -> List[str]:
        """A line per failed run, and per search that failed after its run trained."""
        lines = []
        for r in self.records:
            if r["status"] != "ok":
                lines.append(f"{r['label']} seed {r['seed']}: {r['error']}")
            if r.get("search_error"):
                lines.append(f"{r['label']} seed {r['seed']} search: {r['search_error']}")
        return lines

    def csv_rows(self) -> List[Dict[str, Any]]:
        """One flat dict per (model, seed)."""
        rows = []
        for r in self.records:
            row = {"label": r["label"], "model": r["model"], "kind": r["kind"],
                   "seed": r["seed"], "status": r["status"], "error": r["error"]}
            for key in QUALITY + COST:
                row[key] = (r.get("test") or {}).get(key)
            for key in _TIMES + ["test_users", "wall_s"]:
                row[key] = r.get(key)
            for stage, seconds in (r.get("epoch_seconds") or {}).items():
                row[f"{stage}_s_per_epoch"] = seconds
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ files
    def plot(self, path) -> Path:
        """NDCG@10 against MACs per model (error bars over seeds), the Pareto front, and the
        searched sub-networks and the controller at the search budgets."""
        points = []
        for row in self.summary():
            if row["seeds_ok"] and not math.isnan(row["macs_mean"]):
                points.append({"label": row["label"], "x": row["macs_mean"],
                               "xerr": row["macs_std"], "y": row["ndcg@10_mean"],
                               "yerr": row["ndcg@10_std"], "kind": row["kind"]})
        for p in self.search_points():
            if not math.isnan(p["macs_mean"]):
                tag = "search" if p["kind"] == "searched" else "ctrl"
                points.append({"label": f"{tag}@{p['budget']}", "x": p["macs_mean"],
                               "xerr": p["macs_std"], "y": p["ndcg@10_mean"],
                               "yerr": p["ndcg@10_std"], "kind": p["kind"]})
        seeds = self.settings.get("seeds", [])
        fig, (ax,) = plots.figure(width=7.5, height=5.0, title=(
            f"{self.settings.get('dataset')}: test NDCG@10 vs on-device MACs per user "
            f"(mean ± std over {len(seeds)} seed{'s' if len(seeds) != 1 else ''})"))
        plots.tradeoff(ax, points, log_x=True)
        return plots.save(fig, path)

    def markdown(self) -> str:
        budget = self.settings.get("epoch_budget", {})
        lines = [
            "# Benchmark", "",
            f"- dataset: {self.settings.get('dataset')}; config files: "
            f"{self.settings.get('config_files')}; overrides: {self.settings.get('overrides')}",
            f"- seeds: {self.settings.get('seeds')}; epoch budget: {budget.get('total')} "
            f"(ForwardOFA: {budget.get('supernet_epochs')} supernet + {budget.get('epochs')} "
            "controller/mapper)",
            "- test metrics, mean ± standard deviation over seeds; MACs and Params per user on "
            "the device (FLOPs = 2 x MACs); seconds per training epoch and per 1,000 test users",
            "", self.table("markdown"), "",
        ]
        if self.settings.get("tuning"):
            lines += ["## Tuning", "",
                      f"Grid {self.settings.get('tune')}, each point trained on the tuning "
                      f"seeds {self.settings.get('tuning_seeds')} (never test seeds) and scored "
                      "on valid only; each model's test runs use its chosen point "
                      "(tuning/tuning.json).", "", self.tuning_table("markdown"), ""]
        if self.comparisons():
            lines += [f"## Paired comparisons with {self.reference}", "",
                      "Per metric: the mean of the per-seed differences (model - reference) with "
                      "its 95% t interval over seeds and the paired t test's p; the verdict is "
                      "better/worse only when the interval excludes 0; MDE is the smallest "
                      "difference these seeds detect with 80% power, and the next column how "
                      "many seeds would detect the target difference at the same spread; "
                      "users: per-seed paired "
                      "permutation tests over the same test users significant at 5% "
                      "(comparisons.csv has every column).", "",
                      self.comparison_table("markdown"), ""]
        if self.search_points():
            lines += ["## ForwardOFA at the search budgets", "", self.search_table("markdown"),
                      ""]
        if self.errors():
            lines += ["## Failed runs", "", *[f"- {e}" for e in self.errors()], ""]
        if "png" in self.files:
            lines += [f"![NDCG@10 vs MACs]({Path(self.files['png']).name})", ""]
        return "\n".join(lines)

    def write(self, output_dir) -> BenchmarkReport:
        """``benchmark.png``, ``benchmark.csv``, ``comparisons.csv`` (with a reference) and
        ``benchmark.md`` in ``output_dir``."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        # atomically: benchmarks that share the output write the same files when they end
        path = output_dir / "benchmark.png"
        write_atomically(path, self.plot)
        self.files["png"] = str(path)
        rows = self.csv_rows()
        fields = list(dict.fromkeys(k for row in rows for k in row))

        def write_csv(temporary):
            with open(temporary, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)

        write_atomically(output_dir / "benchmark.csv", write_csv)
        self.files["csv"] = str(output_dir / "benchmark.csv")
        if self.comparisons():
            path = output_dir / "comparisons.csv"
            write_atomically(path, lambda f: stats.write_comparisons(self.comparisons(), f))
            self.files["comparisons"] = str(path)
        write_atomically(output_dir / "benchmark.md", lambda f: Path(f).write_text(
            self.markdown()))
        self.files["md"] = str(output_dir / "benchmark.md")
        return self


def _signed(value, digits=4):
    return "-" if value is None or math.isnan(value) else f"{value:+.{digits}f}"


def _interval(low, high, digits=4):
    if math.isnan(low) or math.isnan(high):
        return "-"
    return f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def _p(value):
    return "-" if math.isnan(value) else f"{value:.3g}"


def _count(value):
    return "-" if isinstance(value, float) and math.isnan(value) else str(value)


def _ratio(value):
    return "-" if math.isnan(value) else f"{value:.2f}x"


def comparison_text(row) -> Dict[str, str]:
    """A comparison row (:func:`~recbole_fofa.benchmark.stats.compare`) as table text: the
    difference with its interval, the MACs ratio and the seeds needed for the target MDE."""
    return {"difference": f"{_signed(row['mean_diff'])} {_interval(row['ci_low'], row['ci_high'])}",
            "macs_ratio": _ratio(row["macs_ratio"]), "seeds_needed": _count(row["seeds_needed"])}


def _comparison_cells(comparison, is_reference):
    """The table's comparison cells of one model: the difference with its interval, the verdict
    and the minimum detectable difference."""
    if is_reference:
        return ["(reference)", "", ""]
    if comparison is None:
        return ["-", "", ""]
    return [comparison_text(comparison)["difference"], comparison["verdict"],
            _signed(comparison["mde"]).lstrip("+")]
