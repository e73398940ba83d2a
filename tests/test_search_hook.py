"""The subnet search as a RecBole hook: config keys, run_recbole_fofa, checkpoints, the CLI."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
from conftest import planted_config

from recbole_fofa import Config, cli, run_recbole_fofa
from recbole_fofa.checks import MODEL_CHECKS, SEARCH_SPACES, SEARCH_STRATEGIES, search_cost_bounds
from recbole_fofa.cli import config_flags
from recbole_fofa.quick_start import (
    RELOAD_OVERRIDABLE,
    apply_overrides,
    load_data_and_model,
    prepare,
)
from recbole_fofa.subnet import SubnetConfig, SupernetShape
from recbole_fofa.utils import get_trainer

BUDGETS = [0.4, 0.7, 1.0]
FIELDS = {"budget_macs", "config", "macs", "params", "valid_score", "test_result", "feasible",
          "evaluations", "seconds", "controller", "valid_result", "budget"}


def forward_ofa(planted, **overrides):
    """(dataset, config_dict) of a small ForwardOFA on the planted data: 3 blocks, 2 + 2 epochs."""
    dataset, config = planted[0], dict(planted[1])
    config.update(n_blocks=3, supernet_epochs=2, epochs=2, metrics=["NDCG", "Hit", "MACs"],
                  topk=[10], eval_batch_size=64, metric_decimal_place=8)
    config.pop("n_layers", None)
    config.update(overrides)
    return dataset, config


# ----------------------------------------------------------------------------- config keys


@pytest.mark.parametrize("key, value, message", [
    ("search_budgets", [0.3, 1.5], "bad entry 1.5 (position 1)"),
    ("search_budgets", 0.5, "not a non-empty list"),
    ("search_budgets", [0.5, 0.5], "repeats the entry 0.5"),
    ("search_budgets", ["fast"], "bad entry 'fast'"),
    ("search_strategy", "evolution", "one of ['auto', 'independent'"),
    ("search_space", "Elastic", "one of ['block', 'elastic', 'compound']"),
    ("width_choices", [0.5, 1.5], "bad entry 1.5"),
    ("head_choices", [0], "bad entry 0"),
    ("search_eval_users", 0, "null or an integer >= 1"),
    ("search_predictor", "yes", "true or false"),
    ("search_mutation_prob", 0, "(0, 1]"),
])
def test_a_bad_search_key_fails_in_config_before_the_dataset_loads(tmp_path, key, value,
                                                                     message):
    # dataset "nowhere" does not exist: the error must come first
    with pytest.raises(ValueError, match=re.escape(f"`{key}`")) as error:
        Config(model="ForwardOFA", dataset="nowhere",
               config_dict={"data_path": str(tmp_path), key: value})
    assert message in str(error.value)


@pytest.mark.parametrize("settings, message", [
    ({"search_space": "compound", "n_blocks": 4}, "`compound_widths` = [0.25, 0.5, 0.5, 0.75, "
     "1.0, 1.0] has 6 entries but `n_blocks` = 4"),
    ({"search_space": "compound", "compound_widths": [0.25, 0.3, 0.5, 0.75, 1.0, 1.0]},
     "entry 1 (0.3, for 2 kept blocks) is not in `width_choices`"),
    ({"search_space": "elastic", "head_choices": [1, 4]}, "4 heads exceed `n_heads` = 2"),
    ({"search_space": "elastic", "inner_size": 8, "width_choices": [0.05, 1.0]},
     "rounds to 0 feed-forward units"),
    ({"search_parents": 30, "search_population": 20}, "`search_parents` = 30 exceeds"),
    ({"search_mutants": 0, "search_crossovers": 0}, "`search_mutants` = 0"),
    ({"search_budgets": [0.5], "search_metric": "MAP@10"}, "`search_metric` = 'MAP@10'"),
    ({"search_budgets": [0.5], "search_metric": "MACs", "metrics": ["NDCG", "MACs"]},
     "use one of ndcg@10"),
    ({"search_budgets": [0.05, 0.5]}, "the budget 0.05"),
])
def test_cross_key_errors_name_the_keys(tmp_path, settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Config(model="ForwardOFA", dataset="nowhere",
               config_dict={"data_path": str(tmp_path), **settings})


def test_search_metric_is_only_tied_to_metrics_when_searching(planted):
    dataset, config = planted
    config.update(metrics=["Recall"], valid_metric="Recall@10")  # no NDCG: fine without search
    assert Config(model="ForwardOFA", dataset=dataset, config_dict=config)["search_metric"]
    with pytest.raises(ValueError, match="`search_metric` = 'NDCG@10'"):
        Config(model="ForwardOFA", dataset=dataset, config_dict=dict(config, search_budgets=[1]))


def test_search_budgets_on_another_model_is_an_error(planted):
    dataset, config = planted
    with pytest.raises(ValueError, match="only ForwardOFA has sub-networks"):
        Config(model="SASRec", dataset=dataset, config_dict=dict(config, search_budgets=[0.5]))


def test_check_names_match_the_search_registries():
    from recbole_fofa.search import SPACES, STRATEGIES

    assert set(SEARCH_SPACES) == set(SPACES)
    assert set(SEARCH_STRATEGIES) == set(STRATEGIES) | {"auto"}
    assert {k for k in MODEL_CHECKS["ForwardOFA"] if k.startswith("search_")} <= RELOAD_OVERRIDABLE


@pytest.mark.parametrize("space", ["block", "elastic", "compound"])
def test_config_time_cheapest_budget_is_the_space_minimum(planted, space):
    from recbole_fofa.search import build_space

    dataset, config = forward_ofa(planted, search_space=space, n_blocks=6, inner_size=32)
    values = Config(model="ForwardOFA", dataset=dataset, config_dict=config).final_config_dict
    shape = SupernetShape.from_config(values, n_items=41)
    cheapest, full = search_cost_bounds(values)
    built = build_space(values, shape)
    assert (cheapest, full) == (built.min_cost(), shape.full_macs())


def test_cli_config_flags_read_like_recbole():
    assert config_flags(["--search_budgets=[0.3, 0.6]", "--search_predictor=true",
                         "--search_strategy=top_down", "--search_seed=None",
                         '--search_budgets=[0.3, 0.6]']) == {
        "search_budgets": [0.3, 0.6], "search_predictor": True,
        "search_strategy": "top_down", "search_seed": None}
    with pytest.raises(ValueError, match="--key=value"):
        config_flags(["budgets"])


def test_reload_overrides_may_repeat_saved_values_but_not_change_the_dataset(planted):
    dataset, config = forward_ofa(planted)
    saved = Config(model="ForwardOFA", dataset=dataset, config_dict=config)
    apply_overrides(saved, {"dataset": "planted", "hidden_size": saved["hidden_size"]})
    with pytest.raises(ValueError, match=re.escape(
            "config key `dataset` = 'ml-100k' is not the dataset the checkpoint was trained on, "
            "'planted'")):
        apply_overrides(saved, {"dataset": "ml-100k"})
    with pytest.raises(ValueError, match=re.escape("['hidden_size'] cannot change")):
        apply_overrides(saved, {"hidden_size": saved["hidden_size"] * 2})


# ----------------------------------------------------------------------------- the hook


def test_trainer_trains_the_configured_space(planted):
    from recbole_fofa.search import ElasticSpace

    for space, kind in (("block", type(None)), ("elastic", ElasticSpace)):
        dataset, config = forward_ofa(planted, search_space=space)
        config_obj, model, _ = prepare("ForwardOFA", dataset, config_dict=config)
        trainer = get_trainer(config_obj["MODEL_TYPE"], "ForwardOFA")(config_obj, model)
        assert isinstance(trainer.subnet_space, kind) and model.subnet_space is None
        trainer.enter_stage("supernet")  # training starts: the model samples that space
        assert isinstance(model.subnet_space, kind)


def _json(config):
    path = os.path.join(config["checkpoint_dir"], "ForwardOFA-planted-search.json")
    with open(path) as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A trained ForwardOFA searched by run_recbole_fofa: (result, config, JSON, checkpoint)."""
    root = tmp_path_factory.mktemp("hook")
    planted = ("planted", planted_config(root))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        dataset, config = forward_ofa(planted, search_budgets=BUDGETS)
        result = run_recbole_fofa(model="ForwardOFA", dataset=dataset, config_dict=config)
    finally:
        os.chdir(cwd)
    checkpoints = sorted((root / "saved").glob("ForwardOFA-*.pth"))
    assert len(checkpoints) == 1
    return result, config, _json(config), str(checkpoints[0])


