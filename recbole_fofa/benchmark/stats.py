"""Paired comparisons of benchmark runs: one model against a reference on the same seeds and users.

The primary number is the mean per-seed difference with its t interval over seeds (it already
contains each run's test-user noise); the secondary one is a paired permutation test over the same
test users within each seed, on the per-user metrics a run stored. Every test comes from
``scipy.stats``. A verdict is "better" or "worse" only when the 95% interval excludes 0.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Sequence

import numpy as np
from scipy import stats

__all__ = ["COMPARISON_COLUMNS", "TARGET_MDE", "compare", "goal_result",
           "min_detectable_difference", "seed_interval", "seeds_needed", "sign_test",
           "user_permutation_p", "verdict", "write_comparisons"]

COMPARISON_COLUMNS = ["model", "reference", "metric", "n_seeds", "mean_diff", "ci_low",
                      "ci_high", "p_value", "verdict", "sd_diff", "mde", "model_mean",
                      "reference_mean", "macs_ratio", "user_p_values", "users_significant",
                      "target_mde", "seeds_needed", "seed_diffs"]
TOO_FEW_SEEDS = "too few seeds"
#: the difference the verdict benchmark must be able to detect (issue 19: 0.005 NDCG@10)
TARGET_MDE = 0.005
#: where :func:`seeds_needed` stops looking
MAX_SEEDS = 10_000
#: per-seed differences closer than this are equal (metrics are stored rounded; their
#: differences agree only up to float error)
SAME_DIFF = 1e-12


def _no_spread(diffs: np.ndarray) -> bool:
    """Whether every seed's difference is the same (up to :data:`SAME_DIFF`): such seeds
    measure no spread, so they give neither an interval nor a power estimate."""
    return bool(np.ptp(diffs) <= SAME_DIFF)


def seed_interval(diffs: Sequence[float], confidence: float = 0.95):
    """``(mean, low, high, p_value)`` of paired per-seed differences: the t interval and the
    two-sided one-sample t test of mean 0 (``scipy.stats.ttest_1samp``, the same as a paired
    ``ttest_rel``). Fewer than 2 seeds give NaN bounds and p, and so do equal nonzero
    differences on every seed: their spread is unmeasured, not 0 (a discrete metric such as
    Hit@k moves in steps of one user, so two seeds can agree exactly), and a zero-width interval
    would call such a pair of seeds significant. Differences that are all 0 (the same scores on
    every seed) give the point interval 0 with p 1."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.size == 0:
        raise ValueError("seed_interval: no paired seeds to compare")
    mean = float(diffs.mean())
    if diffs.size < 2:
        return mean, math.nan, math.nan, math.nan
    if _no_spread(diffs):
        if abs(mean) <= SAME_DIFF:
            return 0.0, 0.0, 0.0, 1.0
        return mean, math.nan, math.nan, math.nan
    result = stats.ttest_1samp(diffs, 0.0)
    low, high = result.confidence_interval(confidence_level=confidence)
    return mean, float(low), float(high), float(result.pvalue)


def min_detectable_difference(sd: float, n_seeds: int, alpha: float = 0.05,
                              power: float = 0.8) -> float:
    """The smallest true mean difference a paired t test over ``n_seeds`` seeds finds with
    probability ``power`` at two-sided level ``alpha``, given the per-seed differences' standard
    deviation ``sd``: ``(t_{1-alpha/2} + t_{power}) * sd / sqrt(n)``, n - 1 degrees of freedom."""
    if n_seeds < 2 or not math.isfinite(sd):
        return math.nan
    df = n_seeds - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd
                 / math.sqrt(n_seeds))


