"""Tests for the blocks, the structure controller and the structural mapper of
recbole_fofa.model (tiny sizes, CPU)."""

import pytest
import torch
from recbole.model.layers import FeedForward, TransformerLayer
from torch import nn

from recbole_fofa.model.controller import (
    StructureController,
    deterministic_mask,
    gumbel_sigmoid,
    last_k,
    repair_to_budget,
)
from recbole_fofa.model.layers import AdaptiveFeedForward, AdaptiveTransformerBlock, run_blocks
from recbole_fofa.model.mapper import StructuralMapper

D, DFF, N, R, H, HEADS, L, B = 8, 16, 4, 3, 12, 2, 5, 6


def _block_args(dropout=0.0):
    return dict(
        n_heads=HEADS,
        hidden_size=D,
        hidden_dropout_prob=dropout,
        attn_dropout_prob=dropout,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )


def _block(dropout=0.0):
    return AdaptiveTransformerBlock(inner_size=DFF, **_block_args(dropout))


def _causal_mask(batch=B, length=L):
    allowed = torch.tril(torch.ones(length, length, dtype=torch.bool))
    mask = torch.zeros(batch, 1, length, length)
    return mask.masked_fill(~allowed, -10000.0)


def _randomise_last_layers(mapper, std=0.3):
    for head in mapper.heads:
        nn.init.normal_(head[-1].weight, std=std)
        nn.init.normal_(head[-1].bias, std=std)


def _mapper(mode="parallel"):
    return StructuralMapper(D, DFF, N, R, H, mode=mode)


def _inputs(batch=B):
    z = torch.randn(batch, D)
    s = (torch.rand(batch, N) > 0.5).float()
    return z, s


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- AdaptiveFeedForward / AdaptiveTransformerBlock -------------------------------------------


def test_feed_forward_without_gen_equals_recbole():
    ref = FeedForward(D, DFF, 0.1, "gelu", 1e-12).eval()
    ffn = AdaptiveFeedForward(D, DFF, 0.1, "gelu", 1e-12).eval()
    ffn.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(B, L, D)
    assert torch.equal(ffn(x), ref(x))


def test_feed_forward_low_rank_path_matches_full_weights():
    mapper = _mapper()
    _randomise_last_layers(mapper)
    gen = mapper(*_inputs())[1]
    u1, v1, u2, v2 = mapper.factors(1)
    ffn = AdaptiveFeedForward(D, DFF, 0.0, "relu", 1e-12)
    x = torch.randn(B, L, D)
    out = ffn(x, gen, mapper.factors(1))
    for b in range(B):
        w1 = ffn.dense_1.weight + u1 @ gen.g1[b] @ v1
        w2 = ffn.dense_2.weight + u2 @ gen.g2[b] @ v2
        h = torch.relu(x[b] @ w1.t() + ffn.dense_1.bias) @ w2.t() + ffn.dense_2.bias
        ln = ffn.LayerNorm
        expected = nn.functional.layer_norm(
            h + x[b], (D,), ln.weight + gen.ln_scale[b], ln.bias + gen.ln_shift[b], ln.eps
        )
        torch.testing.assert_close(out[b], expected, atol=1e-5, rtol=1e-5)


def test_feed_forward_requires_factors_with_gen():
    mapper = _mapper()
    gen = mapper(*_inputs())[0]
    with pytest.raises(ValueError, match="factors"):
        AdaptiveFeedForward(D, DFF, 0.0, "gelu", 1e-12)(torch.randn(B, L, D), gen)


def test_block_loads_transformer_layer_state_dict_and_matches():
    ref = TransformerLayer(intermediate_size=DFF, **_block_args(0.2)).eval()
    block = _block(0.2).eval()
    block.load_state_dict(ref.state_dict(), strict=True)
    assert set(block.state_dict()) == set(ref.state_dict())
    x, mask = torch.randn(B, L, D), _causal_mask()
    assert torch.equal(block(x, mask), ref(x, mask))


def test_zero_initialised_mapper_gives_plain_block():
    block = _block()
    mapper = _mapper()
    gens = mapper(*_inputs())
    for gen in gens:
        for t in (gen.g1, gen.g2, gen.ln_scale, gen.ln_shift):
            assert torch.count_nonzero(t) == 0
    x, mask = torch.randn(B, L, D), _causal_mask()
    torch.testing.assert_close(block(x, mask, gens[2], mapper.factors(2)), block(x, mask),
                               atol=1e-6, rtol=1e-6)


