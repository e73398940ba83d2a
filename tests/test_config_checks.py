"""Config checks (recbole_fofa.checks): tables, budgets, metrics, memory and model lookup."""

import math
import re
import time
from pathlib import Path

import pytest
import recbole
import torch
import yaml
from conftest import TINY_FOFA, write_atomic_files, write_planted_dataset
from recbole.config import Config as RecBoleConfig
from recbole.model.layers import FeedForward
from recbole.utils import ModelType

from recbole_fofa import Config, checks, cost, experiment, get_model, memory, registry
from recbole_fofa.budget import Budget, parse_budget
from recbole_fofa.checks import BACKBONE_CHECKS, COMMON_CHECKS, MODEL_CHECKS
from recbole_fofa.config import check_config, default_config_file
from recbole_fofa.memory import estimate_memory
from recbole_fofa.quick_start import prepare
from recbole_fofa.recbole_introspect import activation_names

NAN, INF = float("nan"), float("inf")


def _raises_naming(key, value):
    return pytest.raises(ValueError, match=re.escape(f"`{key}` = {value!r}"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_planted_dataset(root)
    return root


@pytest.fixture(scope="module")
def base(data_root):
    """{model: final config values} of valid configs built by the plugin's Config."""
    out = {}
    common = {"data_path": str(data_root), "state": "ERROR"}
    for model in ("ForwardOFA", "SASRec", "GRU4Rec"):
        out[model] = dict(Config(model=model, dataset="planted", config_dict=common)
                          .final_config_dict)
    return out


# Which valid base config exercises each backbone key (a model that reads it).
BACKBONE_MODEL = {key: "SASRec" for key in BACKBONE_CHECKS}
BACKBONE_MODEL["dropout_prob"] = "GRU4Rec"

CASES = (
    [("ForwardOFA", key, bad) for key, rule in MODEL_CHECKS["ForwardOFA"].items()
     for bad in rule.bad]
    + [("SASRec", key, bad) for key, rule in COMMON_CHECKS.items() for bad in rule.bad]
    + [(BACKBONE_MODEL[key], key, bad) for key, rule in BACKBONE_CHECKS.items()
       for bad in rule.bad]
)


@pytest.mark.parametrize("model, key, bad", CASES, ids=[f"{m}-{k}-{b!r}" for m, k, b in CASES])
def test_every_table_key_rejects_its_bad_values(base, model, key, bad):
    values = dict(base[model], **{key: bad})
    with pytest.raises(ValueError, match=re.escape(f"`{key}`")):
        check_config(values, model)


TABLES = ([("ForwardOFA", key) for key in MODEL_CHECKS["ForwardOFA"]]
          + [("SASRec", key) for key in COMMON_CHECKS]
          + [(BACKBONE_MODEL[key], key) for key in BACKBONE_CHECKS])


@pytest.mark.parametrize("model, key", TABLES)
def test_defaults_pass_and_required_keys_reject_null(base, model, key):
    rule = checks.rules_for(model)[key]
    assert key in base[model] and rule.check(base[model][key])
    assert rule.bad, f"{key} has no representative bad value"
    if not rule.check(None):
        with _raises_naming(key, None):
            check_config(dict(base[model], **{key: None}), model)


def test_forward_ofa_table_covers_its_yaml_exactly():
    documented = yaml.safe_load(Path(default_config_file("ForwardOFA")).read_text())
    assert set(MODEL_CHECKS["ForwardOFA"]) == set(documented)


def test_table_defaults_are_the_yaml_values():
    loader = RecBoleConfig._build_yaml_loader(None)
    documented = yaml.load(Path(default_config_file("ForwardOFA")).read_text(), Loader=loader)
    assert {k: row.default for k, row in checks.MODEL_KEYS["ForwardOFA"].items()} == documented
    recbole_overall = yaml.load((Path(recbole.__file__).resolve().parent / "properties"
                                 / "overall.yaml").read_text(), Loader=loader)
    assert checks.COMMON_KEYS["train_batch_size"].default == recbole_overall["train_batch_size"]
    assert checks.COMMON_KEYS["dist_timeout"].default == 1800  # the plugin's overall.yaml
    assert checks.BACKBONE_KEYS["n_layers"].default == 2  # SASRec's YAML


def test_derived_key_lists_keep_their_values():
    """STAGE2_KEYS, RELOAD_OVERRIDABLE and the memory's REFERENCE come from the key table's
    flags and defaults; these are the lists they replaced."""
    assert experiment.STAGE2_KEYS == checks.STAGE2_KEYS == {
        "mapper_mode", "mapper_rank", "mapper_hidden", "controller", "extractor", "rt_len",
        "sparsity_weight", "sparsity_target", "keep_threshold", "tau_start", "tau_end",
        "tau_anneal_epochs", "backbone_lr_scale", "device_budget", "epochs",
        "gumbel_noise_end", "controller_init_keep", "adapt_distill_weight"}  # issue 19's
    from recbole_fofa.quick_start import RELOAD_OVERRIDABLE

    search = {key for key in MODEL_CHECKS["ForwardOFA"] if key.startswith("search_")}
    assert RELOAD_OVERRIDABLE == checks.RELOAD_OVERRIDABLE == search | {
        "width_choices", "head_choices", "compound_widths", "compound_heads", "eval_batch_size",
        "show_progress", "state", "checkpoint_dir", "metrics", "topk", "metric_decimal_place",
        "valid_metric", "trust_checkpoint", "verbose"}
    assert memory.REFERENCE == {
        "n_blocks": 6, "n_layers": 2, "supernet_subnets": 2, "hidden_size": 64,
        "inner_size": 256, "n_heads": 2, "MAX_ITEM_LIST_LENGTH": 50, "train_batch_size": 2048,
        "eval_batch_size": 4096, "mapper_rank": 8, "mapper_hidden": 64, "rt_len": 10}


def test_a_model_name_is_resolved_once_per_check(base, monkeypatch):
    calls = []
    original = registry.get_model

    def counting(name):
        calls.append(name)
        return original(name)

    monkeypatch.setattr(registry, "get_model", counting)
    checks.check_keys(base["ForwardOFA"], "ForwardOFA")
    assert calls == ["ForwardOFA"]
    calls.clear()
    check_config(base["SASRec"], "SASRec")
    assert calls == ["SASRec"]


@pytest.mark.parametrize("key", ["tau_start", "tau_end", "sparsity_weight", "distill_weight",
                                 "backbone_lr_scale", "layer_norm_eps", "initializer_range",
                                 "learning_rate", "keep_threshold", "hidden_dropout_prob"])
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_nan_and_infinity_are_rejected(base, key, value):
    with _raises_naming(key, value):
        check_config(dict(base["ForwardOFA"], **{key: value}), "ForwardOFA")


def test_bad_values_fail_in_config_before_the_dataset_is_even_looked_up(tmp_path):
    # No dataset exists: a config error must still come first, i.e. long before loading data.
    for key, value in [("tau_start", NAN), ("hidden_act", "GELU"), ("n_heads", None),
                       ("loss_type", "ce"), ("metrics", ["NDCGX"])]:
        with _raises_naming(key, value):
            Config(model="ForwardOFA", dataset="nowhere",
                   config_dict={"data_path": str(tmp_path), key: value})


def test_hidden_act_names_are_recboles_own():
    names = activation_names()
    assert {"gelu", "relu", "swish", "tanh", "sigmoid"} <= set(names)
    x = torch.randn(2, 3, 8)
    for name in names:  # each accepted name really builds and runs RecBole's FeedForward
        assert FeedForward(8, 16, 0.0, name, 1e-12)(x).shape == x.shape
    with pytest.raises(KeyError):
        FeedForward(8, 16, 0.0, "leakyrelu", 1e-12)
    assert not checks.rules_for("SASRec")["hidden_act"].check("leakyrelu")


def test_n_heads_must_divide_hidden_size(base):
    with pytest.raises(ValueError, match=r"`n_heads` = 3 must divide `hidden_size` = 64.*1, 2, 4"):
        check_config(dict(base["ForwardOFA"], n_heads=3, hidden_size=64), "ForwardOFA")
    with pytest.raises(ValueError, match="`n_heads` = 3"):
        check_config(dict(base["SASRec"], n_heads=3, hidden_size=64), "SASRec")


def _recbole_defaults():
    loader = RecBoleConfig._build_yaml_loader(None)
    root = Path(recbole.__file__).resolve().parent / "properties"
    base = {}
    for name in ("overall.yaml", "dataset/sample.yaml"):
        base.update(yaml.load((root / name).read_text(), Loader=loader))
    for path in sorted((root / "model").glob("*.yaml")):
        values = dict(base, **(yaml.load(path.read_text(), Loader=loader) or {}))
        yield path.stem, values


def test_recbole_models_own_defaults_are_never_rejected():
    checked = 0
    for name, values in _recbole_defaults():
        try:
            model = get_model(name)
        except ImportError:  # exlib models without their optional packages
            continue
        checks.check_keys(dict(values, MODEL_TYPE=model.type), model)
        checked += 1
    assert checked > 80


def test_recbole_models_get_their_own_loss_names():
    assert checks.rules_for("SINE")["loss_type"].check("NLL")
    assert not checks.rules_for("SASRec")["loss_type"].check("NLL")
    assert checks.rules_for("CDAE")["loss_type"].check("MSE")
    assert checks.rules_for("MCCLK")["loss_type"].check("bpr")  # MCCLK lowercases
    assert "loss_type" not in checks.rules_for("BPR")  # BPR does not read it
    assert "hidden_size" not in checks.rules_for("BPR")


def test_keys_a_model_does_not_read_are_not_checked(base):
    check_config(dict(base["GRU4Rec"], hidden_act="nonsense", n_heads="x"), "GRU4Rec")
    check_config(dict(base["ForwardOFA"], n_layers=-3), "ForwardOFA")  # uses n_blocks


@pytest.mark.parametrize("model", ["SASRec", "GRU4Rec", "BERT4Rec", "BPR", "DeepFM", "CKE"])
def test_valid_configs_of_recbole_models_still_build(data_root, model):
    inter = ["user_id:token", "item_id:token", "label:float", "timestamp:float"]
    write_atomic_files(data_root, "featured", {
        "inter": (inter, [(f"u{u}", f"i{(u + t) % 9}", t % 2, t) for u in range(9)
                          for t in range(6)]),
        "kg": (["head_id:token", "relation_id:token", "tail_id:token"],
               [(f"e{i}", "r0", f"e{(i + 1) % 9}") for i in range(9)]),
        "link": (["item_id:token", "entity_id:token"], [(f"i{i}", f"e{i}") for i in range(9)]),
    })
    dataset = "planted" if get_model(model).type == ModelType.SEQUENTIAL else "featured"
    config = Config(model=model, dataset=dataset,
                    config_dict={"data_path": str(data_root), "state": "ERROR"})
    assert config["model"] == model


# ----------------------------------------------------------------------------- device_budget


@pytest.mark.parametrize("value, expected", [
    (0.5, Budget(fraction=0.5)), (1, Budget(fraction=1.0)),
    ("400K MACs", Budget(macs=400_000.0)), ("1.2M MACs", Budget(macs=1_200_000.0)),
    ("378880 MACs", Budget(macs=378_880.0)), ("2G MACs", Budget(macs=2e9)),
])
def test_budget_forms(value, expected):
    assert parse_budget("device_budget", value) == expected
    assert expected.to_macs(1000.0) == (expected.fraction * 1000.0 if expected.fraction
                                        else expected.macs)


@pytest.mark.parametrize("value", [1.5, -1, 0, "fast", NAN, INF, True, "400K", "400 FLOPs",
                                   "0.5", "1.2m MACs", None])
def test_ambiguous_or_malformed_budgets_name_both_forms(value):
    with pytest.raises(ValueError) as info:
        parse_budget("device_budget", value)
    message = str(info.value)
    assert f"`device_budget` = {value!r}" in message
    assert "(0, 1]" in message and '"400K MACs"' in message


def test_budget_in_macs_reaches_the_model(planted):
    dataset, config = planted
    config.update(TINY_FOFA)
    block = cost.block_macs(8, 16, 32, 2)
    _, model, _ = prepare("ForwardOFA", dataset, config_dict=dict(config,
                                                                  device_budget="40K MACs"))
    assert model.device_budget == 40_000.0 and block < 40_000 < 3 * block
    with pytest.raises(ValueError, match=r"`device_budget` = 1\.5 is invalid.*400K MACs"):
        Config(model="ForwardOFA", dataset=dataset, config_dict=dict(config, device_budget=1.5))
    with pytest.raises(ValueError, match=f"below the cheapest sub-network: one block costs "
                                         f"{block:,} MACs"):
        Config(model="ForwardOFA", dataset=dataset,
               config_dict=dict(config, device_budget="10K MACs"))


# ----------------------------------------------------------------------------- memory


@pytest.mark.parametrize("model, key, value", [
    ("ForwardOFA", "n_blocks", 1_000_000), ("ForwardOFA", "supernet_subnets", 10_000),
    ("ForwardOFA", "hidden_size", 2**20), ("ForwardOFA", "train_batch_size", 10**9),
    ("ForwardOFA", "MAX_ITEM_LIST_LENGTH", 10**6), ("SASRec", "n_layers", 10**6),
    ("SASRec", "inner_size", 10**12),
])
def test_absurd_sizes_fail_fast_naming_the_key(base, model, key, value):
    values = dict(base[model], **{key: value})
    start = time.perf_counter()
    with pytest.raises(ValueError, match=re.escape(f"`{key}` = {value!r}")):
        check_config(values, model)
    assert time.perf_counter() - start < 0.5


def test_supernet_steps_that_would_crawl_are_refused(base):
    values = dict(base["ForwardOFA"], n_blocks=256, supernet_subnets=64, hidden_size=2,
                  n_heads=1, inner_size=2, supernet_epochs=1)
    with pytest.raises(ValueError, match=r"`supernet_subnets` = 64 with `n_blocks` = 256 runs up "
                                         r"to 16,385 block passes"):
        check_config(values, "ForwardOFA")
    check_config(dict(values, supernet_epochs=0, train_batch_size=8), "ForwardOFA")
    assert checks.supernet_block_passes(6, 2) == 13 and checks.supernet_block_passes(6, 0) == 6


@pytest.mark.parametrize("key, value, allowed", [
    ("search_population", 10**9, "an integer in [2, 10000]"),
    ("search_parents", 10**9, "an integer in [1, 10000]"),
    ("search_mutants", 10**9, "an integer in [0, 10000]"),
    ("search_crossovers", 10**30, "an integer in [0, 10000]"),
    ("search_generations", 10**9, "an integer in [1, 10000]"),
    ("search_warm_generations", 10**9, "null or an integer in [0, 10000]"),
    ("search_max_resample", 10**9, "an integer in [1, 1000]"),
    ("search_predictor_samples", 10**9, "an integer in [10, 20000]"),
    ("dist_timeout", 1e18, "a number in (0, 31536000]"),
    ("dist_timeout", 10**10, "a number in (0, 31536000]"),
])
def test_search_sizes_and_dist_timeout_have_upper_bounds(base, key, value, allowed):
    start = time.perf_counter()
    with pytest.raises(ValueError) as info:
        check_config(dict(base["ForwardOFA"], **{key: value}), "ForwardOFA")
    assert str(info.value) == (f"config key `{key}` = {value!r} is invalid: expected {allowed}")
    assert time.perf_counter() - start < 0.5
    bound = int(re.search(r"(\d+)[\])]$", allowed).group(1))
    room = {"search_parents": {"search_population": bound},  # parents <= population
            "search_generations": {"search_crossovers": 49},  # draws <= MAX_SEARCH_DRAWS
            "search_warm_generations": {"search_crossovers": 49}}.get(key, {})
    check_config(dict(base["ForwardOFA"], **room, **{key: bound}), "ForwardOFA")  # the bound


def test_search_draws_per_budget_are_bounded(base):
    ofa = dict(base["ForwardOFA"], search_population=100, search_mutants=50,
               search_crossovers=50, search_generations=500)  # OFA's own search
    check_config(ofa, "ForwardOFA")
    big = dict(ofa, search_generations=10_000)
    with pytest.raises(ValueError) as info:
        check_config(big, "ForwardOFA")
    message = str(info.value)
    assert "`search_generations` = 10000" in message and "1,000,100 sub-networks" in message
    assert "at most 1,000,000" in message and "`search_generations` <= 9,999" in message
    check_config(dict(big, search_generations=9_999), "ForwardOFA")
    with pytest.raises(ValueError, match=r"`search_warm_generations` = 10000 .* <= 9,999"):
        check_config(dict(ofa, search_warm_generations=10_000), "ForwardOFA")
    from recbole_fofa.search import SearchSettings  # the settings refuse it too

    with pytest.raises(ValueError, match="at most 1,000,000"):
        SearchSettings(generations=10_000)
    assert 100 + 500 * 100 < checks.MAX_SEARCH_DRAWS


def test_memory_message_names_estimate_and_limit(base):
    values = dict(base["ForwardOFA"], hidden_size=4096, n_heads=2, inner_size=256)
    estimate = estimate_memory(values, "ForwardOFA")
    with pytest.raises(ValueError) as info:
        memory.check_memory(values, "ForwardOFA", limit=estimate.total_bytes - 1)
    message = str(info.value)
    assert "`hidden_size` = 4096" in message and "item embedding is not counted" in message
    assert "GiB" in message and "limit" in message
    assert memory.check_memory(values, "ForwardOFA", limit=estimate.total_bytes) == estimate


def test_shipped_configs_fit():
    main = yaml.safe_load((Path(default_config_file("ForwardOFA")).parents[1] / "main.yaml")
                          .read_text())
    for extra in ({}, main):
        config = Config(model="ForwardOFA", dataset="ml-100k", config_dict=dict(extra))
        estimate = check_config(config)
        assert estimate is not None and estimate.total_bytes < 16 * 2**30
    defaults = Config(model="ForwardOFA", dataset="ml-100k",
                      config_dict={"MAX_ITEM_LIST_LENGTH": 50})
    assert (defaults["hidden_size"], defaults["train_batch_size"], defaults["n_blocks"],
            defaults["supernet_subnets"]) == (64, 2048, 6, 2)
    assert estimate_memory(defaults).stage == "supernet"
    for key, reference in memory.REFERENCE.items():  # the named defaults are the shipped ones
        if key in defaults and key != "n_layers":
            assert defaults[key] == reference, key


def test_estimate_matches_what_training_really_keeps(planted):
    """Parameters exactly; activations: at least what autograd saves, at most 1.3x."""
    dataset, config = planted
    config.update(TINY_FOFA, supernet_subnets=2)
    cfg, model, (train, _, _) = prepare("ForwardOFA", dataset, config_dict=config)
    estimate = estimate_memory(cfg)
    n_params = sum(p.numel() for p in model.parameters()) - model.item_embedding.weight.numel()
    assert estimate.parameters == n_params
    batch = next(iter(train))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    measured = {}
    for stage, trials in (("supernet", 20), ("adapt", 1)):
        model.stage = stage
        for _ in range(trials):
            saved = {}

            def pack(tensor, saved=saved):
                storage = tensor.untyped_storage()
                if storage.data_ptr() not in weights:
                    saved[storage.data_ptr()] = storage.nbytes()
                return tensor

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                model.calculate_loss(batch)
            measured[stage] = max(measured.get(stage, 0), sum(saved.values()))
    adapt = estimate_memory(dict(cfg.final_config_dict, supernet_epochs=0))
    assert adapt.stage == "adapt"
    assert measured["adapt"] <= adapt.activation_bytes <= 1.3 * measured["adapt"]
    assert estimate.stage == "supernet"
    assert measured["supernet"] <= estimate.activation_bytes <= 1.3 * measured["supernet"]


# ----------------------------------------------------------------------------- metrics


def test_topk_without_the_default_cutoff_fails_before_training(planted):
    dataset, config = planted
    del config["valid_metric"], config["metrics"]  # RecBole's defaults: MRR@10 and its list
    config["topk"] = [5, 20]
    with pytest.raises(ValueError) as info:
        Config(model="SASRec", dataset=dataset, config_dict=config)
    message = str(info.value)
    assert "`valid_metric` = 'MRR@10' needs 10 in `topk` = [5, 20]" in message
    assert "mrr@5, mrr@20, ndcg@5, ndcg@20, hit@5, hit@20" in message


@pytest.mark.parametrize("metrics, topk, valid, error", [
    (["Hit"], [10], "NDCG@10", r"is not one of `metrics` = \['Hit'\]; use one of hit@10"),
    (["NDCG"], [10], "NDCG", r"needs @k with k in `topk` = \[10\]"),
    (["NDCG", "MACs"], [10], "MACs@10", "takes no @k: macs is not a top-k metric"),
    (["AUC"], [10], "AUC@10", "takes no @k"),
    (["NDCG"], [10], "Recall@10", "is not one of `metrics`"),
])
def test_valid_metric_inconsistencies(metrics, topk, valid, error):
    values = {"metrics": metrics, "topk": topk, "valid_metric": valid}
    with pytest.raises(ValueError, match=error):
        checks.check_metrics(values)


@pytest.mark.parametrize("metrics, topk, valid", [
    (["NDCG", "Hit"], [10], "ndcg@10"), (["NDCG", "MACs"], [5, 10], "MACs"),
    ("AUC", 10, "auc"), (["Recall", "ItemCoverage"], [20], "ItemCoverage@20"),
    (["NDCG", "Blocks", "Params", "MACsRatio"], [10], "MACsRatio"),
])
def test_consistent_valid_metrics_pass(metrics, topk, valid):
    checks.check_metrics({"metrics": metrics, "topk": topk, "valid_metric": valid})


def test_unknown_or_mixed_metrics_name_the_key(planted):
    dataset, config = planted
    with pytest.raises(ValueError, match=r"`metrics` = \['NDCG', 'NDCGX'\].*registry"):
        Config(model="SASRec", dataset=dataset, config_dict=dict(config,
                                                                metrics=["NDCG", "NDCGX"]))
    with pytest.raises(ValueError, match=r"`metrics` = \['NDCG', 'AUC'\] mixes ranking"):
        Config(model="SASRec", dataset=dataset, config_dict=dict(config, metrics=["NDCG", "AUC"]))


# ----------------------------------------------------------------------------- get_model


def test_missing_optional_dependency_is_named():
    with pytest.raises(ImportError) as info:
        get_model("XGBoost")
    message = str(info.value)
    assert "[XGBoost] is a RecBole model" in message
    assert re.search(r"No module named '(lightgbm|xgboost)'", message)
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    with pytest.raises(ValueError, match=r"model \[XGBoosst\] is neither"):
        get_model("XGBoosst")


def test_memory_estimate_is_skipped_for_models_without_a_transformer(base):
    assert estimate_memory(base["GRU4Rec"], "GRU4Rec") is None
    assert math.isfinite(estimate_memory(base["SASRec"], "SASRec").total_bytes)
