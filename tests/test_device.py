"""The device side: ONNX export of tiers and users' sub-models, the deployed session protocol,
runtime measurements, the cloud side, and the device extra's error."""

import json
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_FOFA, planted_config
from torch import nn

from recbole_fofa import cli, cost
from recbole_fofa.device import runtime
from recbole_fofa.device.cloud import cloud_macs, cloud_throughput, serve_batch
from recbole_fofa.device.export import (
    FORMATS,
    LOWRANK,
    export_tiers,
    export_user,
    from_sasrec,
    plain_subnet,
    user_input_names,
)
from recbole_fofa.device.session import (
    DeployedCloud,
    Message,
    pack,
    run_sessions,
    unpack,
    user_tensors,
)
from recbole_fofa.model import Stage
from recbole_fofa.quick_start import export_checkpoint, prepare
from recbole_fofa.search.extract import FOLDED, extract, merge_generated, subnet_state
from recbole_fofa.subnet import SubnetConfig, SupernetShape

HAS_EXTRA = runtime.available()
needs_extra = pytest.mark.skipif(not HAS_EXTRA, reason="the `device` extra is not installed")
TIERS = [
    (0.3, SubnetConfig((0, 16, 0), (0, 1, 0))),
    (0.6, SubnetConfig((8, 0, 24), (1, 0, 2))),
    (1.0, SubnetConfig((32, 32, 32), (2, 2, 2))),
]


@pytest.fixture(scope="module")
def fofa(tmp_path_factory):
    """A tiny adapt-stage ForwardOFA with blocks and mapper heads far from initialisation, and a
    test batch: (model, item_seq, item_seq_len)."""
    root = tmp_path_factory.mktemp("device")
    config = dict(planted_config(root), **TINY_FOFA)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setattr(sys, "argv", ["pytest"])
        _, model, (_, _, test) = prepare("ForwardOFA", "planted", config_dict=config)
    torch.manual_seed(1)
    with torch.no_grad():
        for block in model.blocks:
            for parameter in block.parameters():
                nn.init.normal_(parameter, std=0.3)
        for head in model.mapper.heads:
            nn.init.normal_(head[-1].weight, std=0.3)
    model.stage = Stage.ADAPT
    batch = next(iter(test))[0]
    return model.eval(), batch["item_id_list"], batch["item_length"]


def _close(actual, expected, rtol=1e-5):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(np.abs(expected).max(), 1e-12)
    assert np.abs(actual - expected).max() <= rtol * scale, np.abs(actual - expected).max()


# ----------------------------------------------------------------------------- the extra
def test_without_the_extra_export_names_it(fofa, monkeypatch, tmp_path):
    model, _, _ = fofa
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails as if not installed
    assert not runtime.available()
    with pytest.raises(ImportError, match=r"pip install 'recbole-fofa\[device\]'"):
        export_tiers(model, TIERS[:1], tmp_path)
    # the CLI checks before loading the checkpoint or searching: one line, no traceback
    with pytest.raises(SystemExit, match=r"recbole-fofa\[device\]"):
        cli.main(["--export", "--checkpoint=nowhere.pth", f"--output={tmp_path}"])
    monkeypatch.setitem(sys.modules, "executorch", None)
    with pytest.raises(ImportError, match=r"recbole-fofa\[executorch\]"):
        export_checkpoint("nowhere.pth", fmt="executorch")


def test_export_cli_flags_are_checked():
    with pytest.raises(SystemExit, match="--export needs --checkpoint"):
        cli.main(["--export"])
    with pytest.raises(SystemExit, match="--search and --export cannot be combined"):
        cli.main(["--export", "--search", "--checkpoint=x.pth"])
    assert set(FORMATS) == {"onnx", "executorch"}


