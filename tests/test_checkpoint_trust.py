"""Checkpoints never run code (compat C1), and a resume refuses another model, method or dataset
and never overwrites its file for another run."""

import contextlib
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_FOFA, planted_config, write_planted_dataset
from recbole.model.sequential_recommender import SASRec

from recbole_fofa import compat, get_trainer, load_data_and_model, search_checkpoint
from recbole_fofa.quick_start import prepare


class Payload:
    """Unpickling it runs a shell command that writes the file ``path``: the proof that code
    ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"echo ran > '{self.path}'",))


class CallsAModel:
    """Unpickling it would build a RecBole model: a class a checkpoint may name, never call."""

    def __reduce__(self):
        return (SASRec, ())


def _save(obj, path, protocol=4):
    torch.save(obj, path, pickle_protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_payload_is_refused_naming_the_file_and_global_and_never_runs(tmp_path, protocol):
    marker = tmp_path / "ran.txt"
    path = _save({"state_dict": {"w": torch.ones(2)}, "extra": Payload(marker)},
                 tmp_path / "bad.pth", protocol)
    refused = r"the global `\w+\.system`"  # posix.system: os.system's home
    with pytest.raises(compat.UntrustedCheckpointError, match=refused) as caught:
        compat.load_checkpoint_file(path)
    assert str(path) in str(caught.value) and "trust_checkpoint" in str(caught.value)
    assert isinstance(caught.value, pickle.UnpicklingError)
    assert not marker.exists()
    loaded = compat.load_checkpoint_file(path, trust=True)  # the explicit opt-in
    assert marker.read_text().strip() == "ran"
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2))


def test_model_classes_load_as_references_but_are_never_called(tmp_path):
    path = _save({"model_class": SASRec, "n": torch.tensor(3)}, tmp_path / "ref.pth")
    assert compat.load_checkpoint_file(path)["model_class"] is SASRec
    path = _save({"model": CallsAModel()}, tmp_path / "call.pth")
    with pytest.raises(compat.UntrustedCheckpointError, match="a call of SASRec"):
        compat.load_checkpoint_file(path)


def test_no_process_wide_switch_is_left():
    assert not hasattr(compat, "trusted_checkpoint_loads")
    assert not hasattr(compat, "torch_load_trusted")
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ


# ----------------------------------------------------------------------------- real checkpoints


def _fit(model_name, config):
    cfg, model, (train, valid, test) = prepare(model_name, "planted", config_dict=config)
    trainer = get_trainer(cfg["MODEL_TYPE"], model_name)(cfg, model)
    trainer.fit(train, valid, saved=True)
    return trainer.saved_model_file


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{name: checkpoint file} of ForwardOFA and SASRec trained through the plugin, SASRec
    trained by stock RecBole (its Config and Trainer), and payload copies of the first two."""
    from recbole.config import Config as StockConfig
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer as StockTrainer

    root = tmp_path_factory.mktemp("trust")
    config = dict(planted_config(root), **TINY_FOFA, epochs=1, supernet_epochs=1)
    files = {"root": root, "config": config}
    argv, sys.argv = sys.argv, ["pytest"]  # RecBole's Config reads the command line
    with contextlib.chdir(root):
        files["ForwardOFA"] = _fit("ForwardOFA", config)
        files["SASRec"] = _fit("SASRec", config)
        stock = StockConfig(model="SASRec", dataset="planted", config_dict=dict(
            config, train_neg_sample_args=None))
        data = create_dataset(stock)
        train, valid, _ = data_preparation(stock, data)
        trainer = StockTrainer(stock, SASRec(stock, train._dataset))
        trainer.saved_model_file = str(root / "saved" / "stock-SASRec.pth")
        trainer.fit(train, valid, saved=True)
        files["stock"] = trainer.saved_model_file
    sys.argv = argv
    for name in ("ForwardOFA", "SASRec"):
        checkpoint = torch.load(files[name], weights_only=False)
        checkpoint["extra"] = Payload(root / f"ran-{name}.txt")
        files[f"bad-{name}"] = _save(checkpoint, root / f"bad-{name}.pth")
    return files


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ForwardOFA", "SASRec", "stock"])
def test_real_checkpoints_load_and_evaluate(trained, name):
    assert type(compat.load_checkpoint_file(trained[name])["config"]).__name__ == "Config"
    config, model, _, _, _, test = load_data_and_model(trained[name])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    result = trainer.evaluate(test, load_best_model=True, model_file=trained[name])
    assert 0.0 <= result["ndcg@10"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ForwardOFA", "SASRec"])
def test_a_payload_checkpoint_is_refused_on_every_load_path(trained, name):
    bad, marker = trained[f"bad-{name}"], trained["root"] / f"ran-{name}.txt"
    config, model, _, _, _, test = load_data_and_model(trained[name])
    trainer = get_trainer(config["MODEL_TYPE"], name)(config, model)
    paths = [lambda: load_data_and_model(bad),
             lambda: trainer.resume_checkpoint(bad),
             lambda: trainer.evaluate(test, load_best_model=True, model_file=bad),
             lambda: trainer.load_best_checkpoint(bad)]
    if name == "ForwardOFA":
        paths.append(lambda: search_checkpoint(bad, budgets=[0.5]))
    for load in paths:
        with pytest.raises(compat.UntrustedCheckpointError, match=str(bad)):
            load()
        assert not marker.exists()
    load_data_and_model(bad, config_dict={"trust_checkpoint": True})  # the opt-in
    assert marker.exists()
    marker.unlink()


@pytest.mark.slow
def test_the_command_line_refuses_a_payload_in_one_message_and_trusts_on_request(trained,
                                                                                 capsys):
    from recbole_fofa.cli import main

    bad, marker = trained["bad-ForwardOFA"], trained["root"] / "ran-ForwardOFA.txt"
    flags = ["--search", f"--checkpoint={bad}", "--search_budgets=[0.5]"]
    with pytest.raises(SystemExit) as caught:
        main(flags)
    message = str(caught.value)
    assert message.startswith("run_recbole_fofa: error: ") and str(bad) in message
    assert "--trust_checkpoint" in message and "Traceback" not in message
    assert not marker.exists()
    assert main([*flags, "--trust_checkpoint"]) == 0
    assert marker.exists()
    assert "budget" in capsys.readouterr().out
    marker.unlink()


# ----------------------------------------------------------------------------- resume


def _trainer(name, config):
    cfg, model, data = prepare(name, "planted", config_dict=config)
    return get_trainer(cfg["MODEL_TYPE"], name)(cfg, model), data


@pytest.mark.slow
def test_resuming_the_same_run_writes_on_to_its_file(trained):
    with contextlib.chdir(trained["root"]):
        trainer, _ = _trainer("SASRec", trained["config"])
        trainer.resume_checkpoint(trained["SASRec"])
    assert trainer.saved_model_file == trained["SASRec"]


@pytest.mark.slow
def test_resuming_with_other_settings_keeps_the_resumed_file(trained):
    original = Path(trained["SASRec"]).read_bytes()
    with contextlib.chdir(trained["root"]):
        trainer, (train, valid, _) = _trainer("SASRec", dict(trained["config"], epochs=2,
                                                             learning_rate=0.005))
        trainer.resume_checkpoint(trained["SASRec"])
        assert trainer.saved_model_file != trained["SASRec"]
        trainer.fit(train, valid, saved=True)
    assert Path(trained["SASRec"]).read_bytes() == original
    assert Path(trainer.saved_model_file).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name,change,named", [
    ("ForwardOFA", {"controller": "none"}, "`controller`"),
    ("ForwardOFA", {"rt_len": 3}, "`rt_len`"),
    ("ForwardOFA", {"n_blocks": 2}, "`n_blocks`"),
    ("SASRec", {"hidden_size": 8, "inner_size": 16}, "`hidden_size`"),
    ("SASRec", {"MAX_ITEM_LIST_LENGTH": 6}, "position_embedding.weight"),
])
def test_resume_refuses_another_model_shape_or_method(trained, name, change, named):
    original = Path(trained[name]).read_bytes()
    with contextlib.chdir(trained["root"]):
        trainer, _ = _trainer(name, dict(trained["config"], **change))
        with pytest.raises(ValueError, match="cannot resume") as caught:
            trainer.resume_checkpoint(trained[name])
    assert named in str(caught.value) and str(trained[name]) in str(caught.value)
    assert Path(trained[name]).read_bytes() == original


