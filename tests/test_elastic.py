"""Elastic blocks, fixed sub-networks (active_subnet), budgets and supernet sampling."""

import math

import pytest
import torch
from conftest import TINY_FOFA
from recbole.model.layers import FeedForward, TransformerLayer
from torch import nn

from recbole_fofa.model import Stage
from recbole_fofa.model.layers import (
    AdaptiveFeedForward,
    AdaptiveTransformerBlock,
    BlockParams,
    run_blocks,
)
from recbole_fofa.model.mapper import StructuralMapper
from recbole_fofa.quick_start import prepare
from recbole_fofa.subnet import SubnetConfig

D, DFF, HEADS, L, B, R = 8, 16, 4, 5, 3, 2
HEAD = D // HEADS


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _block():
    return AdaptiveTransformerBlock(HEADS, D, DFF, 0.0, 0.0, "gelu", 1e-12).eval()


def _causal(batch=B, length=L):
    allowed = torch.tril(torch.ones(length, length, dtype=torch.bool))
    return torch.zeros(batch, 1, length, length).masked_fill(~allowed, -10000.0)


def _gen(batch=B, std=0.3):
    return BlockParams(torch.randn(batch, R, R) * std, torch.randn(batch, R, R) * std,
                       torch.randn(batch, D) * std, torch.randn(batch, D) * std)


def _factors():
    return (torch.randn(DFF, R), torch.randn(R, D) / 3, torch.randn(D, R), torch.randn(R, DFF) / 4)


def _reference_attention(mha, x, mask, heads):
    """Multi-head attention over the first ``heads`` heads, one head at a time."""
    contexts = []
    for j in range(heads):
        rows = slice(j * HEAD, (j + 1) * HEAD)
        q = x @ mha.query.weight[rows].t() + mha.query.bias[rows]
        k = x @ mha.key.weight[rows].t() + mha.key.bias[rows]
        v = x @ mha.value.weight[rows].t() + mha.value.bias[rows]
        probs = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(HEAD) + mask[:, 0], dim=-1)
        contexts.append(probs @ v)
    a = heads * HEAD
    out = torch.cat(contexts, dim=-1) @ mha.dense.weight[:, :a].t() + mha.dense.bias
    return mha.LayerNorm(out + x)


# --- layers ----------------------------------------------------------------------------------


def test_full_width_block_is_exactly_recbole_transformer_layer():
    block = _block()
    layer = TransformerLayer(HEADS, D, DFF, 0.0, 0.0, "gelu", 1e-12).eval()
    layer.load_state_dict(block.state_dict())
    x, mask = torch.randn(B, L, D), _causal()
    expected = layer(x, mask)
    assert torch.equal(block(x, mask, width=DFF, heads=HEADS), expected)
    assert torch.equal(block(x, mask), expected)


