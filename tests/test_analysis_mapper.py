"""The mapper analysis: generated parameters switched off, models compared at equal structure
with RecBole's evaluation, and the analysis end to end on the tiny planted data."""

import copy
import csv
import math

import pytest
import torch
from conftest import TINY_FOFA
from recbole.data.interaction import Interaction

from recbole_fofa.analysis._common import eval_cases, evaluation_trainer, recbole_evaluate
from recbole_fofa.analysis.mapper import at_equal_structure, generated_off, run_mapper
from recbole_fofa.quick_start import prepare
from recbole_fofa.subnet import SubnetConfig


@pytest.fixture
def fofa(planted):
    dataset, config = planted
    config.update(TINY_FOFA, supernet_epochs=1, epochs=1, metrics=["NDCG", "Hit"], topk=[10],
                  valid_metric="NDCG@10", train_batch_size=256)
    return dataset, config


@pytest.fixture
def adapted(fofa):
    """(model, test data) of an untrained stage-2 ForwardOFA whose mapper generates non-zero
    parameters and whose controller keeps different blocks for different users."""
    dataset, config = fofa
    _, model, (_, _, test) = prepare("ForwardOFA", dataset,
                                     config_dict=dict(config, supernet_epochs=0))
    torch.manual_seed(0)
    with torch.no_grad():
        for head in model.mapper.heads:
            head[-1].weight.normal_(std=0.5)
            head[-1].bias.normal_(std=0.5)
        model.item_embedding.weight[1:].normal_(std=1.0)  # behaviour codes that differ
        model.controller.linear.weight.normal_(std=2.0)
    model.eval()
    return model, test


def _scores(model, batch):
    seq, length, _ = batch
    return model.full_sort_predict(Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: length}))


def _zeroed(model):
    """A copy of ``model`` whose mapper heads generate exactly zero parameters."""
    zeroed = copy.deepcopy(model)
    for head in zeroed.mapper.heads:
        torch.nn.init.zeros_(head[-1].weight)
        torch.nn.init.zeros_(head[-1].bias)
    return zeroed


@pytest.mark.parametrize("grouping", ["block", "structure"])
def test_generated_off_scores_as_zero_generated_parameters(adapted, grouping):
    model, test = adapted
    model.eval_grouping = grouping
    zeroed = _zeroed(model)
    batch = next(eval_cases(model, test))
    on, plain = _scores(model, batch), _scores(zeroed, batch)
    assert not torch.allclose(on, plain, atol=1e-4)  # the generated parameters matter here
    _, masks, _ = model.eval_structure(batch[0], batch[1])
    assert len(torch.unique(masks, dim=0)) > 1  # several per-user structures in the batch
    with generated_off(model):
        torch.testing.assert_close(_scores(model, batch), plain, rtol=1e-5, atol=1e-5)
        cfg = model.shape.from_mask([True, False, True])
        with model.active_subnet(cfg), zeroed.active_subnet(cfg):
            torch.testing.assert_close(_scores(model, batch), _scores(zeroed, batch),
                                       rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_scores(model, batch), on)
    with pytest.raises(RuntimeError, match="inside"), generated_off(model):
        raise RuntimeError("an error inside the block")
    torch.testing.assert_close(_scores(model, batch), on)  # restored after the error too
    assert not model.mapper._forward_hooks


def test_generated_off_needs_a_mapper():
    with pytest.raises(ValueError, match="no structural mapper"), \
            generated_off(torch.nn.Linear(2, 2)):
        pass


