"""The multi-seed benchmark (runner, report, CLI) and the one table formatter."""

import csv
import json
import math
import os
import runpy

import pytest
import torch
from conftest import cli_flags

from recbole_fofa import cli
from recbole_fofa.benchmark import runner, stats
from recbole_fofa.benchmark.runner import Variant, resolve_variants, run_benchmark
from recbole_fofa.table import format_cell, format_table


@pytest.fixture
def bench(planted):
    """(dataset, config) for two-epoch benchmark runs on the planted data."""
    dataset, config = planted
    config = dict(config, n_blocks=3, supernet_epochs=1, epochs=1, search_budgets=[0.5],
                  state="INFO")
    return dataset, config


def _png(path):
    data = open(path, "rb").read()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


@pytest.mark.slow
def test_two_models_two_seeds_end_to_end(bench, tmp_path, capfd):
    dataset, config = bench
    report = run_benchmark(dataset, None, config, ["ForwardOFA", "SASRec-1"], [3, 4],
                           tmp_path / "out", progress=False, reference="SASRec-1")
    summary = {row["label"]: row for row in report.summary()}
    assert set(summary) == {"ForwardOFA", "SASRec-1"}
    for row in summary.values():
        assert row["seeds_ok"] == 2 and row["errors"] == []
        for key in ["ndcg@5", "ndcg@10", "ndcg@20", "hit@5", "hit@10", "hit@20", "mrr@10"]:
            assert 0.0 <= row[f"{key}_mean"] <= 1.0 and row[f"{key}_std"] >= 0.0
        assert row["train_s_per_epoch_mean"] > 0 and row["eval_s_per_1k_users_mean"] > 0
    # the planted successor pattern is learned: far above a random ranking (~0.07 here)
    assert summary["SASRec-1"]["ndcg@10_mean"] > 0.3
    # SASRec with one layer costs what one full ForwardOFA block costs
    full_block = summary["SASRec-1"]["macs_mean"]
    assert summary["ForwardOFA"]["macs_mean"] <= 3 * full_block
    assert summary["SASRec-1"]["blocks_mean"] == 1.0

    rows = list(csv.DictReader(open(report.files["csv"])))
    assert [(r["label"], r["seed"]) for r in rows] == [
        ("ForwardOFA", "3"), ("SASRec-1", "3"), ("ForwardOFA", "4"), ("SASRec-1", "4")]
    assert all(r["status"] == "ok" and float(r["ndcg@10"]) > 0 for r in rows)
    assert _png(report.files["png"])
    md = open(report.files["md"]).read()
    assert "| ForwardOFA" in md and "± " in md and "![NDCG@10 vs MACs](benchmark.png)" in md
    # the search ran on the ForwardOFA runs: a searched and a controller point at budget 0.5
    kinds = {(p["budget"], p["kind"]): p for p in report.search_points()}
    assert set(kinds) == {("0.5", "searched"), ("0.5", "controller")}
    assert kinds[("0.5", "searched")]["seeds"] == 2
    assert kinds[("0.5", "searched")]["macs_mean"] <= 0.5 * 3 * full_block
    # paired comparisons with the reference, from per-user values RecBole's metrics average
    comparisons = list(csv.DictReader(open(report.files["comparisons"])))
    assert {(r["model"], r["reference"]) for r in comparisons} == {("ForwardOFA", "SASRec-1")}
    ndcg = next(r for r in comparisons if r["metric"] == "ndcg@10")
    assert ndcg["n_seeds"] == "2" and ndcg["verdict"] in ("better", "no difference", "worse")
    assert float(ndcg["ci_low"]) <= float(ndcg["mean_diff"]) <= float(ndcg["ci_high"])
    assert float(ndcg["target_mde"]) == stats.TARGET_MDE
    assert int(ndcg["seeds_needed"]) == stats.seeds_needed(float(ndcg["sd_diff"]))
    assert f"seeds for MDE {stats.TARGET_MDE}" in report.comparison_table()
    assert "NDCG@10 - SASRec-1 [95% CI]" in report.table()
    for record in report.records:
        for metric, values in record["per_user"].items():
            assert len(values) == record["test_users"]
            assert sum(values) / len(values) == pytest.approx(record["test"][metric], abs=5e-5)
        ends = record["training"]
        assert [e["stage"] for e in ends] == (["supernet", "adapt"] if record["model"] ==
                                              "ForwardOFA" else ["train"])
        for end in ends:
            assert 1 <= end["best_epoch"] <= end["epochs"] <= end["max_epochs"]
            assert end["stopped_early"] == (end["epochs"] < end["max_epochs"])
            # one validation per epoch (eval_step 1); the best is the stored valid score
            curve = record["valid_curve"][end["stage"]]
            assert len(curve) == end["epochs"]
        last = record["valid_curve"][ends[-1]["stage"]]
        assert max(last) == pytest.approx(record["valid"]["ndcg@10"], abs=5e-5)
        assert last.index(max(last)) + 1 <= ends[-1]["best_epoch"]
    # quiet console: no model dump or per-epoch lines, no library warnings
    out, err = capfd.readouterr()
    assert "Trainable parameters" not in out + err and "FutureWarning" not in out + err