def seeds_needed(sd: float, target: float = TARGET_MDE, alpha: float = 0.05,
                 power: float = 0.8) -> float:
    """The fewest seeds whose :func:`min_detectable_difference` at spread ``sd`` is at most
    ``target``: how many seeds a comparison needs, from the spread a pilot measured. NaN when
    ``sd`` is unknown or more than :data:`MAX_SEEDS` would be needed."""
    if target <= 0:
        raise ValueError(f"seeds_needed: target must be > 0, got {target}")
    if not math.isfinite(sd):
        return math.nan
    n = 2
    if sd > 0:  # the normal approximation is a lower bound for the t-based count
        z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
        n = max(2, math.floor((z * sd / target) ** 2))
    while n <= MAX_SEEDS and min_detectable_difference(sd, n, alpha, power) > target:
        n += 1
    return n if n <= MAX_SEEDS else math.nan


def sign_test(diffs: Sequence[float], bound: float = 0.0):
    """``(above, n, p)``: how many per-seed differences lie above ``bound``, of the ``n`` that
    do not equal it (up to :data:`SAME_DIFF`), and the two-sided exact binomial test of that
    count at one half (``scipy.stats.binomtest``). It assumes nothing of the differences' shape,
    where a t interval assumes them normal (a reference that stalls on some seeds makes them
    bimodal). No difference apart from ``bound`` gives p NaN."""
    diffs = np.asarray(diffs, dtype=np.float64) - bound
    apart = diffs[np.abs(diffs) > SAME_DIFF]
    above = int((apart > 0).sum())
    if apart.size == 0:
        return 0, 0, math.nan
    return above, int(apart.size), float(stats.binomtest(above, apart.size, 0.5).pvalue)


def user_permutation_p(model_values, reference_values, n_resamples: int = 9999,
                       seed: int = 0) -> float:
    """Two-sided p-value of a paired permutation test (random sign flips of the per-user
    differences, ``scipy.stats.permutation_test`` with ``permutation_type="samples"``) that the
    mean per-user difference is 0. Both arrays list the same users in the same order."""
    x = np.asarray(model_values, dtype=np.float64)
    y = np.asarray(reference_values, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"per-user values must be two equal-length 1-D arrays, got {x.shape} "
                         f"and {y.shape}: were both runs tested on the same users?")
    if np.array_equal(x, y):
        return 1.0
    result = stats.permutation_test(
        (x, y), lambda a, b, axis: np.mean(a - b, axis=axis), permutation_type="samples",
        vectorized=True, n_resamples=n_resamples, alternative="two-sided", random_state=seed)
    return float(result.pvalue)


