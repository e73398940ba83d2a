"""The cloud-device protocol simulation: messages, bytes, device-side scores, fine-tuning, files."""

import copy
import csv
import re
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_FOFA, planted_config
from torch import nn

from recbole_fofa import cost
from recbole_fofa.analysis.protocol import (
    Channel,
    Cloud,
    Device,
    LiveTensorBytes,
    Message,
    _test_users,
    one_thread,
    run_protocol,
    sample_candidates,
    simulate_session,
)
from recbole_fofa.experiment import train
from recbole_fofa.search.extract import extract

FOFA = dict(TINY_FOFA, supernet_epochs=1, epochs=2)
C = 10


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    config = dict(planted_config(root), **FOFA)
    with pytest.MonkeyPatch.context() as patch, one_thread():
        patch.chdir(root)
        patch.setattr(sys, "argv", ["pytest"])
        return train("ForwardOFA", "planted", config_dict=config)


@pytest.fixture(scope="module")
def users(trained):
    return _test_users(trained.test_data)


@pytest.fixture
def perturbed(trained):
    """The trained model with blocks and mapper heads far from initialisation (so structures,
    slices and generated parameters all matter); restored afterwards."""
    model = trained.model
    saved = copy.deepcopy(model.state_dict())
    torch.manual_seed(3)
    with torch.no_grad():
        for block in model.blocks:
            for parameter in block.parameters():
                parameter.normal_(std=0.3)
        for head in model.mapper.heads:
            nn.init.normal_(head[-1].weight, std=0.3)
    yield model
    model.load_state_dict(saved)


def _session(model, users, user, steps=2, methods=("Forward-OFA", "fine-tuning")):
    seqs, lengths, targets = users
    target = int(targets[user])
    candidates = sample_candidates(np.random.default_rng(user), model.n_items, target, C)
    with one_thread():
        out = simulate_session(Cloud(model), seqs[user], lengths[user], target, candidates,
                               steps, methods=methods)
    return out, candidates, target


def _nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


# ----------------------------------------------------------------------------- building blocks
def test_message_counts_the_bytes_it_carries_and_the_channel_copies():
    tensors = {"a": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.int64),
               "c": torch.zeros(2, dtype=torch.bool)}
    message = Message("m", "down", tensors)
    assert message.nbytes == 3 * 4 * 4 + 5 * 8 + 2
    channel = Channel()
    received = channel.send(message)
    assert received.nbytes == message.nbytes and channel.bytes("down") == message.nbytes
    assert channel.bytes("up") == 0 and channel.message("m") is received
    assert all(received.tensors[k].data_ptr() != t.data_ptr() for k, t in tensors.items())
    with pytest.raises(ValueError, match="direction 'sideways'"):
        Message("m", "sideways", {})
    with pytest.raises(TypeError, match="not a tensor"):
        Message("m", "up", {"a": [1.0]})


def test_live_tensor_bytes_counts_allocations_until_freed():
    weight = torch.randn(100, 100, requires_grad=True)
    with LiveTensorBytes() as memory:
        a = torch.ones(1000)
        b = torch.ones(500)
        assert memory.live == memory.peak == 6000
        del a
        view = weight.t()  # a view of a tensor from before the block: nothing allocated
        assert memory.live == 2000
        del view
        loss = (b[:100] @ weight).sum()  # autograd keeps b's slice: a view of b, no new bytes
        assert memory.live == 2000 + 4
        loss.backward()
        assert memory.live == 2000 + 40000 + 4  # the gradient of weight is alive
        assert 42004 <= memory.peak <= 42004 + 400
        del b
        weight.grad = None
        assert memory.live == 4  # only the loss


def test_sample_candidates_holds_the_target_and_distinct_items():
    rng = np.random.default_rng(5)
    ids = sample_candidates(rng, 41, 17, 10)
    assert ids.dtype == torch.int64 and len(set(ids.tolist())) == 10 and 17 in ids.tolist()
    assert ids.min() >= 1 and ids.max() <= 40
    again = sample_candidates(np.random.default_rng(5), 41, 17, 10)
    assert torch.equal(ids, again)
    assert sorted(sample_candidates(rng, 41, 40, 40).tolist()) == list(range(1, 41))
    with pytest.raises(ValueError, match="n_candidates"):
        sample_candidates(rng, 41, 3, 41)
    with pytest.raises(ValueError, match="target"):
        sample_candidates(rng, 41, 0, 5)