def test_at_equal_structure_rows(adapted):
    model, test = adapted
    twin = copy.deepcopy(model)
    structures = [model.shape.full(), model.shape.from_mask([False, True, False])]
    rows = at_equal_structure({"a": model, "b": twin}, test, structures)
    # per structure: a, b, then a without generated parameters; then each model's own, a's off
    assert [(r["structure"], r["model"], r["generated"]) for r in rows] == [
        ("111", "a", "on"), ("111", "b", "on"), ("111", "a", "off"),
        ("010", "a", "on"), ("010", "b", "on"), ("010", "a", "off"),
        ("own (per user)", "a", "on"), ("own (per user)", "b", "on"),
        ("own (per user)", "a", "off")]
    assert [r["blocks"] for r in rows[:6]] == [3, 3, 3, 1, 1, 1]
    for first, second in ((0, 1), (3, 4), (6, 7)):  # identical models: identical numbers
        for metric in ("ndcg@10", "hit@10"):
            assert rows[first][metric] == rows[second][metric]
    for row in rows:
        assert 0 <= row["ndcg@10"] <= row["hit@10"] <= 1
    # "off" is RecBole's evaluation of the same model with zero generated parameters
    zeroed = _zeroed(model)
    trainer = evaluation_trainer(zeroed, test)
    assert rows[8]["ndcg@10"] == pytest.approx(recbole_evaluate(trainer, test)["ndcg@10"])
    with zeroed.active_subnet(structures[0]):
        assert rows[2]["ndcg@10"] == pytest.approx(recbole_evaluate(trainer, test)["ndcg@10"])
    own = [r for r in rows if r["kind"] == "per-user"]
    assert all(r["share"] is None and 1 <= r["blocks"] <= 3 for r in own)
    assert all(0 <= r["share"] <= 1 for r in rows if r["kind"] == "fixed")
    assert not model.mapper._forward_hooks and model.active_config is None


@pytest.mark.parametrize("structures, match", [
    ([], r"structures=\[\]"),
    ([SubnetConfig((32, 32), (2, 2))], r"structures: .*has 2 blocks, the supernet 3"),
    (["111"], r"structures: '111' is a str, expected a SubnetConfig"),
    ("111", "structures='111'"),
])
def test_at_equal_structure_bad_structures(adapted, structures, match):
    model, test = adapted
    with pytest.raises(ValueError, match=match):
        at_equal_structure({"a": model}, test, structures)


def test_at_equal_structure_bad_models(adapted):
    model, test = adapted
    full = [model.shape.full()]
    with pytest.raises(ValueError, match=r"models=\{\}"):
        at_equal_structure({}, test, full)
    with pytest.raises(ValueError, match=r"models\['x'\] is a Linear"):
        at_equal_structure({"a": model, "x": torch.nn.Linear(2, 2)}, test, full)
    with pytest.raises(ValueError, match="data=list"):
        at_equal_structure({"a": model}, list(test), full)


def test_mapper_analysis_end_to_end(fofa, tmp_path):
    dataset, config = fofa
    result = run_mapper(dataset, config_dict=config, output_dir=tmp_path / "out", progress=False)
    md = (tmp_path / "out" / "mapper.md").read_text()
    assert md.startswith("# mapper") and "mapper=none" in md
    with open(tmp_path / "out" / "mapper.csv") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == result.columns and len(table) == len(result.rows)
    assert result.settings["seeds"] == [config["seed"]]
    rows = result.rows
    assert rows[0]["structure"] == "111" and rows[0]["kind"] == "full network"
    assert rows[-1]["structure"] == "own (per user)"
    fixed = {row["structure"] for row in rows if row["kind"] != "per-user"}
    assert 1 <= len(fixed) <= 4  # the full network and at most three common structures
    assert len(rows) == 3 * (len(fixed) + 1)
    assert {(r["model"], r["generated"]) for r in rows} == {
        ("mapper=parallel", "on"), ("mapper=parallel", "off"), ("mapper=none", "none")}
    for row in rows:
        assert 0 <= row["ndcg@10"] <= row["hit@10"] <= 1
        assert math.isfinite(row["blocks"]) and 1 <= row["blocks"] <= 3
        assert math.isnan(row["ndcg@10_std"])  # one seed
    common = [r["share"] for r in rows if r["kind"] == "common" and r["model"] == "mapper=none"]
    assert sum(common) <= 1 + 1e-9
    assert len(result.findings) == len(fixed) + 2


def test_mapper_analysis_bad_mode(fofa, tmp_path):
    dataset, config = fofa
    with pytest.raises(ValueError, match="mapper_mode='none'"):
        run_mapper(dataset, config_dict=config, output_dir=tmp_path / "out", progress=False,
                   mapper_mode="none")
    with pytest.raises(ValueError, match="`metrics`"):
        run_mapper(dataset, config_dict=dict(config, metrics=["NDCG"]),
                   output_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