# --- StructuralMapper -------------------------------------------------------------------------


def test_mapper_shapes_and_subset():
    z, s = _inputs()
    for mode in ("parallel", "shared"):
        mapper = _mapper(mode)
        gens = mapper(z, s)
        assert len(gens) == N
        assert gens[0].g1.shape == (B, R, R) and gens[0].g2.shape == (B, R, R)
        assert gens[0].ln_scale.shape == (B, D) and gens[0].ln_shift.shape == (B, D)
        u1, v1, u2, v2 = mapper.factors(0)
        assert (u1.shape, v1.shape, u2.shape, v2.shape) == ((DFF, R), (R, D), (D, R), (R, DFF))
        subset = mapper(z, s, blocks=[1, 3])
        assert subset[0] is None and subset[2] is None
        assert subset[1] is not None and subset[3] is not None
    none = _mapper("none")
    assert none(z, s) == [None] * N
    assert none.factors(0) is None
    assert sum(p.numel() for p in none.parameters()) == 0


def test_mapper_parallel_runs_only_requested_heads():
    mapper = _mapper("parallel")
    calls = []
    for i, head in enumerate(mapper.heads):
        head.register_forward_hook(lambda *_, i=i: calls.append(i))
    mapper(*_inputs(), blocks=[2])
    assert calls == [2]


def test_mapper_rejects_unknown_mode():
    with pytest.raises(ValueError, match=r"mapper_mode.*'serial'.*parallel"):
        _mapper("serial")


def test_mapper_is_structure_conditioned():
    mapper = _mapper()
    _randomise_last_layers(mapper)
    z, _ = _inputs()
    a = mapper(z, torch.ones(B, N))[0]
    b = mapper(z, torch.zeros(B, N))[0]
    assert not torch.allclose(a.g1, b.g1)


def _scalar(gen):
    return gen.g1.sum() + gen.g2.pow(2).sum() + gen.ln_scale.sum() + gen.ln_shift.sum()


def test_parallel_heads_isolate_gradients():
    mapper = _mapper("parallel")
    _randomise_last_layers(mapper)
    z, s = _inputs()
    for i in range(N):
        mapper.zero_grad(set_to_none=True)
        _scalar(mapper(z, s)[i]).backward()
        for j, head in enumerate(mapper.heads):
            for p in head.parameters():
                if j == i:
                    assert p.grad is not None and p.grad.abs().sum() > 0
                else:
                    assert p.grad is None or torch.count_nonzero(p.grad) == 0


def test_shared_head_couples_gradients():
    mapper = _mapper("shared")
    _randomise_last_layers(mapper)
    z, s = _inputs()
    first = mapper.heads[0][0].weight
    grads = []
    for i in (0, 2):
        mapper.zero_grad(set_to_none=True)
        _scalar(mapper(z, s)[i]).backward()
        assert first.grad is not None and first.grad.abs().sum() > 0
        grads.append(first.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_reset_parameters_restores_zero_deltas():
    mapper = _mapper()
    _randomise_last_layers(mapper)
    mapper.reset_parameters()
    assert all(torch.count_nonzero(g.g1) == 0 for g in mapper(*_inputs()))


# --- StructureController / last_k -------------------------------------------------------------


def test_last_k_hand_examples():
    seq = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0], [8, 0, 0, 0, 0], [9, 8, 7, 6, 0]])
    lens = torch.tensor([5, 2, 1, 4])
    out, new_len = last_k(seq, lens, 3)
    assert out.tolist() == [[3, 4, 5], [6, 7, 0], [8, 0, 0], [8, 7, 6]]
    assert new_len.tolist() == [3, 2, 1, 3]
    out, new_len = last_k(seq, lens, 7)
    assert out.tolist() == [[1, 2, 3, 4, 5, 0, 0], [6, 7, 0, 0, 0, 0, 0],
                            [8, 0, 0, 0, 0, 0, 0], [9, 8, 7, 6, 0, 0, 0]]
    assert new_len.tolist() == [5, 2, 1, 4]


