"""The paper's analyses (sparsity sweep, block selection, gradient conflict) end to end on the tiny
planted data, their statistics on known inputs, and their option errors."""

import csv
import math

import numpy as np
import pytest
import torch
from conftest import TINY_FOFA

from recbole_fofa import cost
from recbole_fofa.analysis._common import (
    eval_cases,
    evaluation_trainer,
    recbole_evaluate,
    structure_stats,
    user_structures,
)
from recbole_fofa.analysis.blocks import (
    behaviour_by_blocks,
    block_correlations,
    run_blocks,
    user_behaviour,
)
from recbole_fofa.analysis.conflict import block_gradients, pair_sets, run_conflict
from recbole_fofa.analysis.sparsity import run_sparsity
from recbole_fofa.quick_start import prepare

N_USERS = 60  # users of the planted dataset (conftest.write_planted_dataset)


@pytest.fixture
def fofa(planted):
    dataset, config = planted
    config.update(TINY_FOFA, supernet_epochs=1, epochs=1,
                  metrics=["NDCG", "Hit", "MACs", "Params", "Blocks"], topk=[10],
                  valid_metric="NDCG@10", train_batch_size=256)
    return dataset, config


def _check_files(result, tmp_path, name, rows):
    png = tmp_path / "out" / f"{name}.png"
    assert result.files["png"] == str(png)
    data = png.read_bytes()
    assert len(data) > 1000 and data.startswith(b"\x89PNG\r\n\x1a\n")
    md = (tmp_path / "out" / f"{name}.md").read_text()
    assert md.startswith(f"# {name}") and f"![{name}]({name}.png)" in md
    with open(tmp_path / "out" / f"{name}.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == rows and list(table[0]) == result.columns
    assert result.findings and all(isinstance(f, str) and f for f in result.findings)


# ----------------------------------------------------------------------------- sparsity
@pytest.mark.slow
def test_sparsity_sweep_rows_by_weight_with_consistent_costs(fofa, tmp_path):
    dataset, config = fofa
    result = run_sparsity(dataset, config_dict=config, output_dir=tmp_path / "out",
                          progress=False, weights=[5.0, 0.0])
    _check_files(result, tmp_path, "sparsity", 2)
    assert [row["sparsity_weight"] for row in result.rows] == [0.0, 5.0]
    assert result.settings["seeds"] == [config["seed"]]
    block = cost.block_macs(8, 16, 32, 2)
    for row in result.rows:
        assert 0 <= row["ndcg@10"] <= row["hit@10"] <= 1
        assert 1 <= row["blocks"] <= 3
        assert row["macs"] == pytest.approx(row["blocks"] * block)
        assert row["macs_fraction"] == pytest.approx(row["blocks"] / 3)
        assert math.isnan(row["ndcg@10_std"])  # one seed: no spread to report
    # a weight of 5 makes every kept block cost more than any ranking gain: fewer blocks kept
    assert result.rows[1]["macs"] < result.rows[0]["macs"]


@pytest.mark.parametrize("options, match", [
    ({"weights": [-1]}, r"weights=\[-1\].*sparsity_weight"),
    ({"weights": []}, "weights"),
    ({"weights": [0.1, 0.1]}, "distinct"),
    ({"seeds": []}, "seeds"),
    ({"config": {"metrics": ["NDCG", "Hit"]}}, r"`metrics`.*\['MACs', 'Params', 'Blocks'\]"),
    ({"config": {"topk": [5]}}, "`topk`"),
    ({"config": {"epochs": 0}}, "`epochs`"),
])
def test_sparsity_bad_options_name_the_option(fofa, tmp_path, options, match):
    dataset, config = fofa
    config.update(options.pop("config", {}))
    with pytest.raises(ValueError, match=match):
        run_sparsity(dataset, config_dict=config, output_dir=tmp_path / "out", progress=False,
                     **options)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- block selection
def test_structure_stats_of_known_masks():
    masks = np.array([[1, 1, 0], [1, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=bool)
    stats = structure_stats(masks)
    assert stats["distinct"] == 3 and stats["top"] == "110" and stats["top_share"] == 0.5
    assert stats["entropy"] == pytest.approx(1.5)  # shares 1/2, 1/4, 1/4
    np.testing.assert_allclose(stats["keep_frequency"], [0.75, 0.75, 0.5])
    np.testing.assert_allclose(stats["users_by_blocks"], [0, 0.25, 0.5, 0.25])
    assert stats["mean_blocks"] == pytest.approx(2.0)
    one = structure_stats(np.ones((5, 3), dtype=bool))
    assert one["entropy"] == 0.0 and math.copysign(1, one["entropy"]) == 1
    assert (one["distinct"], one["top"], one["top_share"]) == (1, "111", 1.0)


def test_block_selection_end_to_end(fofa, tmp_path):
    dataset, config = fofa
    result = run_blocks(dataset, config_dict=config, output_dir=tmp_path / "out", progress=False,
                        thresholds=(0.7, 0.3), variations={"sparsity_weight": [5.0]})
    _check_files(result, tmp_path, "blocks", 4)
    assert [row["setting"] for row in result.rows] == [
        "keep_threshold=0.3", "keep_threshold=0.5", "keep_threshold=0.7", "sparsity_weight=5.0"]
    assert [row["kind"] for row in result.rows] == [
        "post hoc", "trained", "post hoc", "stage 2 retrained"]
    for row in result.rows:
        keep = [row[f"keep_b{b}"] for b in (1, 2, 3)]
        by_blocks = [row[f"users_{k}_blocks"] for k in (1, 2, 3)]
        assert row["users"] == N_USERS
        assert all(0 <= f <= 1 for f in keep + by_blocks)
        assert sum(by_blocks) == pytest.approx(1.0)
        # both count kept blocks: per block over users, and per user over blocks
        assert sum(keep) == pytest.approx(row["mean_blocks"])
        assert sum(k * f for k, f in zip((1, 2, 3), by_blocks)) == pytest.approx(
            row["mean_blocks"])
        assert 1 <= row["distinct"] <= 7 and 0 < row["top_share"] <= 1
        assert len(row["top_structure"]) == 3 and set(row["top_structure"]) <= {"0", "1"}
        assert 0 <= row["entropy"] <= np.log2(7) + 1e-9
        assert (row["entropy"] == 0) == (row["distinct"] == 1)
        assert 0 <= row["ndcg@10"] <= 1
    # a lower threshold never keeps fewer blocks on the same model
    means = [row["mean_blocks"] for row in result.rows[:3]]
    assert means[0] >= means[1] >= means[2]
    base = result.rows[1]
    dominant = any("One structure dominates" in f for f in result.findings)
    assert dominant == (base["top_share"] >= 0.8)
    # the trained setting's test users by number of kept blocks, in the markdown and a CSV
    title, users, columns = result.tables["users"]
    assert [row["blocks"] for row in users] == sorted({row["blocks"] for row in users})
    assert sum(row["share"] for row in users) == pytest.approx(1.0)
    assert sum(row["blocks"] * row["share"] for row in users) == pytest.approx(base["mean_blocks"])
    assert sum(row["users"] for row in users) == N_USERS
    for row in users:
        assert row["seeds"] == 1 and row["history"] == 8  # every planted user: 8 = max length
        assert 0 < row["popularity"] and 0 <= row["ndcg@10"] <= 1
    # the per-user NDCG@10 is RecBole's (rounded to 4 decimals there)
    assert sum(r["share"] * r["ndcg@10"] for r in users) == pytest.approx(base["ndcg@10"],
                                                                          abs=1e-4)
    _, correlations, _ = result.tables["correlation"]
    assert [row["with"] for row in correlations] == ["history", "popularity", "ndcg@10"]
    assert math.isnan(correlations[0]["spearman"])  # a constant history has no rank correlation
    for row in correlations[1:]:
        assert (row["seeds_defined"] == 1) == (len(users) > 1)
        assert math.isnan(row["spearman"]) or -1 <= row["spearman"] <= 1
    md = (tmp_path / "out" / "blocks.md").read_text()
    assert f"## {title}" in md and "## Spearman correlation" in md
    with open(tmp_path / "out" / "blocks_users.csv") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == columns and len(table) == len(users)
    assert result.files["correlation_csv"] == str(tmp_path / "out" / "blocks_correlation.csv")


@pytest.mark.parametrize("options, match", [
    ({"thresholds": [1.5]}, r"thresholds=\[1\.5\].*keep_threshold"),
    ({"variations": {"n_blocks": [2]}}, r"variations key 'n_blocks'.*sparsity_weight"),
    ({"variations": {"rt_len": [0]}}, r"variations\['rt_len'\]"),
    ({"variations": [0.1]}, "variations"),
])
def test_block_selection_bad_options(fofa, tmp_path, options, match):
    dataset, config = fofa
    with pytest.raises(ValueError, match=match):
        run_blocks(dataset, config_dict=config, output_dir=tmp_path / "out", progress=False,
                   **options)


def test_evaluated_users_are_the_same_under_full_sort_and_sampled_evaluation(fofa):
    dataset, config = fofa
    _, model, (_, _, full) = prepare("ForwardOFA", dataset,
                                     config_dict=dict(config, supernet_epochs=0))
    config = dict(config, supernet_epochs=0, eval_args={"mode": "uni10", "order": "TO",
                                                        "split": {"LS": "valid_and_test"}})
    _, _, (_, _, sampled) = prepare("ForwardOFA", dataset, config_dict=config)
    full_cases = [torch.cat(t) for t in zip(*eval_cases(model, full))]
    sampled_cases = [torch.cat(t) for t in zip(*eval_cases(model, sampled))]
    assert len(full_cases[0]) == len(sampled_cases[0]) == N_USERS
    order_full, order_sampled = (torch.argsort(c[2] * 100 + c[0][:, 0]) for c in
                                 (full_cases, sampled_cases))
    for a, b in zip(full_cases, sampled_cases):
        assert torch.equal(a[order_full], b[order_sampled])
    masks = user_structures(model, sampled)
    assert masks.shape == (N_USERS, 3) and masks.any(axis=1).all()


@pytest.fixture
def varied(fofa):
    """(model, train data, test data in batches of 16) of an untrained stage-2 ForwardOFA whose
    controller keeps different blocks for different users; RecBole reports 12 decimals."""
    dataset, config = fofa
    config = dict(config, supernet_epochs=0, eval_batch_size=16, metric_decimal_place=12)
    _, model, (train, _, test) = prepare("ForwardOFA", dataset, config_dict=config)
    torch.manual_seed(0)
    with torch.no_grad():
        model.item_embedding.weight[1:].normal_(std=1.0)
        model.controller.linear.weight.normal_(std=2.0)
        for head in model.mapper.heads:
            head[-1].weight.normal_(std=0.5)
    return model, train, test


def test_user_behaviour_per_user_values_and_recbole_ndcg(varied):
    model, train, test = varied
    behaviour = user_behaviour(model, test, train)
    masks = user_structures(model, test)
    assert set(behaviour) == {"masks", "blocks", "history", "popularity", "ndcg@10"}
    np.testing.assert_array_equal(behaviour["masks"], masks)
    np.testing.assert_array_equal(behaviour["blocks"], masks.sum(axis=1))
    assert len(np.unique(behaviour["blocks"])) > 1
    seqs, lengths, _ = (torch.cat(t) for t in zip(*eval_cases(model, test)))
    np.testing.assert_array_equal(behaviour["history"], lengths.numpy())
    counts = train.dataset.item_counter  # rows per item of the train split
    for user in range(N_USERS):
        recent = seqs[user, :lengths[user]][-model.rt_len:].tolist()
        expected = np.mean([counts.get(item, 0) for item in recent])
        assert behaviour["popularity"][user] == pytest.approx(expected)
    ndcg = behaviour["ndcg@10"]
    hits = ndcg > 0
    ranks = 2 ** (1 / ndcg[hits]) - 1  # 1 / log2(rank + 1) -> rank
    np.testing.assert_allclose(ranks, np.round(ranks), atol=1e-9)
    assert ((ranks >= 1) & (ranks <= 10)).all()
    result = recbole_evaluate(evaluation_trainer(model, test), test)
    assert abs(ndcg.mean() - result["ndcg@10"]) < 1e-6
    assert abs(hits.mean() - result["hit@10"]) < 1e-6
    with pytest.raises(ValueError, match="dataset=.*train split"):
        user_behaviour(model, test, train.dataset.inter_feat)
    with pytest.raises(ValueError, match="active_subnet"), \
            model.active_subnet(model.shape.full()):
        user_behaviour(model, test, train)


def test_behaviour_by_blocks_and_correlations_of_known_values():
    behaviour = {"blocks": np.array([1, 3, 1, 2]), "history": np.array([2, 8, 3, 5]),
                 "popularity": np.array([4.0, 1.0, 2.0, 3.0]),
                 "ndcg@10": np.array([0.0, 1.0, 0.5, 0.5])}
    rows = behaviour_by_blocks(behaviour)
    assert [(r["blocks"], r["users"], r["share"]) for r in rows] == [
        (1, 2, 0.5), (2, 1, 0.25), (3, 1, 0.25)]
    assert [(r["history"], r["popularity"], r["ndcg@10"]) for r in rows] == [
        (2.5, 3.0, 0.25), (5.0, 3.0, 0.5), (8.0, 1.0, 1.0)]
    rho = block_correlations(behaviour)

    def ranks(values):  # average ranks of ties
        values = np.asarray(values, dtype=float)
        return np.array([(values < v).sum() + ((values == v).sum() + 1) / 2 for v in values])

    for key in ("history", "popularity", "ndcg@10"):
        expected = np.corrcoef(ranks(behaviour["blocks"]), ranks(behaviour[key]))[0, 1]
        assert rho[key] == pytest.approx(expected)
    assert rho["history"] == pytest.approx(np.corrcoef([1.5, 4, 1.5, 3], [1, 4, 2, 3])[0, 1])
    constant = dict(behaviour, blocks=np.array([2, 2, 2, 2]))
    assert all(math.isnan(v) for v in block_correlations(constant).values())
    assert len(behaviour_by_blocks(constant)) == 1
    with pytest.raises(ValueError, match=r"behaviour\['history'\] has shape \(3,\)"):
        behaviour_by_blocks(dict(behaviour, history=np.array([1, 2, 3])))
    with pytest.raises(ValueError, match=r"behaviour lacks \['popularity'\]"):
        block_correlations({k: v for k, v in behaviour.items() if k != "popularity"})


# ----------------------------------------------------------------------------- conflict
def test_pair_sets_split_the_lowest_and_highest_quarter():
    interests = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0], [0.7, 0.7]])
    different, similar = pair_sets(interests)
    assert len(different) == len(similar) == 10 // 4
    normed = torch.nn.functional.normalize(interests, dim=1)

    def cos(pairs):
        return [float(normed[a] @ normed[b]) for a, b in pairs.tolist()]

    assert max(cos(different)) <= min(cos(similar))
    assert [0, 3] in different.tolist()  # opposite interests: the lowest cosine