def verdict(low: float, high: float) -> str:
    """"better" / "worse" when the interval lies above / below 0, else "no difference"."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return TOO_FEW_SEEDS
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no difference"


def goal_result(row: Mapping, bound: float, max_macs_ratio: float = math.inf) -> str:
    """Whether a comparison (a row of :func:`compare`) meets a goal fixed before the test runs:
    "met" when its interval's lower end lies above ``bound`` and the model costs at most
    ``max_macs_ratio`` of the reference's MACs, "not met" otherwise, ``TOO_FEW_SEEDS`` when the
    interval is not defined yet."""
    if not (math.isfinite(row["ci_low"]) and math.isfinite(row["ci_high"])):
        return TOO_FEW_SEEDS
    if math.isfinite(max_macs_ratio) and not row["macs_ratio"] <= max_macs_ratio:
        return "not met"  # a NaN ratio (MACs unknown) cannot show the cost half of the goal
    return "met" if row["ci_low"] > bound else "not met"


def _by_label_and_seed(records: Iterable[Mapping]) -> Dict[str, Dict[int, Mapping]]:
    runs: Dict[str, Dict[int, Mapping]] = {}
    for record in records:
        if record.get("status", "ok") == "ok" and record.get("test"):
            runs.setdefault(record["label"], {})[int(record["seed"])] = record
    return runs


def compare(records: Iterable[Mapping], reference: str, metrics: Sequence[str],
            confidence: float = 0.95, n_resamples: int = 9999,
            target_mde: float = TARGET_MDE) -> List[dict]:
    """One row per (model, metric) for every label in ``records`` but ``reference``: the paired
    comparison over the seeds both finished (see :data:`COMPARISON_COLUMNS`).

    A record is a benchmark run file: ``label``, ``seed``, ``test`` (metric -> value) and, when it
    stored them, ``per_user`` (metric -> list of per-user values, same users in every run).
    ``macs_ratio`` is the model's mean MACs over the reference's (when both report ``macs``);
    ``seeds_needed`` is how many seeds would bring the MDE down to ``target_mde`` at this spread.
    ``n_resamples=0`` skips the per-user tests (their columns stay empty) where only the interval
    over seeds is wanted.
    """
    if n_resamples < 0:
        raise ValueError(f"n_resamples must be 0 (no per-user tests) or more, got {n_resamples}")
    runs = _by_label_and_seed(records)
    if reference not in runs:
        raise ValueError(f"reference model {reference!r} has no finished run; finished: "
                         f"{sorted(runs)}")
    ref_runs = runs[reference]
    rows = []
    for label, model_runs in runs.items():
        if label == reference:
            continue
        seeds = sorted(set(model_runs) & set(ref_runs))
        if not seeds:
            continue
        macs_ratio = _ratio([model_runs[s]["test"].get("macs") for s in seeds],
                            [ref_runs[s]["test"].get("macs") for s in seeds])
        for metric in metrics:
            paired = [(model_runs[s]["test"].get(metric), ref_runs[s]["test"].get(metric))
                      for s in seeds]
            if any(m is None or r is None for m, r in paired):
                continue
            model_values = np.array([m for m, _ in paired], dtype=np.float64)
            ref_values = np.array([r for _, r in paired], dtype=np.float64)
            diffs = model_values - ref_values
            mean, low, high, p = seed_interval(diffs, confidence)
            sd = float(diffs.std(ddof=1)) if diffs.size > 1 else math.nan
            power_sd = math.nan if diffs.size < 2 or _no_spread(diffs) else sd
            user_p = [user_permutation_p(model_runs[s]["per_user"][metric],
                                         ref_runs[s]["per_user"][metric], n_resamples, seed=s)
                      for s in seeds if n_resamples
                      and _has_per_user(model_runs[s], ref_runs[s], metric)]
            rows.append({
                "model": label, "reference": reference, "metric": metric,
                "n_seeds": len(seeds), "mean_diff": mean, "ci_low": low, "ci_high": high,
                "p_value": p, "verdict": verdict(low, high), "sd_diff": sd,
                "mde": min_detectable_difference(power_sd, len(seeds), 1 - confidence),
                "model_mean": float(model_values.mean()),
                "reference_mean": float(ref_values.mean()), "macs_ratio": macs_ratio,
                "user_p_values": ";".join(f"{value:.4g}" for value in user_p),
                "users_significant": (f"{sum(v < 1 - confidence for v in user_p)}/{len(user_p)}"
                                      if user_p else ""),
                "target_mde": target_mde,
                "seeds_needed": seeds_needed(power_sd, target_mde, 1 - confidence),
                # each seed's difference: one run that stalls shows here, not only in the spread
                "seed_diffs": ";".join(f"{s}:{d:+.4f}" for s, d in zip(seeds, diffs)),
                # the same unrounded, for tests over seeds (not written to comparisons.csv)
                "diffs": diffs.tolist(),
            })
    return rows


def _has_per_user(model_run, ref_run, metric):
    return (metric in (model_run.get("per_user") or {})
            and metric in (ref_run.get("per_user") or {}))


def _ratio(numerators, denominators):
    if any(v is None for v in (*numerators, *denominators)):
        return math.nan
    bottom = float(np.mean(denominators))
    return float(np.mean(numerators)) / bottom if bottom else math.nan


def write_comparisons(rows: Sequence[Mapping], path) -> Path:
    """Write ``rows`` (from :func:`compare`) as CSV with :data:`COMPARISON_COLUMNS`."""
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COMPARISON_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path
