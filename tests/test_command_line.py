"""The command line's input handling and RecBole parity (issue 20, must-haves 6 and 7)."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from conftest import latest_log_text, write_atomic_files

from recbole_fofa import Config, cli, quick_start, run_recbole_fofa
from recbole_fofa.config import resolve_config_files, shipped_configs
from recbole_fofa.data_check import DatasetFileError
from recbole_fofa.registry import properties_dir


def _flags(argv):
    parser = cli.build_parser()
    args, rest = parser.parse_known_args(argv)
    return cli.check_flags(parser, args, rest)


@pytest.mark.parametrize("flag, expected", [("--modle=SASRec", "did you mean --model"),
                                            ("--epoch=1", "did you mean --epochs"),
                                            ("--note=x", "--note is unknown")])
def test_unknown_flags_are_errors_naming_the_closest_keys(flag, expected):
    with pytest.raises(SystemExit, match=expected) as error:
        cli.main([flag])
    assert "--debug shows the traceback" in str(error.value)
    with pytest.raises(ValueError, match=expected):  # --debug: the exception itself
        cli.main([flag, "--debug"])


def test_keys_of_the_users_config_files_are_declared(tmp_path):
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump({"my_dim": 4, "extra_keys": ["my_rate"]}))
    assert _flags([f"--config_files={own}", "--my_dim=8", "--my_rate=0.5"]) == {
        "my_dim": 8, "my_rate": 0.5}
    with pytest.raises(ValueError, match="--my_other"):
        _flags([f"--config_files={own}", "--my_other=1"])


def test_config_files_and_dicts_refuse_near_misses_only(planted, tmp_path):
    dataset, config = planted
    config_file = tmp_path / "typo.yaml"
    config_file.write_text("epoch: 1\n")
    with pytest.raises(ValueError, match=r"config-file key `epoch` .*did you mean `epochs`"):
        Config("SASRec", dataset, [str(config_file)], config)
    with pytest.raises(ValueError, match=r"config_dict key `modle` .*did you mean `model`"):
        Config("SASRec", dataset, config_dict=dict(config, modle="BPR"))
    # a key far from every known one is the user's own; extra_keys declares a near-miss
    own = Config("SASRec", dataset, config_dict=dict(config, my_dim=3, epoch=2,
                                                     extra_keys=["epoch"]))
    assert own["my_dim"] == 3 and own["epoch"] == 2
    with pytest.raises(ValueError, match="`extra_keys`"):
        Config("SASRec", dataset, config_dict=dict(config, extra_keys="epoch"))


def test_command_line_values_are_literals(planted, monkeypatch, tmp_path):
    dataset, config = planted
    marker = tmp_path / "ran"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    monkeypatch.setattr(sys, "argv", ["x", f"--my_note={payload}", "--epochs=3",
                                      "--topk=[5, 10]", "--show_progress=False"])
    loaded = Config("SASRec", dataset, config_dict=dict(config, my_value=payload))
    assert not marker.exists()
    assert loaded["my_note"] == payload and loaded["my_value"] == payload
    assert loaded["epochs"] == 3 and loaded["topk"] == [5, 10]
    assert loaded["show_progress"] is False


def test_help_names_defaults_and_shipped_configs():
    text = cli.build_parser().format_help()
    for expected in ("default: ForwardOFA on ml-100k", "default ml-100k", "main.yaml",
                     "converge.yaml", "--debug"):
        assert expected in text


def test_shipped_configs_resolve_by_name_from_any_folder(isolated):
    shipped = {"main.yaml", "converge.yaml"}
    assert shipped <= set(shipped_configs())
    main = str(properties_dir() / "main.yaml")
    assert resolve_config_files(["main.yaml", "properties/main.yaml"]) == [main, main]
    (isolated / "main.yaml").write_text("epochs: 1\n")  # a local file of that name wins
    assert resolve_config_files(["main.yaml"]) == ["main.yaml"]
    with pytest.raises(FileNotFoundError, match=r"'missing\.yaml' \(--config_files.*main\.yaml"):
        resolve_config_files(["missing.yaml"])
    with pytest.raises(SystemExit, match="missing.yaml"):
        cli.main(["--config_files=missing.yaml"])


def test_user_errors_print_one_message_without_traceback(tmp_path):
    command = [sys.executable, "-m", "recbole_fofa", "--modle=SASRec"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert done.returncode != 0
    assert "did you mean --model" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "log").exists()  # refused before anything ran


# ----------------------------------------------------------------------------- RecBole parity


def test_stopping_step_and_learning_rate_zero_are_accepted(planted):
    dataset, config = planted
    loaded = Config("SASRec", dataset, config_dict=dict(config, stopping_step=0,
                                                        learning_rate=0))
    assert loaded["stopping_step"] == 0 and loaded["learning_rate"] == 0
    for key, bad in (("stopping_step", -1), ("learning_rate", -0.1)):
        with pytest.raises(ValueError, match=f"`{key}`"):
            Config("SASRec", dataset, config_dict=dict(config, **{key: bad}))


@pytest.mark.slow
def test_stopping_step_zero_stops_at_the_first_epoch_without_improvement(planted):
    from recbole_fofa.quick_start import prepare
    from recbole_fofa.utils import get_trainer

    dataset, config = planted
    config, model, (train, valid, _) = prepare(
        "SASRec", dataset, config_dict=dict(config, stopping_step=0, epochs=30,
                                            learning_rate=0.05))
    trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, model)
    trainer.fit(train, valid, saved=False)
    scores = [score for _, score in trainer.valid_scores]
    # RecBole's early_stopping: an equal score counts as an improvement
    first_worse = next((i for i in range(1, len(scores)) if scores[i] < max(scores[:i])), None)
    assert first_worse is not None, scores
    assert len(scores) == first_worse + 1 < 30


@pytest.mark.slow
def test_learning_rate_zero_leaves_the_weights_as_initialised(planted):
    from recbole_fofa.quick_start import prepare
    from recbole_fofa.utils import get_trainer

    dataset, config = planted
    config, model, (train, valid, _) = prepare(
        "SASRec", dataset, config_dict=dict(config, learning_rate=0, epochs=1,
                                            hidden_dropout_prob=0.0, attn_dropout_prob=0.0))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    get_trainer(config["MODEL_TYPE"], "SASRec")(config, model).fit(train, valid, saved=False)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


@pytest.mark.slow
def test_epochs_zero_says_it_evaluates_an_untrained_model(planted):
    dataset, config = planted
    result = run_recbole_fofa("SASRec", dataset, config_dict=dict(config, epochs=0,
                                                                  state="WARNING"))
    assert result["test_result"]
    assert "`epochs` = 0: the model is not trained" in latest_log_text()


def _presplit(root, header, rows_of):
    parts = {"train": (1, 6), "valid": (6, 7), "test": (7, 8)}
    return write_atomic_files(root, "mine", {f"{name}.inter": (header, rows_of(*span))
                                             for name, span in parts.items()})


def _histories(start, stop, users=12):
    """RecBole's pre-split sequential rows: (user, the items before t, the item at t)."""
    out = []
    for user in range(users):
        items = [f"i{(3 * user + step) % 30}" for step in range(stop)]
        out += [(f"u{user}", " ".join(items[:t]), items[t]) for t in range(start, stop)]
    return out