@pytest.mark.slow
def test_resume_skips_finished_runs_and_failures_are_rows(bench, tmp_path, monkeypatch):
    dataset, config = bench
    config = dict(config, epochs=1)
    out = tmp_path / "out"
    report = run_benchmark(dataset, None, config, ["SASRec-1", "NoSuchModel"], [1],
                           out, progress=False)
    rows = {r["label"]: r for r in report.records}
    assert rows["SASRec-1"]["status"] == "ok"
    assert rows["NoSuchModel"]["status"] == "error"
    assert "NoSuchModel" in rows["NoSuchModel"]["error"]
    assert any("NoSuchModel seed 1" in line for line in report.errors())
    assert "## Failed runs" in open(report.files["md"]).read()

    calls = []
    real = runner.run_one
    monkeypatch.setattr(runner, "run_one",
                        lambda variant, *a, **k: calls.append(variant.label) or real(variant,
                                                                                     *a, **k))
    again = run_benchmark(dataset, None, config, ["SASRec-1", "NoSuchModel"], [1], out,
                          progress=False)
    assert calls == ["NoSuchModel"]  # the finished run is read back, the failed one retried
    stored = json.loads((out / "runs" / "SASRec-1__seed1.json").read_text())
    assert again.records[0]["test"] == stored["test"] == rows["SASRec-1"]["test"]
    # other settings are not the finished run: it runs again
    calls.clear()
    run_benchmark(dataset, None, dict(config, learning_rate=0.02), ["SASRec-1"], [1], out,
                  progress=False)
    assert calls == ["SASRec-1"]


@pytest.mark.slow
def test_ablations_share_the_supernet_of_their_seed(bench, tmp_path):
    dataset, config = bench
    report = run_benchmark(dataset, None, config,
                           ["ForwardOFA", "ForwardOFA-nomapper", "ForwardOFA-allblocks"], [5],
                           tmp_path / "out", search_budgets=[], progress=False)
    rows = {r["label"]: r for r in report.records}
    assert all(r["status"] == "ok" for r in rows.values()), report.errors()
    assert rows["ForwardOFA"]["supernet_shared"] is False
    for label in ("ForwardOFA-nomapper", "ForwardOFA-allblocks"):
        assert rows[label]["supernet_shared"] is True
        assert rows[label]["epochs"] == rows["ForwardOFA"]["epochs"] == {"supernet": 1,
                                                                          "adapt": 1}
    # no controller: every user keeps all three blocks
    assert rows["ForwardOFA-allblocks"]["test"]["blocks"] == 3.0
    stored = list((tmp_path / "out" / "supernets").glob("supernet-*.pt"))
    assert len(stored) == 1
    state = torch.load(stored[0], weights_only=True)["state"]
    assert "item_embedding.weight" in state and not any(k.startswith("mapper.") for k in state)


def test_baselines_train_the_forward_ofa_epoch_budget(bench, tmp_path):
    dataset, config = bench
    budget, n_blocks, data_key = runner.epoch_budget(dataset, None,
                                                     dict(config, supernet_epochs=2))
    assert budget == {"supernet_epochs": 2, "epochs": 1, "total": 3} and n_blocks == 3
    assert len(data_key) == 12
    # search budgets below the cheapest sub-network are refused before anything trains
    with pytest.raises(ValueError, match="search_budgets.*below the cheapest"):
        runner.epoch_budget(dataset, None, config, search_budgets=[0.01])
    settings = runner._run_settings(Variant("SASRec-2", "SASRec", {"n_layers": 2}), 7,
                                    dict(config), budget, tmp_path)
    assert settings["epochs"] == 3 and settings["seed"] == 7 and settings["n_layers"] == 2
    assert settings["topk"] == [5, 10, 20] and "MRR" in settings["metrics"]


def test_one_model_searches_the_device_tiers():
    def searched(names):
        return runner.searched_label(resolve_variants(names, 6))

    assert searched(["SASRec-6", "ForwardOFA-adaptSASRec", "ForwardOFA-nomapper"]) == (
        "ForwardOFA-adaptSASRec")
    assert searched(["ForwardOFA-nomapper", "ForwardOFA"]) == "ForwardOFA"
    assert searched(["SASRec-6", "ForwardOFA-allblocks"]) is None  # no controller: no search


