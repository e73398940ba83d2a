"""extract(): a sub-network as a standalone module, equal to the supernet, exportable, costed."""

import pytest
import torch
from conftest import TINY_FOFA
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from recbole_fofa import cost
from recbole_fofa.model import Stage
from recbole_fofa.quick_start import prepare
from recbole_fofa.search.extract import SubnetModel, extract, subnet_state
from recbole_fofa.subnet import SubnetConfig

CONFIGS = [
    SubnetConfig((32, 32, 32), (2, 2, 2)),
    SubnetConfig((8, 0, 24), (1, 0, 2)),
    SubnetConfig((0, 16, 0), (0, 1, 0)),
]


@pytest.fixture
def fofa(planted):
    dataset, config = planted
    config.update(TINY_FOFA)
    _, model, (_, _, test) = prepare("ForwardOFA", dataset, config_dict=config)
    torch.manual_seed(1)
    for block in model.blocks:  # weights far from initialisation, so slices matter
        for parameter in block.parameters():
            nn.init.normal_(parameter, std=0.3)
    batch = next(iter(test))[0]
    return model.eval(), batch["item_id_list"], batch["item_length"]


def _adapt(model):
    model.stage = Stage.ADAPT
    for head in model.mapper.heads:
        nn.init.normal_(head[-1].weight, std=0.3)
    return model