@pytest.mark.parametrize("extractor", ["gru", "mean"])
def test_controller_ignores_padding(extractor):
    ctrl = StructureController(D, N, extractor=extractor)
    emb = torch.randn(3, 4, D)
    lens = torch.tensor([4, 2, 1])
    z, logits = ctrl(emb, lens)
    assert z.shape == (3, D) and logits.shape == (3, N)
    noisy = emb.clone()
    noisy[1, 2:] = torch.randn(2, D)
    noisy[2, 1:] = torch.randn(3, D)
    z2, logits2 = ctrl(noisy, lens)
    torch.testing.assert_close(z2, z)
    torch.testing.assert_close(logits2, logits)


def test_controller_extractors_match_references():
    emb = torch.randn(2, 4, D)
    lens = torch.tensor([3, 1])
    mean = StructureController(D, N, extractor="mean")
    torch.testing.assert_close(mean(emb, lens)[0], torch.stack([emb[0, :3].mean(0), emb[1, 0]]))
    gru = StructureController(D, N, extractor="gru")
    _, h = gru.gru(emb[:1, :3])
    torch.testing.assert_close(gru(emb, lens)[0][0], h[0, 0])


def test_controller_rejects_unknown_extractor():
    with pytest.raises(ValueError, match="extractor.*'lstm'"):
        StructureController(D, N, extractor="lstm")


# --- gumbel_sigmoid / masks / budget ---------------------------------------------------------


def test_gumbel_sigmoid_hard_is_binary_with_gradients():
    logits = torch.randn(64, N, requires_grad=True)
    y = gumbel_sigmoid(logits, tau=0.5, hard=True, generator=torch.Generator().manual_seed(1))
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    (y * torch.arange(N)).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    soft = gumbel_sigmoid(logits, tau=0.5, hard=False)
    assert ((soft >= 0) & (soft <= 1)).all()
    assert ((soft > 0.01) & (soft < 0.99)).any()
    with pytest.raises(ValueError, match="tau"):
        gumbel_sigmoid(logits, tau=0.0)


def test_gumbel_sigmoid_keep_frequency_matches_probability():
    logits = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0])
    samples = 20000
    gen = torch.Generator().manual_seed(123)
    y = gumbel_sigmoid(logits.expand(samples, -1), tau=0.1, hard=True, generator=gen)
    # 4 sigma of a Bernoulli mean over 20000 draws is <= 0.015.
    torch.testing.assert_close(y.mean(0), torch.sigmoid(logits), atol=0.015, rtol=0)


def test_deterministic_mask():
    probs = torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.3, 0.2], [0.5, 0.5, 0.49]])
    mask = deterministic_mask(probs, 0.5)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[True, False, True], [False, True, False], [True, True, False]]


def test_repair_to_budget_hand_examples():
    probs = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6], [0.2, 0.9, 0.5, 0.7]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1]], dtype=torch.bool)
    equal = repair_to_budget(mask, probs, torch.ones(4), 2)
    assert equal.tolist() == [[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1]]
    costs = torch.tensor([1.0, 3.0, 1.0, 2.0])
    # Row 0: by p, 0 (1) + 1 (3) = 4 fits, + 2 (1) = 5 does not: the next blocks go.
    # Row 2: block 1 (p .9, cost 3) alone exceeds 2.5; the best kept block that fits is 3 (p .7).
    got = repair_to_budget(mask, probs, costs, torch.tensor([4.0, 4.0, 2.5]))
    assert got.tolist() == [[1, 1, 0, 0], [1, 0, 1, 1], [0, 0, 0, 1]]
    # Nothing kept fits alone: the cheapest block overall (ties broken by p).
    tight = repair_to_budget(torch.tensor([[False, True, False, False]]), probs[:1], costs, 1.0)
    assert tight.tolist() == [[True, False, False, False]]
    # Already within budget: unchanged.
    assert torch.equal(repair_to_budget(mask, probs, costs, 100.0), mask)