# ----------------------------------------------------------------------------- building blocks
@needs_extra
def test_pack_round_trips_named_tensors():
    tensors = {"a": torch.arange(6, dtype=torch.float32).view(2, 3),
               "ids": torch.tensor([3, 1], dtype=torch.int64)}
    payload = pack("blocks|-|x", tensors)
    name, back = unpack(payload)
    assert name == "blocks|-|x" and list(back) == ["a", "ids"]
    for key, tensor in tensors.items():
        assert back[key].dtype == tensor.numpy().dtype
        np.testing.assert_array_equal(back[key], tensor.numpy())
    raw = sum(t.numel() * t.element_size() for t in tensors.values())
    assert raw < len(payload) < raw + 100  # names, types and shapes: a few bytes each
    assert Message("x", "down", payload).nbytes == len(payload)
    with pytest.raises(ValueError, match="direction"):
        Message("x", "sideways", payload)


def test_user_tensors_are_the_folded_weights_or_the_cores(fofa):
    model, seq, lengths = fofa
    cfg = TIERS[1][1]
    z, _ = model.code_and_logits(seq[:1], lengths[:1])
    gen = model.generated_params(z, cfg)
    folded = user_tensors(model, cfg, gen, "folded")
    lowrank = user_tensors(model, cfg, gen, "lowrank")
    assert list(folded) == user_input_names(2, "folded")
    assert list(lowrank) == user_input_names(2, "lowrank")
    assert list(folded)[:4] == [f"blocks.0.{name}" for name in FOLDED]
    assert list(lowrank)[:4] == [f"blocks.0.{name}" for name in LOWRANK]
    merged = merge_generated(subnet_state(model, cfg, items=False), model, cfg, gen)
    for name, tensor in folded.items():
        torch.testing.assert_close(tensor, merged[name], atol=0, rtol=0)
    r, d = model.shape.mapper_rank, model.shape.hidden_size
    assert sum(t.numel() for t in lowrank.values()) == cfg.n_kept * (2 * r * r + 2 * d)
    assert sum(t.numel() for t in folded.values()) == sum(2 * w * d + 2 * d
                                                          for w in cfg.widths if w)
    assert user_tensors(model, cfg, None, "folded") == {}
    with pytest.raises(ValueError, match="variant"):
        user_tensors(model, cfg, gen, "baked")


def test_from_sasrec_runs_recboles_sasrec(planted):
    dataset, config = planted
    config.update(n_layers=2)
    _, sasrec, (_, _, test) = prepare("SASRec", dataset, config_dict=config)
    sasrec.eval()
    batch = next(iter(test))[0]
    seq, lengths = batch["item_id_list"], batch["item_length"]
    sub = from_sasrec(sasrec)
    assert len(sub.blocks) == 2 and sub.subnet.n_kept == 2
    with torch.no_grad():
        torch.testing.assert_close(sub(seq, lengths), sasrec.forward(seq, lengths),
                                   atol=1e-5, rtol=1e-5)
    same_sizes = plain_subnet(_shape_of(sasrec), 2, sasrec.n_items)
    assert [p.shape for p in same_sizes.parameters()] == [p.shape for p in sub.parameters()]


def _shape_of(sasrec):
    return SupernetShape(seq_len=sasrec.max_seq_length, hidden_size=sasrec.hidden_size,
                         inner_size=sasrec.inner_size, n_heads=sasrec.n_heads,
                         n_blocks=sasrec.n_layers)


def test_cloud_serves_a_batch_by_structure_and_counts_its_macs(fofa):
    model, seq, lengths = fofa
    tiers = {}
    served = serve_batch(model, seq, lengths, "folded", tiers, chunk=7)
    assert sum(served.values()) == len(seq)
    _, mask, _ = model.eval_structure(seq, lengths)
    assert set(served) == {model.shape.from_mask(row).key for row in mask.tolist()}
    assert set(c.key for c in tiers) == set(served)  # one tier state per structure, kept
    shape = model.shape
    folded, lowrank = cloud_macs(model, served, "folded"), cloud_macs(model, served, "lowrank")
    expected = sum(n * (shape.cost(SubnetConfig.from_key(k)).controller_macs
                        + int(shape.cost(SubnetConfig.from_key(k)).mapper_macs[0]))
                   for k, n in served.items()) / len(seq)
    assert folded == pytest.approx(expected)
    merges = sum(n * sum(cost.merge_macs(shape.hidden_size, w, shape.mapper_rank)
                         for w in SubnetConfig.from_key(k).widths if w)
                 for k, n in served.items()) / len(seq)
    assert lowrank == pytest.approx(folded - merges) and lowrank < folded
    result = cloud_throughput(model, seq, lengths, "lowrank", repeats=1, threads=1)
    assert result["users"] == len(seq) and result["users_per_s"] > 0
    assert result["torch_threads"] == 1 and result["structures"] == len(served)
    supernet = Stage.SUPERNET
    model.stage = supernet
    try:
        assert serve_batch(model, seq, lengths) == {model.shape.full().key: len(seq)}
        assert cloud_macs(model, {model.shape.full().key: 3}) == 0
    finally:
        model.stage = Stage.ADAPT


