"""Evaluation grouped by structure (``eval_grouping: structure``) against the per-block path."""

import numpy as np
import pytest
import torch
from conftest import TINY_FOFA
from torch import nn

from recbole_fofa.model import Stage
from recbole_fofa.model.layers import MAX_CODE_BLOCKS, group_by_structure
from recbole_fofa.quick_start import prepare

N_BLOCKS = 6  # 63 structures: more than the 60 test users, so every row can have its own


@pytest.fixture
def adapted(planted):
    """(model in the adapt stage with non-zero generated parameters, one test batch)."""
    dataset, config = planted
    config.update(TINY_FOFA, n_blocks=N_BLOCKS, hidden_dropout_prob=0.0,
                  attn_dropout_prob=0.0)
    _, model, (_, _, test) = prepare("ForwardOFA", dataset, config_dict=config)
    torch.manual_seed(0)
    model.stage = Stage.ADAPT
    for head in model.mapper.heads:
        nn.init.normal_(head[-1].weight, std=0.3)
    return model.eval(), next(iter(test))[0]


def _force(model, masks):
    """Make the controller's decision ``masks`` [B, n] (the controller still runs)."""
    original = model.eval_structure

    def forced(item_seq, item_seq_len):
        z, _, probs = original(item_seq, item_seq_len)
        return z, masks.clone(), probs

    model.eval_structure = forced


def _bits(codes, n=N_BLOCKS):
    """Masks [len(codes), n]: bit b of code c keeps block b."""
    return torch.tensor([[bool(code >> b & 1) for b in range(n)] for code in codes])


def _evaluate(model, batch, grouping):
    """(full-sort scores, candidate scores, recorded costs) under ``grouping``."""
    model.eval_grouping = grouping
    model.reset_evaluation_costs()
    scores = model.full_sort_predict(batch)
    costs = model.evaluation_costs()
    return scores, model.predict(batch), costs


def _mixes(batch_size):
    rng = np.random.default_rng(3)
    two = rng.choice([0b111000, 0b110011], size=batch_size, p=[0.6, 0.4])
    return {
        "one structure": _bits([0b101101] * batch_size),
        "all distinct": _bits(range(1, batch_size + 1)),
        "single block": _bits([0b000100] * batch_size),
        "mix with a single-block group": _bits(
            rng.choice([0b000001, 0b011110, 0b111111], size=batch_size)),
        "two structures 60/40": _bits(two),
    }


@pytest.mark.parametrize("mix", ["one structure", "all distinct", "single block",
                                 "mix with a single-block group", "two structures 60/40"])
def test_grouped_scores_and_costs_equal_the_per_block_path(adapted, mix):
    model, batch = adapted
    masks = _mixes(len(batch))[mix]
    if mix == "all distinct":
        assert len(batch) <= 2**N_BLOCKS - 1 and len(set(map(tuple, masks.tolist()))) == len(batch)
    _force(model, masks)
    old_scores, old_pred, old_costs = _evaluate(model, batch, "block")
    new_scores, new_pred, new_costs = _evaluate(model, batch, "structure")
    torch.testing.assert_close(new_scores, old_scores, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new_pred, old_pred, rtol=1e-5, atol=1e-5)
    assert set(new_costs) == set(old_costs)
    for key in new_costs:
        np.testing.assert_array_equal(new_costs[key], old_costs[key])
    np.testing.assert_array_equal(new_costs["blocks"], masks.sum(dim=1).numpy())
    assert not torch.equal(new_scores[0], new_scores[1])  # rows keep their own order