def test_repair_to_budget_random_property():
    gen = torch.Generator().manual_seed(7)
    for _ in range(20):
        n = 6
        probs = torch.rand(50, n, generator=gen)
        mask = torch.rand(50, n, generator=gen) > 0.3
        costs = torch.randint(1, 6, (n,), generator=gen).float()
        budget = float(costs.min()) + float(torch.rand(1, generator=gen)) * float(costs.sum())
        out = repair_to_budget(mask, probs, costs, budget)
        assert out.any(dim=1).all()
        assert ((out.float() @ costs) <= budget).all()
        some_kept_fits = (mask & (costs <= budget)).any(dim=1)
        assert some_kept_fits.any()
        assert not (out & ~mask)[some_kept_fits].any()
        # Greedy by probability: a kept block never has lower p than a dropped kept block that
        # would still have fitted, unless the row fell back to a single block.
        multi = out.sum(1) > 1
        dropped = mask & ~out
        min_kept = torch.where(out, probs, torch.ones_like(probs)).min(1).values
        max_dropped = torch.where(dropped, probs, torch.zeros_like(probs)).max(1).values
        assert (max_dropped[multi] <= min_kept[multi]).all()


# --- run_blocks -------------------------------------------------------------------------------


def _stack():
    blocks = nn.ModuleList(_block() for _ in range(N)).eval()
    mapper = _mapper()
    _randomise_last_layers(mapper)
    return blocks, mapper


def test_run_blocks_eval_runs_only_kept_rows_and_matches_training_formula():
    blocks, mapper = _stack()
    x, attn = torch.randn(B, L, D), _causal_mask()
    mask = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 1], [0, 0, 1, 1],
                         [1, 0, 1, 1], [1, 0, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    seen = {i: [] for i in range(N)}
    for i, block in enumerate(blocks):
        block.register_forward_hook(lambda mod, inp, out, i=i: seen[i].append(inp[0].shape[0]))
    z, _ = _inputs()
    gens = mapper(z, mask.float())
    factors = [mapper.factors(i) for i in range(N)]
    with torch.no_grad():
        got = run_blocks(blocks, x, attn, mask, gens, factors)
    assert seen == {0: [5], 1: [], 2: [4], 3: [3]}
    for v in seen.values():
        v.clear()
    with torch.no_grad():
        ref = run_blocks(blocks, x, attn, mask.float(), gens, factors, straight_through=True)
    assert seen == {i: [B] for i in range(N)}
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # Rows that keep nothing pass through unchanged.
    empty = torch.zeros(B, N, dtype=torch.bool)
    assert torch.equal(run_blocks(blocks, x, attn, empty), x)


def test_run_blocks_training_mixes_with_soft_mask_and_backpropagates():
    blocks, mapper = _stack()
    x, attn = torch.randn(B, L, D), _causal_mask(batch=1)
    logits = torch.randn(B, N, requires_grad=True)
    m = gumbel_sigmoid(logits, tau=1.0)
    z, _ = _inputs()
    gens = mapper(z, m)
    out = run_blocks(blocks, x, attn, m, gens, [mapper.factors(i) for i in range(N)],
                     straight_through=True)
    assert out.shape == (B, L, D)
    out.pow(2).sum().backward()
    assert logits.grad.abs().sum() > 0
    assert all(head[-1].weight.grad is not None for head in mapper.heads)


def test_straight_through_mix_equals_the_formula_exactly():
    """The fused mix gives the bits of ``m * block(h) + (1 - m) * h`` and of its gradients."""
    blocks, mapper = _stack()
    x, attn = torch.randn(B, L, D), _causal_mask(batch=1)
    factors = [mapper.factors(i) for i in range(N)]
    results = []
    for fused in (True, False):
        torch.manual_seed(3)
        logits = torch.randn(B, N, requires_grad=True)
        hidden = x.clone().requires_grad_(True)
        m = gumbel_sigmoid(logits, tau=1.0)
        gens = mapper(torch.ones(B, D), m)
        if fused:
            out = run_blocks(blocks, hidden, attn, m, gens, factors, straight_through=True)
        else:
            out = hidden
            for i in range(N):
                keep = m[:, i].view(-1, 1, 1)
                out = keep * blocks[i](out, attn, gens[i], factors[i]) + (1 - keep) * out
        out.pow(2).sum().backward()
        results.append((out.detach(), logits.grad, hidden.grad))
    for fused, formula in zip(*results):
        assert torch.equal(fused, formula)