@pytest.mark.slow
def test_run_recbole_fofa_writes_the_search_json(searched):
    result, config, data, _ = searched
    assert set(result) == {"best_valid_score", "valid_score_bigger", "best_valid_result",
                           "test_result"}
    assert {"strategy", "archive", "pareto_front", "budgets", "space"} <= set(data)
    assert data["strategy"] == "exhaustive" and data["space"] == "block"  # auto, 7 configs
    budgets = data["budgets"]
    assert [b["budget"] for b in budgets] == BUDGETS
    assert [b["budget_macs"] for b in budgets] == sorted(b["budget_macs"] for b in budgets)
    shape = SupernetShape(seq_len=8, hidden_size=16, inner_size=32, n_heads=2, n_blocks=3)
    full = shape.full_macs()
    assert len(data["archive"]) == 7  # every block mask once
    for entry in budgets:
        assert FIELDS <= set(entry)
        assert entry["budget_macs"] == pytest.approx(entry["budget"] * full)
        cfg = SubnetConfig.from_dict(entry["config"])
        recomputed = int(shape.cost(cfg).encoder_macs[0])
        assert entry["macs"] == recomputed <= entry["budget_macs"] and entry["feasible"]
        assert entry["valid_score"] == data["archive"][cfg.key][2]
        # the test split was evaluated under this sub-network: every metric, MACs included
        assert set(entry["test_result"]) == {"ndcg@10", "hit@10", "macs"}
        assert entry["test_result"]["macs"] == pytest.approx(recomputed)
        assert 0 <= entry["test_result"]["ndcg@10"] <= 1
        controller = entry["controller"]
        assert set(controller) == {"valid_score", "valid_result", "test_result"}
        assert controller["valid_result"]["macs"] <= entry["budget_macs"] + 1e-6
    # below the full network quality never falls as the budget grows; a budget that covers the
    # full network gets it (the search's rule), or a sub-network at least as good
    below = [b["valid_score"] for b in budgets if b["budget_macs"] < full]
    assert below == sorted(below) and len(below) == 2
    top = budgets[-1]
    assert top["config"] == shape.full().to_dict() or top["valid_score"] >= max(below)
    front = data["pareto_front"]
    assert [p["macs"] for p in front] == sorted(p["macs"] for p in front)


