"""Paired statistics of the benchmark (scipy.stats) and RecBole's per-user metric values."""

import csv
import math

import numpy as np
import pytest
import torch
from recbole.evaluator.collector import DataStruct
from scipy import stats as sps

from recbole_fofa.benchmark import stats
from recbole_fofa.evaluator.per_user import PerUserEvaluator


def test_seed_interval_is_the_paired_t_interval():
    model = np.array([0.061, 0.058, 0.066, 0.059, 0.063])
    ref = np.array([0.055, 0.057, 0.060, 0.052, 0.058])
    mean, low, high, p = stats.seed_interval(model - ref)
    d = model - ref
    half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    assert mean == pytest.approx(d.mean())
    assert (low, high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert p == pytest.approx(sps.ttest_rel(model, ref).pvalue)
    assert stats.verdict(low, high) == "better"
    assert stats.verdict(-high, -low) == "worse"


def test_seed_interval_edge_cases():
    assert math.isnan(stats.seed_interval([0.01])[1])
    assert stats.verdict(math.nan, math.nan) == stats.TOO_FEW_SEEDS
    # equal nonzero differences (Hit@k moves in steps of one user): spread unmeasured, no verdict
    mean, low, high, p = stats.seed_interval([-0.0053, -0.0053])
    assert mean == -0.0053 and math.isnan(low) and math.isnan(high) and math.isnan(p)
    assert stats.verdict(low, high) == stats.TOO_FEW_SEEDS
    assert math.isnan(stats.seed_interval([0.3 - 0.2, 0.4 - 0.3])[1])  # equal but for float error
    assert stats.seed_interval([0.0, 0.0, 0.0]) == (0.0, 0.0, 0.0, 1.0)
    assert stats.verdict(-0.001, 0.003) == "no difference"
    with pytest.raises(ValueError, match="no paired seeds"):
        stats.seed_interval([])


def test_minimum_detectable_difference_matches_the_power_formula():
    # sd(d) = 0.011: 10 seeds detect about 0.011, 20 about 0.007 (two-sided 5%, power 0.8)
    assert stats.min_detectable_difference(0.011, 10) == pytest.approx(0.0111, abs=3e-4)
    assert stats.min_detectable_difference(0.011, 20) == pytest.approx(0.0075, abs=3e-4)
    assert stats.min_detectable_difference(0.011, 40) < stats.min_detectable_difference(0.011, 20)
    assert math.isnan(stats.min_detectable_difference(0.011, 1))


def test_seeds_needed_is_the_fewest_seeds_that_reach_the_target():
    for sd in (0.009, 0.011, 0.02):
        n = stats.seeds_needed(sd, 0.005)
        assert stats.min_detectable_difference(sd, n) <= 0.005
        assert stats.min_detectable_difference(sd, n - 1) > 0.005
    # the verdict's 4-epoch spreads (sd 0.009 to 0.011) need about 28 to 40 seeds
    assert 27 <= stats.seeds_needed(0.009) <= 30 and 38 <= stats.seeds_needed(0.011) <= 42
    assert stats.seeds_needed(0.0) == 2
    assert math.isnan(stats.seeds_needed(math.nan))
    assert math.isnan(stats.seeds_needed(1.0, 1e-4))  # beyond MAX_SEEDS
    with pytest.raises(ValueError, match="target must be > 0"):
        stats.seeds_needed(0.01, 0.0)


def test_a_goal_is_met_only_when_the_interval_clears_its_bound_within_the_cost():
    row = {"ci_low": -0.004, "ci_high": 0.006, "macs_ratio": 0.45}
    assert stats.goal_result(row, bound=-0.005, max_macs_ratio=0.5) == "met"
    assert stats.goal_result(row, bound=0.0, max_macs_ratio=0.5) == "not met"
    assert stats.goal_result(row, bound=-0.005, max_macs_ratio=0.4) == "not met"
    assert stats.goal_result(dict(row, macs_ratio=math.nan), -0.005, 0.5) == "not met"
    assert stats.goal_result(dict(row, macs_ratio=math.nan), -0.005) == "met"
    assert stats.goal_result(dict(row, ci_low=math.nan), -0.005) == stats.TOO_FEW_SEEDS


def test_sign_test_counts_seeds_above_the_bound_and_drops_ties():
    # 9 of 10 above 0: scipy's two-sided exact binomial p, 2 * 11 / 1024
    diffs = [0.01] * 9 + [-0.003]
    above, n, p = stats.sign_test(diffs)
    assert (above, n) == (9, 10) and p == pytest.approx(sps.binomtest(9, 10).pvalue)
    assert p == pytest.approx(22 / 1024)
    # against the bound -0.005 every seed is above it; a seed on the bound is dropped
    assert stats.sign_test(diffs, -0.005)[:2] == (10, 10)
    assert stats.sign_test(diffs + [-0.005], -0.005)[:2] == (10, 10)
    assert stats.sign_test([0.0, 0.02, 0.03])[:2] == (2, 2)
    above, n, p = stats.sign_test([0.0, 0.0])
    assert (above, n) == (0, 0) and math.isnan(p)


def test_user_permutation_test_finds_a_planted_shift_and_not_noise():
    rng = np.random.default_rng(0)
    ref = rng.binomial(1, 0.3, size=900).astype(float)
    flipped = ref.copy()
    flipped[rng.choice(np.flatnonzero(ref == 0), 80, replace=False)] = 1.0  # 80 more hits
    assert stats.user_permutation_p(flipped, ref, n_resamples=999) < 0.01
    noise = ref.copy()
    noise[rng.choice(np.flatnonzero(ref == 0), 20, replace=False)] = 1.0  # 20 gains ...
    noise[rng.choice(np.flatnonzero(ref == 1), 20, replace=False)] = 0.0  # ... 20 losses
    assert stats.user_permutation_p(noise, ref, n_resamples=999) > 0.05
    assert stats.user_permutation_p(ref, ref) == 1.0
    with pytest.raises(ValueError, match="same users"):
        stats.user_permutation_p(ref, ref[:-1])


def _record(label, seed, ndcg, per_user=None, macs=100.0):
    record = {"label": label, "seed": seed, "status": "ok",
              "test": {"ndcg@10": ndcg, "macs": macs}}
    if per_user is not None:
        record["per_user"] = {"ndcg@10": list(per_user)}
    return record


def test_compare_pairs_by_seed_and_writes_the_csv(tmp_path):
    rng = np.random.default_rng(1)
    records = []
    for seed in (1, 2, 3, 4):
        ref_users = rng.random(300) * 0.1
        records.append(_record("SASRec-6", seed, ref_users.mean(), ref_users, macs=200.0))
        better = ref_users + 0.02 + rng.normal(0, 0.001, 300)
        records.append(_record("ForwardOFA", seed, better.mean(), better, macs=100.0))
        records.append(_record("Same", seed, ref_users.mean() + rng.normal(0, 0.001)))
    records.append(_record("ForwardOFA", 9, 0.5))  # no reference run for seed 9: not paired
    records.append({"label": "Broken", "seed": 1, "status": "error", "test": None})
    rows = {row["model"]: row for row in stats.compare(records, "SASRec-6", ["ndcg@10"],
                                                       n_resamples=199)}
    assert set(rows) == {"ForwardOFA", "Same"}
    fofa = rows["ForwardOFA"]
    assert fofa["n_seeds"] == 4 and fofa["verdict"] == "better"
    assert fofa["mean_diff"] == pytest.approx(0.02, abs=1e-3)
    assert fofa["ci_low"] > 0 and fofa["macs_ratio"] == pytest.approx(0.5)
    assert fofa["users_significant"] == "4/4"
    per_seed = dict(item.split(":") for item in fofa["seed_diffs"].split(";"))
    assert list(per_seed) == ["1", "2", "3", "4"]
    assert np.mean([float(v) for v in per_seed.values()]) == pytest.approx(fofa["mean_diff"],
                                                                          abs=1e-4)
    assert rows["Same"]["verdict"] == "no difference" and rows["Same"]["user_p_values"] == ""
    # the unrounded per-seed differences ride along for tests over seeds, not into the CSV
    assert fofa["diffs"] == pytest.approx([float(v) for v in per_seed.values()], abs=5e-5)
    assert np.mean(fofa["diffs"]) == pytest.approx(fofa["mean_diff"])
    path = stats.write_comparisons(list(rows.values()), tmp_path / "comparisons.csv")
    with path.open() as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0])[:9] == ["model", "reference", "metric", "n_seeds", "mean_diff",
                                 "ci_low", "ci_high", "p_value", "verdict"]
    assert {r["model"] for r in read} == {"ForwardOFA", "Same"}
    assert "diffs" not in read[0]
    with pytest.raises(ValueError, match="reference model 'SASRec-2'"):
        stats.compare(records, "SASRec-2", ["ndcg@10"])
    # n_resamples=0: the same interval over seeds (wider at a higher confidence), no user tests
    wide = next(row for row in stats.compare(records, "SASRec-6", ["ndcg@10"], confidence=0.99,
                                             n_resamples=0) if row["model"] == "ForwardOFA")
    assert wide["mean_diff"] == fofa["mean_diff"] and wide["ci_low"] < fofa["ci_low"]
    assert wide["user_p_values"] == "" and wide["users_significant"] == ""
    with pytest.raises(ValueError, match="n_resamples must be 0"):
        stats.compare(records, "SASRec-6", ["ndcg@10"], n_resamples=-1)


