"""Tests of recbole_fofa.cost: analytic counts against FlopCounterMode, vectorisation, baselines."""

import sys
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from recbole_fofa import cost
from recbole_fofa.evaluator import measure
from recbole_fofa.subnet import SubnetConfig, SupernetShape

ROWS = {}  # id(model) -> one real interaction row of its training data


def flop_macs(fn, *args):
    """Independent reference: FlopCounterMode's FLOPs // 2, without going through cost.py."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() // 2


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- RecBole fixtures


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A tiny atomic dataset: 30 users x 12 interactions over 40 items."""
    root = tmp_path_factory.mktemp("cost")
    (root / "tiny").mkdir()
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(30):
        for t in range(12):
            rows.append(f"u{u}\ti{(u * 7 + t * 3) % 40}\t{u * 100 + t}")
    (root / "tiny" / "tiny.inter").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def build_model(tiny_root):
    """Factory: a RecBole model (class name) built on the tiny dataset, with tiny sizes."""
    # importing recbole_fofa (above) restored the numpy names RecBole's Config needs
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model

    mp = pytest.MonkeyPatch()
    mp.chdir(tiny_root)  # RecBole writes ./log etc. into the cwd
    mp.setattr(sys, "argv", ["pytest"])  # RecBole parses sys.argv

    def build(name, **overrides):
        config_dict = {
            "data_path": str(tiny_root),
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "train_neg_sample_args": None,
            "loss_type": "CE",
            "MAX_ITEM_LIST_LENGTH": 10,
            "hidden_size": 16,
            "inner_size": 32,
            "n_layers": 1,
            "n_heads": 2,
            "embedding_size": 16,
            "state": "ERROR",
            "show_progress": False,
            "checkpoint_dir": str(tiny_root / "saved"),
            "metrics": ["Hit", "NDCG"],
            "valid_metric": "NDCG@10",
            "device": "cpu",
            "use_gpu": False,
        }
        config_dict.update(overrides)
        config = Config(model=name, dataset="tiny", config_dict=config_dict)
        dataset = create_dataset(config)
        train_data, _, _ = data_preparation(config, dataset)
        model = get_model(name)(config, train_data._dataset).eval()
        ROWS[id(model)] = measure.one_row_interaction(train_data)
        return model

    yield build
    mp.undo()


def row(model):
    """The real one-row interaction the trainer would measure ``model`` on."""
    return ROWS[id(model)]


def full_sequence(model):
    L = model.max_seq_length
    item_seq = (torch.arange(L) % (model.n_items - 1) + 1).unsqueeze(0)
    return item_seq, torch.tensor([L])


# ----------------------------------------------------------------------------- transformer blocks


def test_block_formulas_at_sasrec_defaults():
    assert cost.block_macs(50, 64, 256) == 2_777_600
    assert cost.block_macs(50, 64, 256, n_heads=4) == 2_777_600
    assert isinstance(cost.block_macs(50, 64, 256), int)
    assert cost.block_params(64, 256) == 49_984
    assert isinstance(cost.block_params(64, 256), int)
    assert cost.macs_to_flops(2_777_600) == 5_555_200


def test_block_formulas_broadcast():
    inner = np.array([[64, 128, 256], [256, 128, 64]])
    heads = np.array([1, 2, 4])
    macs = cost.block_macs(50, 64, inner, heads)
    params = cost.block_params(64, inner)
    assert macs.dtype == np.int64 and macs.shape == (2, 3)
    assert params.dtype == np.int64 and params.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert macs[i, j] == cost.block_macs(50, 64, int(inner[i, j]), int(heads[j]))
            assert params[i, j] == cost.block_params(64, int(inner[i, j]))
    with pytest.raises(ValueError, match="n_heads"):
        cost.block_macs(10, 16, 32, n_heads=3)