@pytest.mark.slow
def test_search_from_python_on_the_checkpoint_gives_the_same_configs(searched, isolated):
    _, config, data, checkpoint = searched
    config_obj, model, _, _, valid, test = load_data_and_model(checkpoint)
    trainer = get_trainer(config_obj["MODEL_TYPE"], config_obj["model"])(config_obj, model)
    again = trainer.search(valid, test)
    assert [b.config.to_dict() for b in again.budgets] == [b["config"] for b in data["budgets"]]
    assert [b.valid_score for b in again.budgets] == [b["valid_score"] for b in data["budgets"]]
    assert again.archive == {k: tuple(v) for k, v in data["archive"].items()}
    # budgets passed from Python replace search_budgets; the JSON is rewritten with them
    top = trainer.search(valid, test, budgets=[1.0])
    full_key = model.shape.full().key  # a budget that covers the full network is searched too
    assert top.budgets[0].valid_score >= top.archive[full_key][2]
    assert [b["budget"] for b in _json(config_obj)["budgets"]] == [1.0]


@pytest.mark.slow
def test_cli_searches_a_checkpoint(searched, tmp_path):
    _, config, data, checkpoint = searched
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "recbole_fofa", "--search", f"--checkpoint={checkpoint}",
               "--search_budgets=[0.5, 1.0]", f"--checkpoint_dir={out}", "--state=INFO",
               "--dataset=planted"]  # the checkpoint's own dataset may be named
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "subnet search (exhaustive, block space)" in done.stdout
    written = json.loads((out / "ForwardOFA-planted-search.json").read_text())
    assert [b["budget"] for b in written["budgets"]] == [0.5, 1.0]
    assert written["budgets"][-1]["config"] == data["budgets"][-1]["config"]
    # bad flags fail the same way in-process, before the dataset loads
    with pytest.raises(SystemExit, match=re.escape("`search_budgets` = [2] has a bad entry 2")):
        cli.main(command[3:5] + ["--search_budgets=[2]"])
    with pytest.raises(SystemExit, match=re.escape("['hidden_size'] cannot change")):
        cli.main(command[3:5] + ["--hidden_size=8"])
    with pytest.raises(SystemExit, match="--search needs --checkpoint"):
        cli.main(["--search"])
    with pytest.raises(SystemExit, match=re.escape(
            "`dataset` = 'ml-100k' is not the dataset the checkpoint was trained on, 'planted'")):
        cli.main(command[3:5] + ["--dataset=ml-100k"])