def test_controller_structures_give_the_same_scores(adapted):
    model, batch = adapted
    with torch.no_grad():  # varied per-user structures from the real controller
        z, _ = model.code_and_logits(batch["item_id_list"], batch["item_length"])
        weight = torch.randn(N_BLOCKS, z.size(1))
        weight *= 3.0 / float(((z - z.mean(0)) @ weight.t()).std())  # logits of std 3 ...
        model.controller.linear.weight.copy_(weight)
        model.controller.linear.bias.copy_(-z.mean(0) @ weight.t())  # ... around 0
    _, mask, _ = model.eval_structure(batch["item_id_list"], batch["item_length"])
    assert len(torch.unique(mask, dim=0)) > 3
    old_scores, _, old_costs = _evaluate(model, batch, "block")
    new_scores, _, new_costs = _evaluate(model, batch, "structure")
    torch.testing.assert_close(new_scores, old_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(new_costs["macs"], old_costs["macs"])


def test_each_group_runs_its_kept_blocks_densely_with_its_own_parameters(adapted):
    model, batch = adapted
    codes = [0b000011] * 20 + [0b110000] * 30 + [0b000001] * (len(batch) - 50)
    order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(1))
    masks = _bits(codes)[order]  # groups interleaved in the batch
    _force(model, masks)
    block_calls, mapper_calls = [], []
    for index, block in enumerate(model.blocks):
        block.register_forward_hook(
            lambda module, args, out, index=index: block_calls.append((index, args[0].size(0))))
    mapper_forward = model.mapper.forward

    def spy(z, s, blocks=None):
        mapper_calls.append((z.size(0), tuple(blocks), tuple(s[0].float().tolist())))
        return mapper_forward(z, s, blocks)

    model.mapper.forward = spy
    model.eval_grouping = "structure"
    model.full_sort_predict(batch)
    rest = len(batch) - 50
    # groups in torch.unique's (lexicographic) order of masks: 110000, 000001, 000011 as codes
    assert block_calls == [(4, 30), (5, 30), (0, rest), (0, 20), (1, 20)]
    assert mapper_calls == [(30, (4, 5), (0.0,) * 4 + (1.0,) * 2),
                            (rest, (0,), (1.0,) + (0.0,) * 5),
                            (20, (0, 1), (1.0,) * 2 + (0.0,) * 4)]

    block_calls.clear()
    mapper_calls.clear()
    model.eval_grouping = "block"
    model.full_sort_predict(batch)
    assert block_calls == [(0, rest + 20), (1, 20), (4, 30), (5, 30)]
    assert len(mapper_calls) == 1 and mapper_calls[0][:2] == (len(batch), (0, 1, 4, 5))


def test_one_structure_runs_without_permutation(adapted, monkeypatch):
    model, batch = adapted
    _force(model, _bits([0b010010] * len(batch)))
    model.eval_grouping = "structure"

    def no_copy(*args, **kwargs):
        raise AssertionError("one structure needs no permutation back")

    monkeypatch.setattr(torch.Tensor, "index_copy_", no_copy)
    scores = model.full_sort_predict(batch)
    assert scores.shape == (len(batch), model.n_items)


def test_group_by_structure_sorts_rows_stably():
    mask = _bits([0b101, 0b011, 0b101, 0b100, 0b011], n=3)
    structures, kept, counts, order = group_by_structure(mask)
    assert structures.tolist() == [[False, False, True], [True, False, True], [True, True, False]]
    assert kept == [[2], [0, 2], [0, 1]] and counts == [1, 2, 2]
    assert order.tolist() == [3, 0, 2, 1, 4]
    assert torch.equal(mask[order], structures.repeat_interleave(torch.tensor(counts), dim=0))
    with pytest.raises(ValueError, match="bool mask"):
        group_by_structure(mask.float())


@pytest.mark.parametrize("n", [MAX_CODE_BLOCKS, MAX_CODE_BLOCKS + 1, 80])
def test_group_by_structure_is_the_same_with_and_without_integer_codes(n):
    rng = np.random.default_rng(n)
    mask = torch.as_tensor(rng.random((50, n)) < 0.5)
    mask[10:20] = mask[0]  # repeated structures
    mask[30:35] = mask[1]
    structures, kept, counts, order = group_by_structure(mask)
    expected, inverse, expected_counts = torch.unique(mask, dim=0, return_inverse=True,
                                                      return_counts=True)
    assert torch.equal(structures, expected) and counts == expected_counts.tolist()
    assert torch.equal(order, inverse.argsort(stable=True))
    assert kept == [row.nonzero().flatten().tolist() for row in expected]


def test_eval_grouping_defaults_to_block_and_is_checked(adapted, planted):
    model, _ = adapted
    assert model.eval_grouping == "block"
    dataset, config = planted
    config.update(n_blocks=2, eval_grouping="rows")
    with pytest.raises(ValueError, match=r"`eval_grouping` = 'rows'.*\['block', 'structure'\]"):
        prepare("ForwardOFA", dataset, config_dict=config)