@pytest.mark.parametrize(
    "L,d,d_ff,heads,n_layers", [(10, 16, 32, 2, 1), (7, 24, 48, 3, 2), (50, 64, 256, 2, 2)]
)
def test_encoder_matches_flop_counter(L, d, d_ff, heads, n_layers):
    from recbole.model.layers import TransformerEncoder, TransformerLayer

    enc = TransformerEncoder(n_layers=n_layers, n_heads=heads, hidden_size=d, inner_size=d_ff)
    enc.eval()
    x = torch.randn(1, L, d)
    mask = torch.zeros(1, 1, L, L)
    per_block = cost.block_macs(L, d, d_ff, heads)
    measured = flop_macs(lambda: enc(x, mask))
    assert measured == n_layers * per_block
    assert cost.encoder_macs(np.ones((1, n_layers), bool), [per_block] * n_layers)[0] == measured

    layer = TransformerLayer(heads, d, d_ff, 0.0, 0.0, "gelu", 1e-12)
    assert cost.block_params(d, d_ff) == n_params(layer)
    assert cost.encoder_params(np.ones((1, n_layers)), [cost.block_params(d, d_ff)] * n_layers)[
        0
    ] == n_params(enc)


def test_extracted_subencoder_matches_masked_count():
    """Running only the kept layers costs exactly the masked sum (a skipped block costs 0)."""
    from recbole.model.layers import TransformerEncoder

    L, d, d_ff, n = 9, 16, 40, 5
    enc = TransformerEncoder(n_layers=n, n_heads=2, hidden_size=d, inner_size=d_ff).eval()
    x, att = torch.randn(1, L, d), torch.zeros(1, 1, L, L)
    rng = np.random.default_rng(0)
    per_block = np.full(n, cost.block_macs(L, d, d_ff, 2))
    for mask in rng.integers(0, 2, size=(4, n)).astype(bool):

        def run(mask=mask):
            h = x
            for keep, layer in zip(mask, enc.layer):
                if keep:
                    h = layer(h, att)
            return h

        assert flop_macs(run) == cost.encoder_macs(mask[None], per_block)[0]


# ----------------------------------------------------------------------------- vectorisation


def test_encoder_vectorised_equals_per_row_loop():
    rng = np.random.default_rng(1)
    masks = rng.random((200, 6)) < 0.5
    per_block = cost.block_macs(20, 32, rng.choice([64, 128], size=6), 2)
    per_row = cost.block_macs(20, 32, rng.choice([64, 128], size=(200, 6)), 2)
    params = cost.block_params(32, rng.choice([64, 128], size=6))

    loop = np.array([sum(int(per_block[j]) for j in range(6) if m[j]) for m in masks])
    loop_rows = np.array([sum(int(per_row[i, j]) for j in range(6) if masks[i, j])
                          for i in range(200)])
    loop_params = np.array([sum(int(params[j]) for j in range(6) if m[j]) for m in masks])

    out = cost.encoder_macs(masks, per_block)
    assert out.dtype == np.int64 and out.shape == (200,)
    np.testing.assert_array_equal(out, loop)
    np.testing.assert_array_equal(cost.encoder_macs(masks.astype(int), per_block), loop)
    np.testing.assert_array_equal(cost.encoder_macs(torch.from_numpy(masks), per_block), loop)
    np.testing.assert_array_equal(cost.encoder_macs(masks, per_row), loop_rows)
    np.testing.assert_array_equal(cost.encoder_params(masks, params), loop_params)


def test_encoder_rejects_bad_input():
    with pytest.raises(ValueError, match="blocks"):
        cost.encoder_macs(np.ones((3, 6)), np.ones(5))
    with pytest.raises(ValueError, match="0 and 1"):
        cost.encoder_macs(np.full((3, 6), 2), np.ones(6))
    with pytest.raises(ValueError, match="shape"):
        cost.encoder_macs(np.ones((2, 3, 6)), np.ones(6))


def test_ten_thousand_masks_are_fast():
    rng = np.random.default_rng(2)
    masks = rng.random((10_000, 6)) < 0.5
    per_block = np.full(6, cost.block_macs(50, 64, 256))
    cost.encoder_macs(masks[:10], per_block)  # warm-up
    start = time.perf_counter()
    out = cost.encoder_macs(masks, per_block)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, elapsed
    np.testing.assert_array_equal(out, masks.sum(1) * 2_777_600)


# ----------------------------------------------------------------------------- cloud side


def test_flop_counter_counts_gru_on_cpu():
    """nn.GRU decomposes into mm ops on CPU, so FlopCounterMode counts all 3 gates, every step."""
    gru = nn.GRU(8, 12, num_layers=2, batch_first=True, bias=False)
    x = torch.randn(1, 5, 8)
    assert flop_macs(gru, x) == 5 * 3 * 12 * (8 + 12) + 5 * 3 * 12 * (12 + 12)