@pytest.mark.slow
def test_resume_refuses_another_dataset_of_the_same_size(trained, tmp_path):
    """Same name, users, items and interactions, other walks: refused before anything trains."""
    write_planted_dataset(tmp_path / "other", seed=1)
    config = dict(trained["config"], data_path=str(tmp_path / "other"))
    original = Path(trained["SASRec"]).read_bytes()
    with contextlib.chdir(trained["root"]):
        trainer, (train, valid, _) = _trainer("SASRec", config)
        trainer.resume_checkpoint(trained["SASRec"])
        with pytest.raises(ValueError, match="other data: content") as caught:
            trainer.fit(train, valid, saved=True)
    assert "users" not in str(caught.value) and "items" not in str(caught.value)
    assert trainer.epoch_times == []
    assert Path(trained["SASRec"]).read_bytes() == original
    write_planted_dataset(tmp_path / "renamed", name="walks")
    with contextlib.chdir(trained["root"]):
        cfg, model, _ = prepare("SASRec", "walks", config_dict=dict(
            trained["config"], data_path=str(tmp_path / "renamed")))
        trainer = get_trainer(cfg["MODEL_TYPE"], "SASRec")(cfg, model)
        with pytest.raises(ValueError, match="`dataset` is 'planted' there, 'walks' here"):
            trainer.resume_checkpoint(trained["SASRec"])