def test_resolve_variants():
    variants = {v.label: v for v in resolve_variants(
        ["ForwardOFA", "ForwardOFA-shared", "SASRec-6", "ForwardOFA-4", "GRU4Rec"], 6)}
    assert variants["ForwardOFA-shared"].overrides == {"mapper_mode": "shared"}
    assert variants["ForwardOFA-shared"].shares_supernet
    assert variants["SASRec-6"] == Variant("SASRec-6", "SASRec", {"n_layers": 6}, "baseline")
    assert variants["ForwardOFA-4"].overrides == {"n_blocks": 4}
    assert not variants["ForwardOFA-4"].shares_supernet  # a different supernet
    assert variants["GRU4Rec"].overrides == {}
    # the verdict's stage-2 switches: on request only, each sharing ForwardOFA's supernet
    switches = {v.label: v for v in resolve_variants(list(runner.SWITCHES), 6)}
    assert switches["ForwardOFA-backbone0"].overrides == {"backbone_lr_scale": 0.0}
    assert all(v.shares_supernet and v.routed for v in switches.values())
    assert not set(runner.SWITCHES) & {v.label for v in runner.default_variants(6)}
    assert variants["ForwardOFA"].routed and not variants["SASRec-6"].routed
    assert not resolve_variants(["ForwardOFA-allblocks"], 6)[0].routed  # no controller
    default = [v.label for v in runner.default_variants(6)]
    assert default[:7] == ["ForwardOFA", "ForwardOFA-shared", "ForwardOFA-nomapper",
                           "ForwardOFA-allblocks", "ForwardOFA-fromSASRec", "SASRec-2",
                           "SASRec-6"]
    assert {"GRU4Rec", "BERT4Rec", "Caser", "NextItNet", "LightSANs"} <= set(default)
    with pytest.raises(ValueError, match="twice"):
        resolve_variants(["SASRec-2", "SASRec-2"], 6)
    # pins: fixed settings on any label, values read as YAML
    pinned = resolve_variants(["SASRec-6@learning_rate=0.002@dropout_prob=0.3",
                               "ForwardOFA-backbone0@learning_rate=1e-3"], 6)
    assert pinned[0] == Variant("SASRec-6@learning_rate=0.002@dropout_prob=0.3", "SASRec",
                                {"n_layers": 6, "learning_rate": 0.002, "dropout_prob": 0.3},
                                "baseline")
    assert pinned[1].overrides == {"backbone_lr_scale": 0.0, "learning_rate": 0.001}
    assert pinned[1].kind == "ablation" and not pinned[1].shares_supernet
    for bad in ("SASRec-6@", "SASRec-6@learning_rate", "SASRec-6@lr=", "@lr=1", "SASRec-6@a b=1",
                "SASRec-6@lr=1@lr=2"):
        with pytest.raises(ValueError, match=r"benchmark model .*(LABEL@key=value|no model)"):
            resolve_variants([bad], 6)
    with pytest.raises(ValueError, match="seeds"):
        run_benchmark("x", seeds=[1, 1])


@pytest.mark.slow
def test_cli_benchmark(bench, tmp_path, capsys):
    dataset, config = bench
    flags = cli_flags(config)
    out = tmp_path / "cli-out"
    assert cli.main(["--benchmark", "--model=SASRec-1", "--seeds=2", f"--output={out}",
                     f"--dataset={dataset}", *flags]) == 0
    printed = capsys.readouterr().out
    assert "SASRec-1" in printed and "2/2" in printed and "written:" in printed
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "SASRec-1__seed2020.json", "SASRec-1__seed2021.json"]


def test_cli_seeds_and_modes():
    # `--seed` is RecBole's config key, not an abbreviation of --seeds
    args, rest = cli.build_parser().parse_known_args(["--seed=5", "--seeds=2"])
    assert args.seeds == "2" and rest == ["--seed=5"]
    assert cli.parse_seeds(None, 2020, 3) == [2020, 2021, 2022]
    assert cli.parse_seeds("2", 7, 3) == [7, 8]
    assert cli.parse_seeds("5,1", 7, 3) == [5, 1]
    assert cli.parse_seeds("2031,", 7, 3) == [2031]  # one seed: a list with a comma
    for bad in ("0", "x", "1,1", ""):
        with pytest.raises(SystemExit, match="--seeds"):
            cli.parse_seeds(bad, 2020, 3)
    with pytest.raises(SystemExit, match="cannot be combined"):
        cli.main(["--benchmark", "--analysis=blocks"])
    with pytest.raises(SystemExit, match="--seeds and --output"):
        cli.main(["--model=SASRec", "--seeds=2"])
    with pytest.raises(SystemExit, match="--reference, --routing, --tune and --tuning_seeds"):
        cli.main(["--model=SASRec", "--reference=SASRec"])