@pytest.mark.parametrize("extractor", ["gru", "mean"])
def test_controller_matches_flop_counter(extractor):
    d, n, rt = 16, 6, 10
    gru, head = nn.GRU(d, d, batch_first=True), nn.Linear(d, n)
    x = torch.randn(1, rt, d)

    def controller():
        if extractor == "gru":
            _, h = gru(x)
            z = h[-1]
        else:
            z = x.mean(dim=1)
        return torch.sigmoid(head(z))

    assert flop_macs(controller) == cost.controller_macs(d, n, rt, extractor)
    expected = n_params(head) + (n_params(gru) if extractor == "gru" else 0)
    assert cost.controller_params(d, n, extractor) == expected


def test_controller_rejects_unknown_extractor():
    with pytest.raises(ValueError, match="extractor.*gru.*mean"):
        cost.controller_macs(16, 6, 10, "lstm")
    with pytest.raises(ValueError, match="extractor"):
        cost.controller_params(16, 6, "attention")


class Mapper(nn.Module):
    """The mapper architecture the formulas describe, built independently of cost.py."""

    def __init__(self, d, d_ff, n, r, h, mode):
        super().__init__()
        self.d, self.n, self.r, self.mode = d, n, r, mode
        out = 2 * r * r + 2 * d
        if mode == "parallel":
            self.heads = nn.ModuleList(
                nn.Sequential(nn.Linear(d + n, h), nn.Tanh(), nn.Linear(h, out)) for _ in range(n)
            )
        else:
            self.mlp = nn.Sequential(nn.Linear(d + n, h), nn.Tanh(), nn.Linear(h, n * out))
        self.U1 = nn.Parameter(torch.randn(n, d_ff, r))
        self.V1 = nn.Parameter(torch.randn(n, r, d))
        self.U2 = nn.Parameter(torch.randn(n, d, r))
        self.V2 = nn.Parameter(torch.randn(n, r, d_ff))

    def forward(self, z, mask):
        r = self.r
        if self.mode == "shared":
            all_out = self.mlp(z).view(1, self.n, -1)
        deltas = []
        for block in range(self.n):
            if not mask[block]:
                continue
            o = self.heads[block](z) if self.mode == "parallel" else all_out[:, block]
            g1 = o[:, : r * r].reshape(r, r)
            g2 = o[:, r * r: 2 * r * r].reshape(r, r)
            w1 = (self.U1[block] @ g1) @ self.V1[block]  # d_ff x d
            w2 = (self.U2[block] @ g2) @ self.V2[block]  # d x d_ff
            deltas.append((w1, w2, o[:, 2 * r * r:]))
        return deltas


@pytest.mark.parametrize("mode", ["parallel", "shared"])
def test_mapper_matches_flop_counter(mode):
    d, d_ff, n, r, h = 16, 40, 5, 3, 12
    mapper = Mapper(d, d_ff, n, r, h, mode)
    z = torch.randn(1, d + n)
    for mask in ([1, 0, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]):
        expected = cost.mapper_macs(d, d_ff, n, r, h, mode, sum(mask))
        assert flop_macs(mapper, z, mask) == expected
    assert cost.mapper_params(d, d_ff, n, r, h, mode) == n_params(mapper)
    kept = np.array([0, 2, 5])
    np.testing.assert_array_equal(
        cost.mapper_macs(d, d_ff, n, r, h, mode, kept),
        [cost.mapper_macs(d, d_ff, n, r, h, mode, int(k)) for k in kept],
    )


def test_mapper_none_and_unknown_mode():
    assert cost.mapper_macs(16, 32, 6, 8, 16, "none", 4) == 0
    assert cost.mapper_params(16, 32, 6, 8, 16, "none") == 0
    with pytest.raises(ValueError, match="mapper_mode.*parallel.*shared.*none"):
        cost.mapper_macs(16, 32, 6, 8, 16, "serial", 4)
    with pytest.raises(ValueError, match="mapper_mode"):
        cost.mapper_params(16, 32, 6, 8, 16, "serial")