@pytest.mark.slow
@pytest.mark.parametrize("min_rank_corr", [-1.0, 1.0])
def test_evolution_with_user_subsample_and_predictor(searched, isolated, min_rank_corr):
    _, _, _, checkpoint = searched
    overrides = {"search_space": "elastic", "width_choices": [0.5, 1.0], "head_choices": [1, 2],
                 "search_strategy": "bottom_up", "search_population": 8, "search_parents": 2,
                 "search_mutants": 4, "search_crossovers": 4, "search_generations": 4,
                 "search_eval_users": 20, "search_predictor": True,
                 "search_predictor_samples": 15,
                 "search_predictor_min_rank_corr": min_rank_corr,
                 "search_budgets": [0.3, 0.6], "checkpoint_dir": str(isolated)}
    config_obj, model, _, _, valid, test = load_data_and_model(checkpoint, overrides)
    trainer = get_trainer(config_obj["MODEL_TYPE"], config_obj["model"])(config_obj, model)
    result = trainer.search(valid, test)
    estimator = trainer.search_estimator
    assert estimator.users == 20
    report = estimator.predictor_report
    assert report.samples == 15 and report.held_out == 3
    assert math.isfinite(report.spearman) and math.isfinite(report.kendall)
    assert result.settings["predictor"] == report.to_dict()
    assert report.used == (report.spearman >= min_rank_corr) == hasattr(estimator, "predict")
    assert result.strategy == "bottom_up" and result.space == "elastic"
    for entry in result.budgets:
        assert entry.macs <= entry.budget_macs
        assert entry.valid_score == estimator.cache[entry.config.key]  # measured, always
    # 0.3 of 3 blocks is below one full block: the per-user controller cannot meet it
    assert "below one full block" in result.budgets[0].extra["controller"]["skipped"]
    controller = result.budgets[1].extra["controller"]["valid_result"]
    assert controller["macs"] <= 0.6 * model.shape.full_macs()
    assert estimator.evaluations == len(estimator.cache)
    assert all(score == estimator.cache[key] for key, (_, _, score) in result.archive.items())
    if report.used:  # ranked by predictions: only the predictor's samples and the answers ran
        assert result.settings["ranked_by"] == "predictor"
        assert result.settings["predictions"] > estimator.evaluations - 15
        assert estimator.evaluations <= 15 + len(result.budgets)
        assert all("predicted_score" in entry.extra for entry in result.budgets)
    else:
        assert result.settings["ranked_by"] == "measured scores"
        assert estimator.evaluations > 15