# ----------------------------------------------------------------------------- ONNX graphs
@needs_extra
@pytest.mark.slow
def test_every_tier_in_onnxruntime_equals_extract(fofa, tmp_path):
    model, seq, lengths = fofa
    manifest = export_tiers(model, TIERS, tmp_path / "out", source="test")
    written = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert written == json.loads(json.dumps(manifest))
    assert manifest["format"] == "onnx"
    assert [i["name"] for i in manifest["inputs"]] == ["item_seq", "item_seq_len"]
    assert manifest["inputs"][0]["dtype"] == "int64" and manifest["output"]["shape"] == [
        "batch", model.shape.hidden_size]
    assert [i["name"] for i in manifest["scoring"]["inputs"]][-1] == "candidates"
    candidates = model.item_embedding.weight.detach()[[4, 9, 2, 30]]
    for (budget, cfg), tier in zip(TIERS, manifest["tiers"]):
        assert tier["budget"] == budget and tier["config"] == cfg.key
        breakdown = model.shape.cost(cfg)
        assert tier["macs"] == int(breakdown.encoder_macs[0])
        assert tier["params"] == int(breakdown.encoder_params[0])
        graph = tmp_path / "out" / tier["graph"]
        assert graph.stat().st_size == tier["graph_bytes"]
        sub = extract(model, cfg)
        encoder = runtime.ort_session(str(graph))
        scoring = runtime.ort_session(str(tmp_path / "out" / tier["scoring_graph"]))
        for rows in (1, 3, len(seq)):  # dynamic batch
            feeds = {"item_seq": seq[:rows].numpy(), "item_seq_len": lengths[:rows].numpy()}
            with torch.no_grad():
                user = sub(seq[:rows], lengths[:rows])
            _close(encoder.run(None, feeds)[0], user.numpy())
            _close(scoring.run(None, {**feeds, "candidates": candidates.numpy()})[0],
                   (user @ candidates.t()).numpy())


@needs_extra
@pytest.mark.slow
def test_a_users_graph_has_their_generated_parameters_folded_in(fofa):
    model, seq, lengths = fofa
    cfg = TIERS[1][1]
    graph = runtime.ort_session(export_user(model, cfg, seq[2], lengths[2]))
    tier = extract(model, cfg)
    for row in (2, 5):
        one = (seq[row: row + 1], lengths[row: row + 1])
        feeds = {"item_seq": one[0].numpy(), "item_seq_len": one[1].numpy()}
        with torch.no_grad():
            own = extract(model, cfg, seq[row], lengths[row])(*one)
            plain = tier(*one)
        out = graph.run(None, feeds)[0]
        if row == 2:
            _close(out, own.numpy())
            assert not np.allclose(out, plain.numpy(), atol=1e-3)
        else:  # another user's weights give another representation
            assert not np.allclose(out, own.numpy(), atol=1e-3)