def test_reference_is_one_of_the_models():
    variants = resolve_variants(["ForwardOFA", "SASRec-6", "SASRec-2"], 6)
    assert runner.check_reference(None, variants, 6) == "SASRec-6"
    assert runner.check_reference("SASRec-2", variants, 6) == "SASRec-2"
    assert runner.check_reference(None, variants[:1], 6) is None
    with pytest.raises(ValueError, match="reference 'GRU4Rec' is not one of"):
        runner.check_reference("GRU4Rec", variants, 6)


def test_format_table_styles_and_cells():
    rows = [{"model": "SASRec", "ndcg@10": 0.051234, "macs": 378880, "blocks": None},
            {"model": "ForwardOFA", "ndcg@10": math.nan, "macs": 264573.4, "x": True}]
    text = format_table(rows).splitlines()
    assert text[0].split() == ["model", "ndcg@10", "macs", "blocks", "x"]
    assert text[1].split() == ["SASRec", "0.0512", "378,880", "-", "-"]
    assert text[2].split() == ["ForwardOFA", "-", "264,573", "-", "True"]
    assert len({len(line) for line in text}) == 1  # aligned
    md = format_table(rows, ["model", "macs"], style="markdown").splitlines()
    assert md[0] == "| model      |    macs |"
    assert md[1] == "| ---------- | ------: |"
    assert md[2] == "| SASRec     | 378,880 |"
    assert format_cell(12.5, digits=1) == "12.5" and format_cell(float("inf")) == "inf"
    assert format_table([("a|b", 1)], ["k", "v"], style="markdown").splitlines()[2] == \
        "| a\\|b |   1 |"
    with pytest.raises(ValueError, match="style"):
        format_table(rows, style="html")
    with pytest.raises(ValueError, match="3 cells for 2 columns"):
        format_table([(1, 2, 3)], ["a", "b"])
    with pytest.raises(ValueError, match="need `columns`"):
        format_table([(1, 2)])


@pytest.mark.slow
def test_routing_compares_the_controller_with_fixed_subnetworks_and_the_oracle(bench, tmp_path):
    dataset, config = bench
    report = run_benchmark(dataset, None, config, ["ForwardOFA", "SASRec-3"], [5, 6],
                           tmp_path / "out", search_budgets=[], progress=False, routing=True)
    for record in report.records:
        if record["label"] == "ForwardOFA":
            assert "routing_error" not in record
            searched = record["routing"]["searched_at_own_macs"]
            assert searched["test"]["macs"] <= record["test"]["macs"] + 1e-6
            oracle = record["routing"]["oracle"]
            assert sum(oracle["users_per_config"].values()) == record["test_users"]
    labels = {r["label"] for r in report.routing_records()}
    assert labels == {"ForwardOFA search@own", "ForwardOFA oracle"}
    pairs = {(c["model"], c["reference"]) for c in report.comparisons()}
    assert pairs == {("ForwardOFA", "SASRec-3"), ("ForwardOFA search@own", "SASRec-3"),
                     ("ForwardOFA oracle", "SASRec-3"), ("ForwardOFA", "ForwardOFA search@own"),
                     ("ForwardOFA oracle", "ForwardOFA")}
    assert all(c["n_seeds"] == 2 for c in report.comparisons())
    # the structures the stored checkpoints give the test users: the tested models themselves
    structures = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "benchmarks",
                                             "structures.py"))
    rows = structures["structure_rows"](tmp_path / "out")
    tested = {f"ForwardOFA seed {r['seed']}": r for r in report.records
              if r["label"] == "ForwardOFA"}
    assert sorted(row[0] for row in rows) == sorted(tested)
    for row in rows:
        run = dict(zip(structures["COLUMNS"], row))
        record = tested[run["run"]]
        assert run["users"] == record["test_users"]
        assert run["mean blocks"] == pytest.approx(record["test"]["blocks"], abs=1e-3)
        assert 1 <= run["structures"] <= run["users"] and 0 < run["top share"] <= 1
        assert len(run["top structure"]) == len(run["search@own"]) == config["n_blocks"]


def test_benchmarks_started_at_once_on_one_folder_all_start(tmp_path):
    """Each benchmark checks the folder writable with a probe file of its own: with one shared
    probe name, one could delete another's probe between that one's write and unlink, and a
    second process started beside the first (as the docs suggest, to share the runs) failed."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        folders = list(pool.map(lambda _: runner.writable_runs_dir(tmp_path / "out"), range(400)))
    assert set(folders) == {tmp_path / "out" / "runs"}
    assert list(folders[0].iterdir()) == []


def test_an_output_that_cannot_hold_runs_is_a_clear_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="--output .*a-file: cannot write runs there"):
        runner.writable_runs_dir(tmp_path / "a-file")