@pytest.mark.slow
def test_pre_split_dataset_with_only_the_split_files_trains_sasrec(planted, tmp_path):
    _, config = planted
    folder = _presplit(tmp_path / "data", ["user_id:token", "item_id_list:token_seq",
                                           "item_id:token"], _histories)
    assert sorted(p.name for p in folder.iterdir()) == [
        "mine.test.inter", "mine.train.inter", "mine.valid.inter"]
    settings = dict(config, data_path=str(tmp_path / "data"), epochs=1,
                    benchmark_filename=["train", "valid", "test"])
    del settings["load_col"]  # the history column is loaded without setting load_col
    result = run_recbole_fofa("SASRec", "mine", config_dict=settings)
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0


def test_pre_split_dataset_checks_name_the_missing_history(planted, tmp_path):
    _, config = planted
    _presplit(tmp_path / "data", ["user_id:token", "item_id:token"],
              lambda start, stop: [(r[0], r[2]) for r in _histories(start, stop)])
    settings = dict(config, data_path=str(tmp_path / "data"),
                    benchmark_filename=["train", "valid", "test"])
    del settings["load_col"]
    with pytest.raises(DatasetFileError, match=r"mine\.train\.inter.*item_id_list"):
        Config("SASRec", "mine", config_dict=settings)


def test_forward_ofa_names_its_untrained_stage():
    from recbole_fofa.trainer.trainer import ForwardOFATrainer

    assert "untrained structure controller and mapper" in ForwardOFATrainer.untrained_message(
        None, "adapt")
    assert "`supernet_epochs` = 0" in ForwardOFATrainer.untrained_message(None, "supernet")


# ----------------------------------------------------------------------------- console


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True])
def test_a_plain_run_keeps_dumps_and_warnings_in_the_log_file(planted, capsys, monkeypatch,
                                                               verbose):
    dataset, config = planted
    checking = quick_start.check_split

    def warning_check(*args):  # stands for the libraries' FutureWarnings (pytest hides those)
        warnings.warn("a planted library warning", UserWarning, stacklevel=2)
        return checking(*args)

    monkeypatch.setattr(quick_start, "check_split", warning_check)
    run_recbole_fofa("SASRec", dataset, config_dict=dict(config, epochs=1, state="INFO",
                                                          verbose=verbose))
    console, log = capsys.readouterr().err, latest_log_text()
    dumps = ("General Hyper Parameters", "SASRec(", "a planted library warning",
             "[Training]: train_batch_size", "The running environment", "test result")
    for text in dumps:
        assert text in log
        assert (text in console) is verbose, text
    assert "epoch 0 training" in console and "epoch 0 training" in log
    checkpoint = next(Path(config["checkpoint_dir"]).glob("SASRec-*.pth"))
    log_file = os.path.relpath(max(Path("log").rglob("*.log"), key=os.path.getmtime))
    for text in (f"checkpoint: {checkpoint}", f"log file: {log_file}"):
        assert text in console and text in log
    assert len(console.splitlines()) < 25 or verbose  # epochs and paths, no dumps


def test_verbose_is_a_checked_key_and_a_bare_flag():
    assert cli.config_flags(["--verbose"]) == {"verbose": True}
    with pytest.raises(SystemExit, match=r"`verbose` = 'yes' is invalid: expected true or "
                                         r"false"):
        cli.main(["--verbose=yes"])


def test_an_explicit_dataset_is_told_apart_from_the_default():
    parser = cli.build_parser()
    default = parser.parse_known_args([])[0].dataset
    assert default == "ml-100k" and isinstance(default, cli.DefaultDataset)
    for argv in (["--dataset=ml-100k"], ["-d", "ml-100k"]):
        given = parser.parse_known_args(argv)[0].dataset
        assert given == "ml-100k" and not isinstance(given, cli.DefaultDataset)