def test_scoring_and_device_fixed_params():
    d, C = 16, 37
    user, cands = torch.randn(1, d), torch.randn(C, d)
    assert flop_macs(lambda: user @ cands.t()) == cost.scoring_macs(C, d) == C * d
    assert cost.candidate_params(C, d) == C * d
    pos, ln = nn.Embedding(10, d), nn.LayerNorm(d)
    assert cost.device_params_fixed(10, d) == n_params(pos) + n_params(ln)


# ----------------------------------------------------------------------------- Forward-OFA


def shape(**changes):
    sizes = dict(seq_len=20, hidden_size=32, inner_size=64, n_heads=2, n_blocks=6, rt_len=10,
                 extractor="gru", mapper_rank=4, mapper_hidden=16, n_candidates=100)
    return SupernetShape(**dict(sizes, **changes))


@pytest.mark.parametrize("mode", ["parallel", "shared", "none"])
def test_forward_ofa_cost_breakdown(mode):
    rng = np.random.default_rng(3)
    masks = rng.random((50, 6)) < 0.6
    b = cost.forward_ofa_cost(shape(mapper_mode=mode), masks)
    per_block = cost.block_macs(20, 32, 64, 2)
    kept = masks.sum(1)
    np.testing.assert_array_equal(b.kept_blocks, kept)
    np.testing.assert_array_equal(b.encoder_macs, kept * per_block)
    np.testing.assert_array_equal(
        b.encoder_params, cost.device_params_fixed(20, 32) + kept * cost.block_params(32, 64)
    )
    np.testing.assert_array_equal(b.mapper_macs, cost.mapper_macs(32, 64, 6, 4, 16, mode, kept))
    assert b.mapper_params == cost.mapper_params(32, 64, 6, 4, 16, mode)
    assert b.scoring_macs == b.candidate_params == 100 * 32
    assert b.controller_macs == cost.controller_macs(32, 6, 10, "gru")
    assert b.controller_params == cost.controller_params(32, 6, "gru")


def test_forward_ofa_cost_elastic_widths_heads_and_errors():
    masks = np.array([[1, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1]], bool)
    widths = np.array([32, 64, 64, 16, 32, 64])
    heads = np.array([1, 2, 2, 1, 2, 1])
    b = cost.forward_ofa_cost(shape(), masks, widths, heads)
    per_block = cost.block_macs(20, 32, widths, heads, head_size=16)
    np.testing.assert_array_equal(b.encoder_macs, masks @ per_block)
    attn = heads * 16
    np.testing.assert_array_equal(
        b.encoder_params,
        cost.device_params_fixed(20, 32) + masks @ cost.block_params(32, widths, attn))
    # full width everywhere: the mapper formulas agree with the scalar ones
    wide = cost.forward_ofa_cost(shape(mapper_mode="shared"), masks)
    np.testing.assert_array_equal(wide.mapper_macs,
                                  cost.mapper_macs(32, 64, 6, 4, 16, "shared", masks.sum(1)))
    assert wide.mapper_params == cost.mapper_params(32, 64, 6, 4, 16, "shared")
    with pytest.raises(ValueError, match="6"):
        cost.forward_ofa_cost(shape(), np.ones((2, 5)))
    with pytest.raises(ValueError, match="extractor"):
        cost.forward_ofa_cost(shape(extractor="cnn"), masks)