@pytest.mark.parametrize("width,heads", [(4, 1), (8, 3), (DFF, 2), (5, HEADS)])
def test_sliced_block_equals_hand_built_smaller_block(width, heads):
    block = _block()
    x, mask = torch.randn(B, L, D), _causal()
    attended = _reference_attention(block.multi_head_attention, x, mask, heads)
    small = FeedForward(D, width, 0.0, "gelu", 1e-12).eval()
    ffn = block.feed_forward
    small.dense_1.weight.data = ffn.dense_1.weight[:width].clone()
    small.dense_1.bias.data = ffn.dense_1.bias[:width].clone()
    small.dense_2.weight.data = ffn.dense_2.weight[:, :width].clone()
    small.dense_2.bias.data = ffn.dense_2.bias.clone()
    small.LayerNorm.load_state_dict(ffn.LayerNorm.state_dict())
    with torch.no_grad():
        got = block(x, mask, width=width, heads=heads)
        torch.testing.assert_close(got, small(attended), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("width", [3, 11, DFF])
def test_sliced_feed_forward_with_generated_params_uses_sliced_factors(width):
    ffn = AdaptiveFeedForward(D, DFF, 0.0, "gelu", 1e-12).eval()
    u1, v1, u2, v2 = factors = _factors()
    gen, x = _gen(), torch.randn(B, L, D)
    with torch.no_grad():
        got = ffn(x, gen, factors, width)
        for b in range(B):  # each sample as a plain FeedForward with its merged weights
            plain = FeedForward(D, width, 0.0, "gelu", 1e-12).eval()
            plain.dense_1.weight.copy_(ffn.dense_1.weight[:width] + u1[:width] @ gen.g1[b] @ v1)
            plain.dense_1.bias.copy_(ffn.dense_1.bias[:width])
            delta_2 = u2 @ gen.g2[b] @ v2[:, :width]
            plain.dense_2.weight.copy_(ffn.dense_2.weight[:, :width] + delta_2)
            plain.dense_2.bias.copy_(ffn.dense_2.bias)
            plain.LayerNorm.weight.copy_(ffn.LayerNorm.weight + gen.ln_scale[b])
            plain.LayerNorm.bias.copy_(ffn.LayerNorm.bias + gen.ln_shift[b])
            torch.testing.assert_close(got[b], plain(x[b : b + 1])[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [({"width": 0}, "width"), ({"width": DFF + 1}, "width"),
                                          ({"heads": 0}, "head count"),
                                          ({"heads": HEADS + 1}, "head count")])
def test_out_of_range_widths_and_heads_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _block()(torch.randn(B, L, D), _causal(), **kwargs)


def test_batch_wide_mask_runs_each_kept_block_once_on_the_whole_batch():
    blocks = nn.ModuleList(_block() for _ in range(3))
    calls = []
    for i, block in enumerate(blocks):
        block.register_forward_hook(lambda m, args, out, i=i: calls.append((i, args[0].size(0))))
    x, mask = torch.randn(B, L, D), _causal()
    widths, heads = [4, 0, 16], [1, 0, 4]
    with torch.no_grad():
        got = run_blocks(blocks, x, mask, torch.tensor([True, False, True]), widths=widths,
                         heads=heads)
        per_row = run_blocks(blocks, x, mask, torch.tensor([[True, False, True]] * B),
                             widths=widths, heads=heads)
        assert calls == [(0, B), (2, B), (0, B), (2, B)]
        expected = blocks[2](blocks[0](x, mask, width=4, heads=1), mask, width=16, heads=4)
    assert torch.equal(got, expected) and torch.equal(per_row, expected)


def test_gradient_flows_only_into_the_sliced_parts():
    block = _block().train()
    mapper = StructuralMapper(D, DFF, 1, R, 6)
    for head in mapper.heads:
        nn.init.normal_(head[-1].weight, std=0.3)
    width, heads = 6, 2
    a = heads * HEAD
    gen = mapper(torch.randn(B, D), torch.ones(B, 1))[0]
    block(torch.randn(B, L, D), _causal(), gen, mapper.factors(0), width, heads).sum().backward()
    mha, ffn, factors = block.multi_head_attention, block.feed_forward, mapper.factor_sets[0]
    outside = [mha.query.weight.grad[a:], mha.key.bias.grad[a:], mha.value.weight.grad[a:],
               mha.dense.weight.grad[:, a:], ffn.dense_1.weight.grad[width:],
               ffn.dense_1.bias.grad[width:], ffn.dense_2.weight.grad[:, width:],
               factors.u1.grad[width:], factors.v2.grad[:, width:]]
    inside = [mha.query.weight.grad[:a], mha.value.weight.grad[:a], mha.dense.weight.grad[:, :a],
              ffn.dense_1.weight.grad[:width], ffn.dense_2.weight.grad[:, :width],
              factors.u1.grad[:width], factors.v2.grad[:, :width], factors.v1.grad,
              factors.u2.grad]
    assert all(g.abs().sum() == 0 for g in outside)
    assert all(g.abs().sum() > 0 for g in inside)


# --- the model -------------------------------------------------------------------------------


@pytest.fixture
def elastic(planted):
    dataset, config = planted
    config.update(TINY_FOFA, supernet_subnets=3, hidden_dropout_prob=0.0,
                  attn_dropout_prob=0.0)
    _, model, (train, _, test) = prepare("ForwardOFA", dataset, config_dict=config)
    return model, next(iter(train)), next(iter(test))[0]


def _adapt(model):
    """Adapt stage with non-zero generated parameters."""
    model.stage = Stage.ADAPT
    for head in model.mapper.heads:
        nn.init.normal_(head[-1].weight, std=0.3)
    return model.eval()


class ToySpace:
    """A small elastic space (test double of the search's spaces): each block dropped or kept at
    one of ``widths`` with one of ``heads``."""

    def __init__(self, shape, widths=(8, 16, 32), heads=(1, 2)):
        self.shape, self.widths, self.heads = shape, widths, heads

    def largest(self):
        return self.shape.full()

    def smallest(self):
        n = self.shape.n_blocks
        return SubnetConfig((self.widths[0],) + (0,) * (n - 1), (self.heads[0],) + (0,) * (n - 1))

    def sample(self, rng):
        n = self.shape.n_blocks
        keep = rng.random(n) < 0.5
        keep[rng.integers(n)] = True
        widths = [int(rng.choice(self.widths)) if k else 0 for k in keep]
        heads = [int(rng.choice(self.heads)) if k else 0 for k in keep]
        return SubnetConfig(tuple(widths), tuple(heads))


def test_full_width_subnet_equals_the_block_supernet(elastic):
    model, _, batch = elastic
    seq, lengths = batch["item_id_list"], batch["item_length"]
    model.eval()
    with torch.no_grad():
        block_supernet = model.forward(seq, lengths)
        with model.active_subnet(model.shape.full()):
            elastic_full = model.forward(seq, lengths)
    assert torch.equal(elastic_full, block_supernet)
    _adapt(model)
    with torch.no_grad():  # the controller keeps blocks 0 and 2 for everyone
        model.controller.linear.weight.zero_()
        model.controller.linear.bias.copy_(torch.tensor([5.0, -5.0, 5.0]))
        per_user = model.forward(seq, lengths)
        with model.active_subnet(model.shape.from_mask([True, False, True])):
            fixed = model.forward(seq, lengths)
    torch.testing.assert_close(fixed, per_user, atol=1e-6, rtol=1e-6)


def test_active_subnet_scores_every_user_with_cfg_and_restores(elastic):
    model, _, batch = _adapt_fixture(elastic)
    seq, lengths = batch["item_id_list"], batch["item_length"]
    cfg = SubnetConfig((8, 0, 24), (1, 0, 2))
    calls = []
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(
            lambda m, args, out, i=i: calls.append((i, args[0].size(0), args[4], args[5])))
    before = model.full_sort_predict(batch)
    calls.clear()
    with model.active_subnet(cfg) as active:
        assert active is model and model.active_config == cfg
        scores = model.full_sort_predict(batch)
    assert calls == [(0, len(batch), 8, 1), (2, len(batch), 24, 2)]
    assert model.active_config is None
    torch.testing.assert_close(model.full_sort_predict(batch), before)
    with torch.no_grad():  # every user: the generated parameters of cfg's mask, at cfg's widths
        z, _ = model.code_and_logits(seq, lengths)
        expected = model.scores(model.encode_subnet(seq, lengths, cfg,
                                                    model.generated_params(z, cfg)))
    torch.testing.assert_close(scores, expected)
    assert not torch.allclose(scores, before)

    with pytest.raises(KeyError):
        with model.active_subnet(cfg):
            raise KeyError("boom")
    assert model.active_config is None  # restored after an error
    with model.active_subnet(cfg):
        with pytest.raises(RuntimeError, match="nesting"):
            with model.active_subnet(model.shape.full()):
                pass
        assert model.active_config == cfg
        with pytest.raises(RuntimeError, match="active_subnet"):
            model.calculate_loss(elastic[1])
    with pytest.raises(ValueError, match="exceeds inner_size"):
        with model.active_subnet(SubnetConfig((64, 0, 0), (1, 0, 0))):
            pass
    with pytest.raises(ValueError, match="blocks"):
        with model.active_subnet(SubnetConfig((8,), (1,))):
            pass
    with pytest.raises(TypeError, match="SubnetConfig"):
        with model.active_subnet([True, False, True]):
            pass


def _adapt_fixture(elastic):
    model, train, batch = elastic
    return _adapt(model), train, batch


@pytest.mark.parametrize("cfg", [SubnetConfig((8, 0, 24), (1, 0, 2)),
                                 SubnetConfig((32, 32, 32), (2, 2, 2)),
                                 SubnetConfig((0, 16, 0), (0, 1, 0))])
def test_evaluation_costs_under_active_subnet_equal_shape_cost(elastic, cfg):
    model, _, batch = _adapt_fixture(elastic)
    model.reset_evaluation_costs()
    with model.active_subnet(cfg):
        model.full_sort_predict(batch)
        model.full_sort_predict(batch[:7])
    costs = model.evaluation_costs()
    expected = model.shape.cost(cfg)
    assert costs["macs"].shape == (len(batch) + 7,)
    assert (costs["macs"] == expected.encoder_macs[0]).all()
    assert (costs["params"] == expected.encoder_params[0]).all()
    assert (costs["blocks"] == cfg.n_kept).all()
    # Outside active_subnet the controller's structures are recorded at full width, as before.
    model.reset_evaluation_costs()
    model.full_sort_predict(batch)
    costs = model.evaluation_costs()
    masks = model.eval_structure(batch["item_id_list"], batch["item_length"])[1]
    assert (costs["macs"] == model.shape.cost([model.shape.from_mask(m) for m in
                                                masks.tolist()]).encoder_macs).all()


def test_budget_sets_device_budget_temporarily(elastic):
    model, _, batch = _adapt_fixture(elastic)
    block = int(model.shape.block_macs()[0])
    assert model.controller_min_macs == block
    assert model.device_budget is None
    with model.budget(block) as same:
        assert same is model and model.device_budget == block
        _, mask, _ = model.eval_structure(batch["item_id_list"], batch["item_length"])
        assert (mask.sum(dim=1) == 1).all()
        with model.budget(2 * block):  # nesting restores the outer budget
            assert model.device_budget == 2 * block
        assert model.device_budget == block
    assert model.device_budget is None
    with pytest.raises(KeyError):
        with model.budget(f"{block} MACs"):
            assert model.device_budget == block
            raise KeyError("boom")
    assert model.device_budget is None
    with pytest.raises(ValueError, match="one block costs"):
        with model.budget(0.5):  # a fraction is not MACs
            pass
    with pytest.raises(ValueError, match="MACs"):
        with model.budget([block]):
            pass
    assert model.device_budget is None


def test_supernet_sampling_is_seeded_per_step_and_trains_largest_smallest_random(elastic):
    model, train, _ = elastic
    assert model.subnet_space is None
    # By default: block masks at full width, the first one a single block.
    default = model.sample_subnets()
    assert len(default) == 3 and default[0].n_kept == 1
    assert all(set(c.widths) <= {0, 32} and set(c.heads) <= {0, 2} for c in default)
    space = ToySpace(model.shape)
    model.subnet_space = space
    first = model.sample_subnets(step=5)
    assert first == model.sample_subnets(step=5)
    assert len(first) == 3 and first[0] == space.smallest()
    steps = {tuple(c.key for c in model.sample_subnets(step=s)) for s in range(12)}
    assert len(steps) > 6  # different steps sample different sub-networks
    assert any(w not in (0, 32) for s in range(12) for c in model.sample_subnets(s)
               for w in c.widths)

    seen = []
    encode_subnet = model.encode_subnet
    model.encode_subnet = lambda seq, lengths, cfg, gen=None: (
        seen.append(cfg) or encode_subnet(seq, lengths, cfg, gen))
    model.train()
    model.supernet_step = 7
    loss = model.calculate_loss(train)
    assert torch.isfinite(loss) and model.supernet_step == 8
    assert seen == [model.shape.full()] + model.sample_subnets(step=7)
    assert model.other_parameter()["supernet_step"] == 8


def test_subnet_space_is_checked(elastic):
    model, _, _ = elastic

    class NoSample:
        def largest(self):
            return None

        def smallest(self):
            return None

    with pytest.raises(TypeError, match="sample"):
        model.subnet_space = NoSample()
    wrong = ToySpace(model.shape)
    wrong.smallest = lambda: SubnetConfig((8, 8), (1, 1))
    with pytest.raises(ValueError, match="blocks"):
        model.subnet_space = wrong
    assert model.subnet_space is None


def test_gradients_of_a_fixed_subnet_reach_only_its_slices(elastic):
    model, _, batch = _adapt_fixture(elastic)
    model.train()
    cfg = SubnetConfig((8, 0, 24), (1, 0, 2))
    with model.active_subnet(cfg):
        model.forward(batch["item_id_list"], batch["item_length"]).pow(2).sum().backward()
    assert all(p.grad is None for p in model.blocks[1].parameters())
    for index in (0, 2):
        w, a = cfg.widths[index], cfg.heads[index] * model.shape.head_size
        mha, ffn = model.blocks[index].multi_head_attention, model.blocks[index].feed_forward
        factors = model.mapper.factor_sets[index]
        dense_1 = ffn.dense_1.weight.grad
        assert dense_1[w:].abs().sum() == 0 < dense_1[:w].abs().sum()
        assert ffn.dense_2.weight.grad[:, w:].abs().sum() == 0
        assert mha.query.weight.grad[a:].abs().sum() == 0 < mha.query.weight.grad[:a].abs().sum()
        assert mha.dense.weight.grad[:, a:].abs().sum() == 0
        assert factors.u1.grad[w:].abs().sum() == 0 < factors.u1.grad[:w].abs().sum()
        assert factors.v2.grad[:, w:].abs().sum() == 0
    assert model.mapper.heads[1][-1].weight.grad is None  # a dropped block generates nothing
    assert model.mapper.heads[0][-1].weight.grad.abs().sum() > 0