def test_compare_gives_no_verdict_and_no_power_when_every_seed_differs_equally():
    # Hit@20 one user's step apart on both seeds: a zero-width interval would say "worse"
    records = [_record("SASRec-6", 1, 0.2349), _record("SASRec-6", 2, 0.2400),
               _record("Tiny", 1, 0.2296), _record("Tiny", 2, 0.2347),  # rounded, as stored
               _record("Same", 1, 0.2349), _record("Same", 2, 0.2400)]
    rows = {row["model"]: row for row in stats.compare(records, "SASRec-6", ["ndcg@10"])}
    tiny = rows["Tiny"]
    assert tiny["mean_diff"] == pytest.approx(-0.0053)
    assert tiny["verdict"] == stats.TOO_FEW_SEEDS
    assert math.isnan(tiny["ci_low"]) and math.isnan(tiny["mde"])
    assert math.isnan(tiny["seeds_needed"])
    assert stats.goal_result(tiny, -0.005) == stats.TOO_FEW_SEEDS
    same = rows["Same"]
    assert (same["ci_low"], same["ci_high"], same["verdict"]) == (0.0, 0.0, "no difference")


def test_per_user_values_average_to_recboles_metrics(monkeypatch):
    # RecBole's metrics use np.float, which RecBole's Config re-creates; no Config is built here
    monkeypatch.setattr(np, "float", float, raising=False)
    rng = np.random.default_rng(2)
    users, max_k = 50, 10
    hits = np.zeros((users, max_k), dtype=np.int64)
    rank = rng.integers(0, 2 * max_k, size=users)  # half the users miss the top 10
    hits[np.arange(users)[rank < max_k], rank[rank < max_k]] = 1
    pos_len = np.ones((users, 1), dtype=np.int64)
    struct = DataStruct()
    struct.set("rec.topk", torch.from_numpy(np.concatenate([hits, pos_len], axis=1)))
    config = {"metrics": ["NDCG", "Hit", "MRR"], "topk": [5, 10], "metric_decimal_place": 12}
    evaluator = PerUserEvaluator(config)
    result = evaluator.evaluate(struct)
    assert set(evaluator.per_user) == {f"{m}@{k}" for m in ("ndcg", "hit", "mrr") for k in (5, 10)}
    for key, values in evaluator.per_user.items():
        assert values.shape == (users,)
        assert values.mean() == pytest.approx(result[key], abs=1e-12)
    expected_hit10 = (rank < 10).astype(float)
    np.testing.assert_array_equal(evaluator.per_user["hit@10"], expected_hit10)
    kept = rank < 10
    np.testing.assert_allclose(evaluator.per_user["ndcg@10"][kept], 1 / np.log2(rank[kept] + 2))