def test_elastic_block_cost_equals_a_sliced_recbole_layer():
    """A block keeping h of H heads and w of d_ff units costs what the sliced Linears count."""
    L, d, H, f, h, w = 12, 32, 4, 64, 2, 24
    a = h * (d // H)
    x = torch.randn(1, L, d)
    qkv = [nn.Linear(d, a) for _ in range(3)]
    out, ff1, ff2 = nn.Linear(a, d), nn.Linear(d, w), nn.Linear(w, d)

    def sliced_block():
        q, k, v = (layer(x).view(1, L, h, d // H).transpose(1, 2) for layer in qkv)
        ctx = (q @ k.transpose(-1, -2)).softmax(-1) @ v
        y = out(ctx.transpose(1, 2).reshape(1, L, a))
        return ff2(ff1(y).relu())

    assert flop_macs(sliced_block) == cost.block_macs(L, d, w, h, head_size=d // H)
    layers = [*qkv, out, ff1, ff2, nn.LayerNorm(d), nn.LayerNorm(d)]
    assert sum(n_params(m) for m in layers) == cost.block_params(d, w, a)
    assert cost.block_macs(L, d, f, H, head_size=d // H) == cost.block_macs(L, d, f, H)


def test_subnet_config_is_canonical_and_round_trips():
    net = shape(n_blocks=3)
    a = SubnetConfig((64, 0, 32), (2, 1, 1))  # a dropped block carries no head count
    b = SubnetConfig((64, 16, 32), (2, 0, 1))
    assert a == b and hash(a) == hash(b) and a.key == b.key == "64x2|-|32x1"
    assert a.mask == (True, False, True) and a.n_kept == 2
    assert SubnetConfig.from_key(a.key) == a == SubnetConfig.from_json(a.to_json())
    assert net.from_mask([1, 0, 1]) == SubnetConfig((64, 0, 64), (2, 0, 2))
    assert net.full().key == "64x2|64x2|64x2"
    with pytest.raises(ValueError, match="width 128 exceeds inner_size 64"):
        net.validate(SubnetConfig((128, 0, 0), (1, 0, 0)))
    with pytest.raises(ValueError, match="3 heads exceed n_heads 2"):
        net.validate(SubnetConfig((64, 0, 0), (3, 0, 0)))
    with pytest.raises(ValueError, match="at least one block"):
        net.validate(SubnetConfig((0, 0, 0), (0, 0, 0)))
    with pytest.raises(ValueError, match="integers"):
        SubnetConfig((1.5, 0, 0), (1, 0, 0))
    costs = net.cost([a, net.full()])
    np.testing.assert_array_equal(costs.kept_blocks, [2, 3])
    assert costs.encoder_macs[1] == net.full_macs() == 3 * cost.block_macs(20, 32, 64, 2)


def test_one_budget_conversion_for_fractions_and_macs():
    net = shape()
    assert net.budget_macs(0.5) == 0.5 * net.full_macs()
    assert net.budget_macs("400K MACs") == 400_000
    with pytest.raises(ValueError, match="`search_budgets` = 1.5"):
        net.budget_macs(1.5, "search_budgets")


# ----------------------------------------------------------------------------- RecBole baselines


def test_sasrec_cost_is_exact(build_model):
    model = build_model("SASRec")
    item_seq, item_seq_len = full_sequence(model)
    c = cost.sasrec_cost(model)
    assert c.source == "analytic" and c.blocks == 1
    assert c.macs == measure.measure_macs(model.forward, item_seq, item_seq_len) > 0
    assert c.macs == cost.block_macs(10, 16, 32, 2)
    assert c.params == n_params(model) - model.item_embedding.weight.numel()
    assert c.params + c.excluded_params == n_params(model)
    assert measure.model_cost(model) == c


def test_bert4rec_cost_is_exact(build_model):
    model = build_model("BERT4Rec", n_layers=2)
    item_seq, item_seq_len = full_sequence(model)
    c = cost.bert4rec_cost(model)
    # predict() drops the oldest item and appends the mask token: length stays max_seq_length
    rebuilt = model.reconstruct_test_data(item_seq.clone(), item_seq_len)
    assert rebuilt.shape == (1, model.max_seq_length)
    assert rebuilt[0, -1] == model.mask_token
    assert c.macs == measure.measure_macs(model.forward, rebuilt)
    L, d = 10, 16
    assert c.macs == 2 * cost.block_macs(L, d, 32, 2) + L * d * d  # blocks + output_ffn
    assert c.macs != 2 * cost.block_macs(L + 1, d, 32, 2) + (L + 1) * d * d
    inter = row(model)
    assert measure.measure_macs(model.predict, inter) == c.macs  # 1 candidate: no matmul
    excluded = model.item_embedding.weight.numel() + model.output_bias.numel()
    assert c.params == n_params(model) - excluded
    assert c.params + c.excluded_params == n_params(model)
    assert c.blocks == 2 and c.source == "analytic"
    assert measure.model_cost(model) == c


def test_gru4rec_analytic_equals_measured(build_model):
    model = build_model("GRU4Rec", hidden_size=24, num_layers=2)
    item_seq, item_seq_len = full_sequence(model)
    c = measure.model_cost(model)
    assert c == cost.gru4rec_cost(model)
    assert c.source == "analytic" and c.blocks == 2
    assert c.macs == measure.measure_macs(model.forward, item_seq, item_seq_len)
    assert c.macs == measure.measure_macs(model.predict, row(model))
    assert c.params == n_params(model) - model.item_embedding.weight.numel()


@pytest.mark.parametrize("name", ["NARM", "STAMP", "Caser", "NextItNet", "LightSANs"])
def test_model_cost_measures_other_models(build_model, name):
    model = build_model(name)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    c = measure.model_cost(model, row(model))
    assert model.training  # measured on a copy: mode and weights untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert c.source == "measured" and c.model == name and "predict()" in c.covers
    assert 0 < c.macs < 10**9
    item_tables = sum(m.weight.numel() for m in model.modules()
                      if isinstance(m, nn.Embedding) and m.num_embeddings == model.n_items)
    users = [m for m in model.modules()
             if isinstance(m, nn.Embedding) and m.num_embeddings == getattr(model, "n_users", -1)]
    other_users = sum(m.weight.numel() - m.embedding_dim for m in users)  # the device keeps 1 row
    assert (name == "Caser") == bool(users)  # Caser is the one with a user embedding
    assert c.candidate_params == item_tables > 0
    assert c.excluded_params == item_tables + other_users
    assert c.params == n_params(model) - item_tables - other_users
    assert c.uncounted_ops == ()


def test_uncounted_ops_are_reported():
    x = torch.randn(1, 8, 4)
    macs, uncounted = measure._measure(lambda: torch.fft.irfft(torch.fft.rfft(x, dim=1), dim=1))
    assert macs == 0
    assert any("fft" in op for op in uncounted)


class _Fake(nn.Module):
    """A model whose predict multiplies no matrices (or fails), and optionally ranks all items."""

    ITEM_SEQ, ITEM_ID = "item_id_list", "item_id"
    n_items = 10

    def __init__(self, fail=False, full_sort=False):
        super().__init__()
        self.item_embedding = nn.Embedding(self.n_items, 4)
        self.fail, self.full_sort = fail, full_sort

    def predict(self, interaction):
        if self.fail:
            raise RuntimeError("boom")
        emb = self.item_embedding(interaction[self.ITEM_SEQ]).sum(dim=1)
        return (emb * self.item_embedding(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction):
        if not self.full_sort:
            raise AssertionError("full ranking disabled")
        emb = self.item_embedding(interaction[self.ITEM_SEQ]).sum(dim=1)
        return emb @ self.item_embedding.weight.T


def _fake_row():
    from recbole.data.interaction import Interaction

    return Interaction({"item_id_list": torch.tensor([[1, 2, 3]]), "item_id": torch.tensor([4])})


def test_element_wise_models_report_zero_with_their_source():
    c = measure.model_cost(_Fake(), _fake_row())
    assert c.macs == 0 and c.source == cost.SOURCE_ELEMENTWISE
    assert "element-wise" in c.source and c.covers == "predict() on one interaction"
    assert c.candidate_params == 40 and c.params == 0


def test_full_ranking_models_are_measured_on_full_sort_predict():
    c = measure.model_cost(_Fake(fail=True, full_sort=True), _fake_row())
    assert c.macs == 10 * 4 and c.source == "measured"  # one user x 10 items x width 4
    assert "full_sort_predict" in c.covers and "every item" in c.covers


def test_unmeasurable_models_raise_naming_the_reasons():
    with pytest.raises(cost.CostNotMeasurableError, match="RuntimeError: boom") as err:
        measure.model_cost(_Fake(fail=True), _fake_row())
    assert isinstance(err.value, ValueError) and err.value.model_name == "_Fake"
    assert "full ranking disabled" in err.value.reason
    with pytest.raises(ValueError, match="pass `interaction`"):
        measure.model_cost(_Fake())


def test_fearec_fft_is_reported_as_uncounted(build_model):
    """FEARec mixes in the frequency domain; FlopCounterMode has no FFT formula (lower bound)."""
    model = build_model("FEARec", n_layers=2)  # FEARec divides by n_layers - 1
    c = measure.model_cost(model, row(model))
    assert c.source == cost.SOURCE_LOWER_BOUND and c.macs > 0
    assert any("fft" in op for op in c.uncounted_ops)
