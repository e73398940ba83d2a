"""The foundation: quick start, CLI, name resolution, data resolution and config errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import random_ndcg_at_10, write_planted_dataset
from recbole.data import create_dataset

import recbole_fofa
from recbole_fofa import Config, get_model, get_trainer, run_recbole_fofa
from recbole_fofa.config import default_config_file, properties_dir
from recbole_fofa.quick_start import load_data_and_model, prepare


@pytest.mark.slow
def test_sasrec_learns_the_planted_pattern(planted):
    dataset, config = planted
    result = run_recbole_fofa(model="SASRec", dataset=dataset, config_dict=config)
    assert set(result) == {"best_valid_score", "valid_score_bigger", "best_valid_result",
                           "test_result"}
    assert result["valid_score_bigger"] is True
    ndcg = result["test_result"]["ndcg@10"]
    assert ndcg > 0.8 > 5 * random_ndcg_at_10()
    assert result["test_result"]["hit@10"] > 0.9


def test_recbole_models_resolve_unchanged():
    from recbole.model.sequential_recommender import GRU4Rec, SASRec
    from recbole.trainer import Trainer as RecBoleTrainer

    assert get_model("SASRec") is SASRec and get_model("GRU4Rec") is GRU4Rec
    trainer = get_trainer(SASRec.type, "SASRec")
    assert issubclass(trainer, RecBoleTrainer) and trainer is recbole_fofa.Trainer


def test_recbole_special_trainers_keep_their_behaviour():
    from recbole.trainer import S3RecTrainer

    trainer = get_trainer(get_model("S3Rec").type, "S3Rec")
    assert issubclass(trainer, S3RecTrainer) and trainer.__name__ == "S3RecTrainer"
    assert get_trainer(get_model("S3Rec").type, "S3Rec") is trainer  # built once


@pytest.mark.slow
def test_gru4rec_runs_through_the_plugin(planted):
    dataset, config = planted
    config.update(epochs=2, embedding_size=16)
    result = run_recbole_fofa(model="GRU4Rec", dataset=dataset, config_dict=config)
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"model \[SASRek\].*SASRec"):
        get_model("SASRek")
    with pytest.raises(ValueError, match="SASRek"):
        Config(model="SASRek", dataset="ml-100k")


def test_missing_dataset_names_the_paths_tried(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        Config(model="SASRec", dataset="nowhere", config_dict={"data_path": str(tmp_path)})
    message = str(info.value)
    assert "nowhere.inter" in message and str(tmp_path / "nowhere") in message


@pytest.mark.parametrize(
    "key, value",
    [("learning_rate", "fast"), ("epochs", -1), ("train_batch_size", 0),
     ("MAX_ITEM_LIST_LENGTH", 2.5), ("hidden_dropout_prob", 1.5)],
)
def test_malformed_config_values_name_the_key(planted, key, value):
    dataset, config = planted
    config[key] = value
    with pytest.raises(ValueError, match=f"`{key}` = {value!r}"):
        Config(model="SASRec", dataset=dataset, config_dict=config)


def test_bundled_ml_100k_is_found_without_download(tmp_path):
    config = Config(model="SASRec", dataset="ml-100k",
                    config_dict={"data_path": str(tmp_path), "state": "ERROR"})
    bundled = Path(__import__("recbole").__file__).resolve().parent / "dataset_example" / "ml-100k"
    assert Path(config["data_path"]).resolve() == bundled
    dataset = create_dataset(config)
    assert dataset.inter_num == 100_000 and dataset.user_num == 944 and dataset.item_num == 1683


def test_a_users_own_ml_100k_takes_precedence(tmp_path):
    write_planted_dataset(tmp_path, name="ml-100k")
    config = Config(model="SASRec", dataset="ml-100k", config_dict={"data_path": str(tmp_path)})
    assert Path(config["data_path"]).resolve() == (tmp_path / "ml-100k").resolve()


def test_plugin_yaml_layers_under_user_settings(planted):
    dataset, config = planted
    assert (properties_dir() / "overall.yaml").is_file()
    plugin = yaml.safe_load((properties_dir() / "overall.yaml").read_text())
    defaults = Config(model="SASRec", dataset=dataset,
                      config_dict={"data_path": config["data_path"]})
    # only the distributed-run keys, which a one-process run never reads, the declared keys of
    # the user's own model (null), the checkpoint-loading opt-in (false) and the console's
    # dumps (false: in the log file only)
    assert set(plugin) == {"dist_backend", "dist_timeout", "extra_keys", "trust_checkpoint",
                           "verbose"}
    assert defaults["valid_metric"] == "MRR@10"  # RecBole's default stays
    overridden = Config(model="SASRec", dataset=dataset, config_dict=config)
    assert overridden["valid_metric"] == "NDCG@10" and overridden["metrics"] == ["NDCG", "Hit"]
    ml = Config(model="SASRec", dataset="ml-100k")  # RecBole's own ml-100k settings, unchanged
    assert ml["MAX_ITEM_LIST_LENGTH"] == 50 and "rating" in ml["load_col"]["inter"]
    with pytest.raises(FileNotFoundError, match="NoSuchModel"):
        default_config_file("NoSuchModel")


def test_ce_models_get_no_negative_sampling_but_bpr_models_keep_it(planted):
    dataset, config = planted
    ce = Config(model="SASRec", dataset=dataset, config_dict=config)
    assert ce["train_neg_sample_args"]["distribution"] == "none"
    bpr = Config(model="SASRec", dataset=dataset, config_dict=dict(config, loss_type="BPR"))
    assert bpr["train_neg_sample_args"]["distribution"] == "uniform"


def test_best_checkpoint_reload_and_resume(planted):
    dataset, config = planted
    config["epochs"] = 3
    cfg, model, (train, valid, test) = prepare("SASRec", dataset, config_dict=config)
    trainer = get_trainer(cfg["MODEL_TYPE"], "SASRec")(cfg, model)
    trainer.fit(train, valid, saved=True)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    before = trainer.evaluate(test, load_best_model=True)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    after = trainer.evaluate(test, load_best_model=True)
    assert before == after
    checkpoint = recbole_fofa.compat.load_checkpoint_file(trainer.saved_model_file)
    for key, value in model.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"][key])
    assert set(saved) == set(checkpoint["state_dict"])

    resumed = get_trainer(cfg["MODEL_TYPE"], "SASRec")(cfg, model)
    resumed.resume_checkpoint(trainer.saved_model_file)
    assert resumed.start_epoch == checkpoint["epoch"] + 1
    assert resumed.best_valid_score == checkpoint["best_valid_score"]

    loaded_config, loaded_model, *_ = load_data_and_model(trainer.saved_model_file)
    assert loaded_config["model"] == "SASRec"
    for key, value in loaded_model.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"][key])


def _write_cli_config(tmp_path, planted):
    _, config = planted
    config = dict(config, epochs=3)
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_cli_runs_end_to_end(tmp_path, planted):
    path = _write_cli_config(tmp_path, planted)
    command = [sys.executable, "-m", "recbole_fofa", "--model=SASRec", "--dataset=planted",
               f"--config_files={path}", "--epochs=2", "--state=INFO"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout.splitlines()
    assert "SASRec on planted" in table
    header = table.index("SASRec on planted") + 1
    assert table[header].split() == ["metric", "valid", "test"]
    rows = {line.split()[0]: line.split()[1:] for line in table[header + 1:] if line.strip()}
    assert set(rows) == {"ndcg@10", "hit@10"}
    assert all(0.0 <= float(value) <= 1.0 for row in rows.values() for value in row)
    logs = list((tmp_path / "log" / "SASRec").glob("*.log"))
    assert logs and "epoch 1 training" in logs[0].read_text()  # --epochs=2 reached the config


@pytest.mark.slow
def test_cli_reports_config_errors(tmp_path, planted):
    path = _write_cli_config(tmp_path, planted)
    command = [sys.executable, "-m", "recbole_fofa", "--model=SASRec", "--dataset=planted",
               f"--config_files={path}", "--learning_rate=-1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "`learning_rate` = -1" in done.stderr
    assert "Traceback" not in done.stderr  # one message; --debug shows the traceback


@pytest.mark.slow
def test_checkpoints_and_logs_stay_in_the_working_directory(planted, isolated):
    dataset, config = planted
    config["epochs"] = 1
    del config["checkpoint_dir"]
    run_recbole_fofa(model="SASRec", dataset=dataset, config_dict=config)
    assert list((isolated / "saved").glob("SASRec-*.pth"))
    assert list((isolated / "log").rglob("*.log"))