def test_report_prints_and_writes_the_comparisons(tmp_path):
    from recbole_fofa.benchmark.report import BenchmarkReport

    rng = np.random.default_rng(3)
    records = []
    for seed in (1, 2, 3):
        ref = rng.random(200) * 0.1
        for label, shift, macs in (("SASRec-6", 0.0, 600.0), ("ForwardOFA", -0.03, 300.0)):
            users = ref + shift + rng.normal(0, 0.002, 200)
            record = _record(label, seed, users.mean(), users, macs)
            record.update(model=label.split("-")[0], kind="model", error=None,
                          train_s_per_epoch=1.0, eval_s_per_1k_users=0.1)
            records.append(record)
    report = BenchmarkReport(records, {"reference": "SASRec-6", "seeds": [1, 2, 3],
                                       "dataset": "planted"})
    table = report.table()
    assert "NDCG@10 - SASRec-6 [95% CI]" in table and "(reference)" in table
    assert "worse" in table
    report.write(tmp_path)
    with (tmp_path / "comparisons.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["metric"] for r in rows] == ["ndcg@10"]  # the records carry one quality metric
    assert rows[0]["verdict"] == "worse" and float(rows[0]["ci_high"]) < 0
    assert "## Paired comparisons with SASRec-6" in (tmp_path / "benchmark.md").read_text()
    # no reference run: the report has no comparisons, and says nothing about them
    plain = BenchmarkReport(records, {"reference": "SASRec-2", "seeds": [1, 2, 3]})
    assert plain.comparisons() == [] and "verdict" not in plain.table()