# ----------------------------------------------------------------------------- one session
def test_bytes_are_the_sizes_of_the_tensors_sent(trained, users):
    model = trained.model
    seqs, lengths, _ = users
    d, n = model.shape.hidden_size, model.shape.n_blocks
    for user in (0, 7):
        out, candidates, target = _session(model, users, user)
        fofa, device = out["Forward-OFA"]
        ft, _ = out["fine-tuning"]
        sent = {m.name: m for m in fofa.messages}
        assert list(sent) == ["candidates", "history", "realtime_window", "submodel"]
        for message in fofa.messages + ft.messages:
            assert message.nbytes == _nbytes(message.tensors.values())
        length = int(lengths[user])
        history = torch.unique(seqs[user][:length])
        assert sent["candidates"].nbytes == C * d * 4 + C * 8
        assert torch.equal(sent["candidates"].tensors["item_ids"], candidates)
        assert target in sent["candidates"].tensors["item_ids"].tolist()
        assert sent["history"].nbytes == len(history) * (d * 4 + 8)
        assert sent["realtime_window"].direction == "up"
        assert set(sent["realtime_window"].tensors) == {"item_embeddings"}  # features, no ids
        assert sent["realtime_window"].nbytes == min(length, model.rt_len) * d * 4
        cfg = device.model.subnet
        params = int(model.shape.cost(cfg).encoder_params[0])
        assert sent["submodel"].nbytes == 4 * params + n  # float32 weights + bool mask
        assert not any(k.startswith("item_embedding") for k in sent["submodel"].tensors)
        assert fofa.bytes_up == sent["realtime_window"].nbytes
        assert fofa.bytes_down == sum(m.nbytes for m in fofa.messages if m.direction == "down")
        assert fofa.device_macs == int(model.shape.cost(cfg).encoder_macs[0]) + C * d
        full = {m.name: m for m in ft.messages}["full_model"]
        assert full.nbytes == 4 * int(model.shape.cost(model.shape.full()).encoder_params[0]) + n
        assert ft.bytes_up == 0 and ft.bytes_down == sum(m.nbytes for m in ft.messages)
        assert ft.device_macs == model.shape.full_macs() + cost.scoring_macs(C, d)
        assert ft.device_train_macs > 0 and fofa.device_train_macs == 0
        assert fofa.resident_bytes < fofa.peak_bytes < ft.peak_bytes
        assert 0 < fofa.forward_seconds <= fofa.adaptation_seconds and ft.adaptation_seconds > 0