def _supernet(model, cfg, seq, lengths):
    with torch.no_grad(), model.active_subnet(cfg):
        return model.forward(seq, lengths), model.full_sort_predict({
            model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths})


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.key)
def test_tier_extraction_equals_the_supernet_under_active_subnet(fofa, cfg):
    model, seq, lengths = fofa
    sub = extract(model, cfg)
    assert isinstance(sub, SubnetModel) and not sub.training and not sub.user_specific
    assert len(sub.blocks) == cfg.n_kept and sub.subnet == cfg
    assert [b.dense_1.out_features for b in sub.blocks] == [w for w in cfg.widths if w]
    assert [b.query.out_features for b in sub.blocks] == [
        h * model.shape.head_size for h in cfg.heads if h]
    user, scores = _supernet(model, cfg, seq, lengths)
    with torch.no_grad():
        torch.testing.assert_close(sub(seq, lengths), user, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sub.scores(seq, lengths), scores, atol=1e-5, rtol=1e-5)
        candidates = torch.tensor([3, 1, 7])
        torch.testing.assert_close(sub.scores(seq, lengths, candidates), scores[:, candidates])
        rows = torch.stack([candidates, candidates.flip(0)]).repeat(len(seq) // 2 + 1, 1)
        rows = rows[: len(seq)]
        torch.testing.assert_close(sub.scores(seq, lengths, rows), scores.gather(1, rows))
    with pytest.raises(ValueError, match="candidates"):
        sub.scores(seq, lengths, torch.ones(2, 2, 2, dtype=torch.long))


@pytest.mark.parametrize("cfg", CONFIGS[1:], ids=lambda c: c.key)
def test_user_extraction_folds_in_that_users_generated_parameters(fofa, cfg):
    model, seq, lengths = fofa
    _adapt(model)
    user, _ = _supernet(model, cfg, seq, lengths)
    tier = extract(model, cfg)
    for row in (0, 5, len(seq) - 1):
        sub = extract(model, cfg, seq[row], lengths[row])
        assert sub.user_specific
        one = (seq[row : row + 1], lengths[row : row + 1])
        with torch.no_grad():
            torch.testing.assert_close(sub(*one), user[row : row + 1], atol=1e-5, rtol=1e-5)
            assert not torch.allclose(tier(*one), user[row : row + 1], atol=1e-3)
    # The length defaults to the user's non-padding items.
    row = int(lengths.argmin())
    with torch.no_grad():
        torch.testing.assert_close(extract(model, cfg, seq[row])(seq[row : row + 1],
                                                                 lengths[row : row + 1]),
                                   user[row : row + 1], atol=1e-5, rtol=1e-5)
    assert not model.training  # extraction leaves the model's mode alone
    # z: the behaviour code computed beforehand (the cloud's path) gives the same sub-model
    with torch.no_grad():
        z, _ = model.code_and_logits(seq[row : row + 1], lengths[row : row + 1])
        torch.testing.assert_close(extract(model, cfg, z=z)(seq[row : row + 1],
                                                            lengths[row : row + 1]),
                                   user[row : row + 1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", CONFIGS[1:], ids=lambda c: c.key)
def test_subnet_state_is_the_extracted_models_weights_without_building_one(fofa, cfg):
    model, seq, lengths = fofa
    _adapt(model)
    with torch.no_grad():
        z, _ = model.code_and_logits(seq[:1], lengths[:1])
        gen = model.generated_params(z, cfg)
    state = subnet_state(model, cfg, gen)
    expected = extract(model, cfg, z=z).state_dict()
    assert list(state) == list(expected)
    for key, tensor in state.items():
        torch.testing.assert_close(tensor, expected[key], atol=0, rtol=0)
        assert not tensor.requires_grad
    # fresh tensors: changing them leaves the supernet alone
    before = model.blocks[0].feed_forward.dense_1.weight.clone()
    for tensor in state.values():
        tensor.zero_()
    torch.testing.assert_close(model.blocks[0].feed_forward.dense_1.weight, before)
    # the cloud's payload: everything but the item table
    payload = subnet_state(model, cfg, gen, items=False)
    assert set(expected) - set(payload) == {"item_embedding.weight"}
    # a model rebuilt from the payload and an item table scores like the extracted one
    table = model.item_embedding.weight.detach().clone()
    rebuilt = SubnetModel.from_state({"item_embedding.weight": table, **payload}, cfg.mask,
                                     model.shape.head_size, "gelu", model.LayerNorm.eps)
    assert rebuilt.subnet == cfg and not rebuilt.training
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(seq[:1], lengths[:1]),
                                   extract(model, cfg, z=z)(seq[:1], lengths[:1]))


def test_extract_rejects_bad_inputs(fofa):
    model, seq, lengths = fofa
    with pytest.raises(ValueError, match="ONE user"):
        extract(model, CONFIGS[1], seq[:2])
    with pytest.raises(ValueError, match="item_seq_len"):
        extract(model, CONFIGS[1], seq[0], 0)
    with pytest.raises(ValueError, match="inner_size"):
        extract(model, SubnetConfig((64, 0, 0), (1, 0, 0)))
    with pytest.raises(TypeError, match="SubnetConfig"):
        extract(model, (True, False, True))
    z = torch.zeros(1, model.hidden_size)
    with pytest.raises(ValueError, match="not both"):
        extract(model, CONFIGS[1], seq[0], z=z)
    with pytest.raises(ValueError, match=r"\[1, d\]"):
        extract(model, CONFIGS[1], z=torch.zeros(2, model.hidden_size))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.key)
def test_flop_counter_on_the_extracted_encoder_equals_the_cost_model(fofa, cfg):
    """forward = embedding (0) + kept blocks + gather (0): exactly ``encoder_macs`` per user;
    scores add ``C*d``; parameters besides the item table are exactly ``encoder_params``."""
    model, seq, lengths = fofa
    _adapt(model)
    sub = extract(model, cfg, seq[0], lengths[0])
    expected = model.shape.cost(cfg)
    assert seq.size(1) == model.shape.seq_len
    with torch.no_grad():
        for rows in (1, 4):
            with FlopCounterMode(display=False) as counter:
                sub(seq[:rows], lengths[:rows])
            assert counter.get_total_flops() == 2 * rows * int(expected.encoder_macs[0])
        with FlopCounterMode(display=False) as counter:
            sub.scores(seq[:1], lengths[:1])
    n_items, d = model.item_embedding.weight.shape
    assert counter.get_total_flops() == 2 * (int(expected.encoder_macs[0])
                                             + cost.scoring_macs(n_items, d))
    device_params = sum(p.numel() for name, p in sub.named_parameters()
                        if not name.startswith("item_embedding"))
    assert device_params == int(expected.encoder_params[0])


def test_extracted_sub_model_exports(fofa):
    model, seq, lengths = fofa
    _adapt(model)
    sub = extract(model, CONFIGS[1], seq[2], lengths[2])
    exported = torch.export.export(sub, (seq, lengths))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(seq, lengths), sub(seq, lengths))
    # Standalone: no tensor shares memory with the supernet.
    shared = {p.data_ptr() for p in model.parameters()}
    assert not any(p.data_ptr() in shared for p in sub.parameters())