@needs_extra
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["folded", "lowrank"])
def test_sessions_ship_the_graph_once_then_only_the_users_weights(fofa, variant):
    model, seq, lengths = fofa
    cloud = DeployedCloud(model, variant)
    rng = np.random.default_rng(0)
    candidates = [rng.choice(np.arange(1, model.n_items), 10, replace=False) for _ in range(2)]
    sizes = {}
    for user in (0, 7):
        device, (first, later) = run_sessions(cloud, seq[user], lengths[user], candidates)
        names = [m.name for m in first.messages]
        assert names[-2:] == ["graph", "user_weights"] and "graph" not in [
            m.name for m in later.messages]
        assert [m.name for m in later.messages] == ["candidates", "realtime_window",
                                                   "user_weights"]
        assert later.bytes("down") == later.bytes("down", "user_weights") + later.bytes(
            "down", "candidates")
        assert first.bytes("up") == later.bytes("up") > 0
        key = later.key.split("/")[0]
        cfg = SubnetConfig.from_key(key)
        _, mask, _ = model.eval_structure(seq[user: user + 1], lengths[user: user + 1])
        assert cfg.mask == tuple(mask[0].tolist())  # the controller's choice, from features
        assert device.runtime.keys == [later.key]  # one graph, cached
        sub = extract(model, cfg, seq[user], lengths[user])
        emb = model.item_embedding.weight.detach()[torch.as_tensor(candidates[1])]
        with torch.no_grad():
            expected = (sub(seq[user: user + 1], lengths[user: user + 1]) @ emb.t())[0]
        _close(device.scores(), expected.numpy())
        ranked = device.rank()
        assert sorted(ranked.tolist()) == sorted(candidates[1].tolist())
        assert ranked[0] == candidates[1][int(np.argmax(expected.numpy()))]
        sizes[user] = later.bytes("down", "user_weights")
        folded = 4 * sum(2 * w * model.shape.hidden_size + 2 * model.shape.hidden_size
                         for w in cfg.widths if w)
        framing = 50 * 4 * cfg.n_kept  # each tensor's name, type and shape
        assert sizes[user] <= (folded + framing if variant == "folded" else folded / 2)


# ----------------------------------------------------------------------------- measurements
@needs_extra
@pytest.mark.slow
def test_measure_device_on_tiny_data(fofa, tmp_path):
    from recbole_fofa.device.measure import measure_device

    model, seq, lengths = fofa
    report = measure_device(model, seq, lengths, n_candidates=12, baselines=(2,), repeats=3,
                            warmup=1, max_structures=1, byte_users=2, cloud_users=50,
                            cloud_threads=1)
    rows = {(r["model"], r["variant"]): r for r in report.latency}
    assert set(rows) == {("SASRec-2", "baked"), ("Forward-OFA", "folded"),
                         ("Forward-OFA (users' mean)", "folded"), ("Forward-OFA", "lowrank"),
                         ("Forward-OFA (users' mean)", "lowrank")}
    base = rows[("SASRec-2", "baked")]
    assert base["device_macs"] == 2 * int(model.shape.block_macs()[0]) + 12 * 16
    assert base["savings_ratio"] == pytest.approx(1.0)
    for row in report.latency:
        assert row["latency_ms"] > 0 and row["max_rel_diff"] <= 1e-5
        assert row["savings_ratio"] == pytest.approx(row["latency_ratio"] / row["macs_ratio"])
    assert rows[("Forward-OFA", "lowrank")]["device_macs"] > rows[("Forward-OFA", "folded")][
        "device_macs"]  # the device folds the cores itself
    if sys.platform.startswith("linux"):
        assert base["peak_bytes"] > 0
    by = {(r["model"], r["variant"]): r for r in report.bytes}
    folded, lowrank = by[("Forward-OFA", "folded")], by[("Forward-OFA", "lowrank")]
    assert lowrank["user_weights_bytes"] < folded["user_weights_bytes"]
    for row in (folded, lowrank):
        assert row["later_session_bytes"] == pytest.approx(
            row["user_weights_bytes"] + row["candidates_bytes"])
        assert row["first_session_bytes"] > row["later_session_bytes"] + row["graph_bytes"] - 1
        assert row["max_rel_diff"] <= 1e-5
    assert by[("SASRec-2", "baked")]["later_session_bytes"] == folded["candidates_bytes"]
    assert [r["variant"] for r in report.cloud] == ["folded", "lowrank"]
    assert all(r["users"] == 50 for r in report.cloud)
    files = report.save(tmp_path)
    text = open(files["md"]).read()
    assert "## Session latency" in text and "real-savings ratio" in text
    assert json.loads(open(files["json"]).read())["settings"]["reference"] == "SASRec-2"