def test_device_scores_from_the_received_state_equal_the_cloud_extraction(perturbed, users):
    model = perturbed
    assert model.stage == "adapt"
    seqs, lengths, _ = users
    for user in range(0, len(seqs), 15):
        out, candidates, _ = _session(model, users, user, methods=("Forward-OFA",))
        record, device = out["Forward-OFA"]
        seq, length = seqs[user][None], lengths[user][None]
        _, mask, _ = model.eval_structure(seq, length)
        cfg = device.model.subnet
        assert list(cfg.mask) == mask[0].tolist()  # the controller's decision from features
        reference = extract(model, cfg, seqs[user], lengths[user])
        with torch.no_grad():
            expected = reference.scores(seq, length, candidates)[0]
            tier = extract(model, cfg).scores(seq, length, candidates)[0]
        torch.testing.assert_close(device.scores, expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(device.scores, tier, atol=1e-3)  # generated params merged
        # The device's tensors are its own: none shares memory with the cloud's model.
        cloud_ptrs = {p.data_ptr() for p in model.parameters()}
        assert not any(p.data_ptr() in cloud_ptrs for p in device.model.parameters())
        assert device.model.item_embedding.num_embeddings == 1 + device.cache_ids.numel()
        assert record.kept_blocks == cfg.n_kept


def test_one_cloud_serving_many_users_reuses_tiers_and_gives_each_their_own_model(perturbed,
                                                                                 users):
    model = perturbed
    seqs, lengths, targets = users
    cloud = Cloud(model)
    picked = range(0, len(seqs), 4)
    with one_thread():
        for user in picked:
            target = int(targets[user])
            candidates = sample_candidates(np.random.default_rng(user), model.n_items, target, C)
            out = simulate_session(cloud, seqs[user], lengths[user], target, candidates,
                                   methods=("Forward-OFA",))
            _, device = out["Forward-OFA"]
            cfg = device.model.subnet
            seq, length = seqs[user][None], lengths[user][None]
            with torch.no_grad():
                expected = extract(model, cfg, seqs[user], lengths[user]).scores(
                    seq, length, candidates)[0]
            torch.testing.assert_close(device.scores, expected, atol=1e-5, rtol=1e-5)
    assert 1 <= len(cloud.tiers) < len(picked)  # structures repeat: one tier state each
    for cfg, tier in cloud.tiers.items():  # merging never wrote into a stored tier
        fresh = extract(model, cfg).state_dict()
        for key, tensor in tier.items():
            torch.testing.assert_close(tensor, fresh[key], atol=0, rtol=0)


def test_finetuning_zero_steps_is_the_unadapted_full_network(trained, users):
    model = trained.model
    seqs, lengths, _ = users
    user = 3
    out, candidates, target = _session(model, users, user, steps=0)
    record, device = out["fine-tuning"]
    full = extract(model, model.shape.full())
    with torch.no_grad():
        expected = full.scores(seqs[user][None], lengths[user][None], candidates)[0]
    torch.testing.assert_close(device.scores, expected, atol=1e-5, rtol=1e-5)
    assert record.device_train_macs == 0
    # Training pairs: prefixes of the device's own window -> the next item, never the target.
    prefixes, pair_lengths, labels = device.training_pairs()
    length = int(lengths[user])
    assert len(labels) == length - 1 and pair_lengths.tolist() == list(range(1, length))
    cached = device.cache_ids[labels - 1]
    assert torch.equal(cached, seqs[user][1:length])
    # k steps move the weights (not the frozen item table) and the scores.
    out2, _, _ = _session(model, users, user, steps=3)
    _, tuned = out2["fine-tuning"]
    assert not torch.allclose(tuned.scores, expected, atol=1e-4)
    assert torch.equal(tuned.model.item_embedding.weight[1:], tuned.cache_emb)
    assert out2["fine-tuning"][0].adaptation_seconds > record.adaptation_seconds


def test_device_rejects_messages_it_cannot_use(trained, users):
    seqs, lengths, _ = users
    device = Device(Cloud(trained.model).arch, seqs[0], lengths[0])
    with pytest.raises(ValueError, match="goes up"):
        device.receive(Message("realtime_window", "up", {}))
    with pytest.raises(RuntimeError, match="no sub-model"):
        device.build()
    with pytest.raises(RuntimeError, match="no item embeddings"):
        device.realtime_window()
    with pytest.raises(ValueError, match="item_seq_len"):
        Device(Cloud(trained.model).arch, seqs[0], 0)


# ----------------------------------------------------------------------------- the analysis
def test_run_protocol_writes_png_md_csv(trained, tmp_path):
    result = run_protocol("planted", output_dir=tmp_path / "out", n_candidates=C, sessions=3,
                          finetune_steps=2, trained=trained, progress=False)
    assert result.name == "protocol" and len(result.rows) == 2
    fofa, ft = result.rows
    assert fofa["method"] == "Forward-OFA" and ft["method"].startswith("fine-tuning (2 steps)")
    assert fofa["sessions"] == ft["sessions"] == 3
    assert fofa["bytes_up"] > 0 and ft["bytes_up"] == 0 and not fofa["backprop"] and ft["backprop"]
    assert fofa["model_bytes_down"] <= ft["model_bytes_down"]
    assert fofa["adaptation_ratio"] == pytest.approx(fofa["adaptation_ms"] / ft["adaptation_ms"])
    assert 0 < fofa["forward_ms"] <= fofa["adaptation_ms"] and ft["forward_ms"] > 0
    assert 0 <= fofa["NDCG@10"] <= fofa["Hit@10"] <= 1
    assert re.search(r"claim .* (holds|does not hold).*ratio of [\d.]+%", result.findings[0])
    files = result.files
    assert open(files["png"], "rb").read(4) == b"\x89PNG"
    md = open(files["md"]).read()
    assert "| Forward-OFA" in md and "protocol.png" in md and result.findings[0] in md
    with open(files["csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == [fofa["method"], ft["method"]]
    assert float(rows[0]["bytes_down"]) == pytest.approx(fofa["bytes_down"])
    assert result.settings["seeds"] == [2020]


def test_run_protocol_trains_forward_ofa(planted, tmp_path):
    dataset, config = planted
    config.update(FOFA, epochs=1)
    with one_thread():
        result = run_protocol(dataset, config_dict=config, output_dir=tmp_path / "o", seeds=[7],
                              n_candidates=5, sessions=2, finetune_steps=1, progress=False)
    assert result.settings["seeds"] == [7] and result.rows[0]["sessions"] == 2
    assert open(result.files["png"], "rb").read(4) == b"\x89PNG"


@pytest.mark.parametrize("option,value", [
    ("n_candidates", 1), ("n_candidates", 2.5), ("n_candidates", 41), ("sessions", 0),
    ("finetune_steps", -1), ("finetune_lr", 0), ("finetune_lr", float("nan")),
    ("seeds", []), ("seeds", [1, 2]),
])
def test_bad_options_raise_naming_the_option(trained, tmp_path, option, value):
    with pytest.raises(ValueError, match=rf"{option} = .*: use"):
        run_protocol("planted", output_dir=tmp_path, trained=trained, progress=False,
                     **{option: value})
