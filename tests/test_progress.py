"""A run interrupted after any validation resumes from its progress file and ends with exactly the
numbers of an uninterrupted run (trainer.keep_progress, recbole_fofa/trainer/progress.py)."""

import pytest
import torch
from conftest import TINY_FOFA

from recbole_fofa import get_trainer
from recbole_fofa.quick_start import prepare
from recbole_fofa.trainer import progress

pytestmark = pytest.mark.slow


class Interrupted(Exception):
    """Stands for a killed process: raised after the progress of an epoch was written."""


def _run(model_name, config, progress_file, stop_after=None):
    """Fit (stopping with :class:`Interrupted` after ``stop_after`` validations, counted over
    every stage) and test; returns (best valid score, test result, trainer)."""
    cfg, model, (train, valid, test) = prepare(model_name, "planted", config_dict=config)
    trainer = get_trainer(cfg["MODEL_TYPE"], model_name)(cfg, model)
    trainer.keep_progress(progress_file)
    seen = []

    def interrupt(epoch_idx, score):
        seen.append(epoch_idx)
        if stop_after is not None and len(seen) == stop_after:
            raise Interrupted

    best, _ = trainer.fit(train, valid, saved=True, callback_fn=interrupt)
    result = trainer.evaluate(test, load_best_model=True)
    return best, dict(result), trainer


def _summary(trainer):
    return ([tuple(e)[:1] for e in trainer.epoch_times], trainer.valid_scores,
            trainer.training_summary())


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("model_name,extra,stops", [
    ("SASRec", {"epochs": 6, "stopping_step": 2}, [1, 3]),
    # ForwardOFA: interrupted in stage 1, at its end, and in stage 2
    ("ForwardOFA", {**TINY_FOFA, "supernet_epochs": 3, "epochs": 3}, [1, 3, 5]),
])
def test_an_interrupted_run_resumes_to_the_uninterrupted_numbers(planted, tmp_path, model_name,
                                                                extra, stops):
    _, config = planted
    config.update(extra)
    whole = _run(model_name, config, tmp_path / "whole.pt")
    assert not whole[2].resumes
    for stop in stops:
        path = tmp_path / f"cut{stop}.pt"
        with pytest.raises(Interrupted):
            _run(model_name, config, path, stop_after=stop)
        state = progress.read(path)
        assert state is not None and len(state["valid_scores"]) == stop
        resumed = _run(model_name, config, path)
        assert len(resumed[2].resumes) == 1
        assert resumed[0] == whole[0] and resumed[1] == whole[1]
        assert _summary(resumed[2]) == _summary(whole[2])


def test_a_finished_run_is_not_trained_again(planted, tmp_path):
    _, config = planted
    config.update(epochs=3)
    path = tmp_path / "run.pt"
    first = _run("SASRec", config, path)
    again = _run("SASRec", config, path)
    assert again[2].resumes == [("train", 2)]
    assert len(again[2].epoch_times) == 3 and again[2].train_loss_dict == first[2].train_loss_dict
    assert again[:2] == first[:2]


def test_progress_of_other_data_or_a_broken_file_is_refused(planted, tmp_path):
    _, config = planted
    config.update(epochs=2)
    path = tmp_path / "run.pt"
    _run("SASRec", config, path, stop_after=None)
    state = progress.read(path)
    state["extra"]["fingerprint"] = dict(state["extra"]["fingerprint"], content="0" * 64)
    state["stage_done"] = False
    progress.write(state, path)
    with pytest.raises(ValueError, match="run.pt: cannot resume this run from it: it was trained "
                                         "on other data"):
        _run("SASRec", config, path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="run.pt: cannot read this run's progress file"):
        _run("SASRec", config, path)
    assert progress.read(tmp_path / "none.pt") is None