@pytest.mark.parametrize("mode", ["parallel", "shared"])
def test_block_gradients_cover_block_factors_and_generating_head(fofa, mode):
    dataset, config = fofa
    _, model, (_, _, test) = prepare("ForwardOFA", dataset,
                                     config_dict=dict(config, supernet_epochs=0,
                                                      mapper_mode=mode))
    seq, length, target = next(eval_cases(model, test))
    pick = torch.tensor([0, 0, 1])  # the same user twice, then another one
    users = {"seq": seq[pick], "len": length[pick], "target": target[pick]}
    grads, masks = block_gradients(model, users)
    assert masks.shape == (3, 3) and (masks[0] == masks[1]).all()
    head = (lambda b: model.mapper.heads[b]) if mode == "parallel" else (
        lambda b: model.mapper.heads[0])
    for block in range(3):
        if not masks[0, block]:
            assert grads[0][block] is None
            continue
        size = sum(p.numel() for part in (model.blocks[block], model.mapper.factor_sets[block],
                                           head(block)) for p in part.parameters())
        assert grads[0][block].numel() == size and grads[0][block].norm() > 0
        torch.testing.assert_close(grads[0][block], grads[1][block])  # dropout off


def test_conflict_end_to_end(fofa, tmp_path):
    dataset, config = fofa
    result = run_conflict(dataset, config_dict=config, output_dir=tmp_path / "out",
                          progress=False, n_users=12)
    _check_files(result, tmp_path, "conflict", 2)
    assert [row["mapper_mode"] for row in result.rows] == ["shared", "parallel"]
    pairs = 12 * 11 // 2 // 4  # a quarter of the pairs, each counted once per common block
    for row in result.rows:
        assert row["users"] == 12
        for name in ("different", "similar"):
            assert 1 <= row[f"{name}_pairs"] <= 3 * pairs
            assert -1 <= row[f"{name}_cos"] <= 1
        assert 0 <= row["conflict_fraction"] <= 1 and 0 <= row["similar_conflict_fraction"] <= 1
    verdict = [f for f in result.findings if f.startswith("The parallel mapper")]
    assert len(verdict) == 1
    shared, parallel = result.rows
    reduces = parallel["conflict_fraction"] < shared["conflict_fraction"]
    assert ("does not reduce" not in verdict[0]) == reduces


@pytest.mark.parametrize("options, match", [
    ({"modes": ["serial"]}, r"modes=\['serial'\].*mapper_mode"),
    ({"n_users": 2}, "n_users=2"),
    ({"split": "train"}, "split='train'"),
])
def test_conflict_bad_options(fofa, tmp_path, options, match):
    dataset, config = fofa
    with pytest.raises(ValueError, match=match):
        run_conflict(dataset, config_dict=config, output_dir=tmp_path / "out", progress=False,
                     **options)