@needs_extra
@pytest.mark.slow
def test_protocol_device_ranks_in_onnxruntime(fofa):
    from recbole_fofa.analysis.protocol import (
        Cloud,
        OnnxDevice,
        resolve_runtime,
        sample_candidates,
        simulate_session,
    )

    model, seq, lengths = fofa
    assert resolve_runtime() == "onnxruntime" and resolve_runtime("torch") == "torch"
    with pytest.raises(ValueError, match="runtime"):
        resolve_runtime("tflite")
    onnx, cloud = OnnxDevice(model), Cloud(model)
    for user in (1, 4):
        candidates = sample_candidates(np.random.default_rng(user), model.n_items, 5, 8)
        out = simulate_session(cloud, seq[user], lengths[user], 5, candidates,
                               methods=("Forward-OFA",), onnx=onnx)
        _, device = out["Forward-OFA"]
        in_runtime = device.scores.clone()
        device.rank(runtime=False)
        _close(in_runtime.numpy(), device.scores.numpy())
    assert 1 <= len(onnx.runtime.keys) <= 2


@needs_extra
@pytest.mark.slow
def test_cli_exports_the_searched_tiers_of_a_checkpoint(planted, tmp_path, capsys):
    from recbole_fofa.experiment import train

    dataset, config = planted
    config.update(TINY_FOFA, supernet_epochs=1, epochs=1, metrics=["NDCG", "Hit"])
    config.pop("n_layers")
    trained = train("ForwardOFA", dataset, config_dict=config)
    checkpoint = trained.trainer.saved_model_file
    out = tmp_path / "export"
    cli.main(["--export", f"--checkpoint={checkpoint}", "--export_budgets=[0.5, 1.0]",
              f"--output={out}"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert [t["budget"] for t in manifest["tiers"]] == [0.5, 1.0]
    full = trained.model.shape.full_macs()
    for tier in manifest["tiers"]:
        assert tier["macs"] <= tier["budget"] * full
        assert (out / tier["graph"]).stat().st_size == tier["graph_bytes"]
    assert manifest["tiers"][-1]["config"] == trained.model.shape.full().key
    assert manifest["source"] == str(checkpoint)
    assert "manifest.json" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="`dataset` = 'ml-100k' is not the dataset the "
                                         "checkpoint was trained on"):
        cli.main(["--export", f"--checkpoint={checkpoint}", "--dataset=ml-100k",
                  f"--output={tmp_path / 'other'}"])


@pytest.mark.slow
def test_executorch_programs_equal_extract(fofa, tmp_path):
    """The second format, where the `executorch` extra installs beside the pinned torch."""
    pytest.importorskip("executorch.runtime")
    from executorch.runtime import Runtime

    model, seq, lengths = fofa
    manifest = export_tiers(model, TIERS[1:2], tmp_path, fmt="executorch")
    tier = manifest["tiers"][0]
    assert manifest["format"] == "executorch" and tier["graph"].endswith(".pte")
    sub = extract(model, TIERS[1][1])
    candidates = model.item_embedding.weight.detach()[[3, 4, 5]]
    runtime_ = Runtime.get()
    encoder = runtime_.load_program(str(tmp_path / tier["graph"])).load_method("forward")
    scoring = runtime_.load_program(str(tmp_path / tier["scoring_graph"])).load_method("forward")
    for rows in (1, 5):
        with torch.no_grad():
            user = sub(seq[:rows], lengths[:rows])
        _close(encoder.execute([seq[:rows], lengths[:rows]])[0].numpy(), user.numpy())
        _close(scoring.execute([seq[:rows], lengths[:rows], candidates])[0].numpy(),
               (user @ candidates.t()).numpy())
