"""Reloading a trained model in a fresh process, and serving without accumulating state."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import TINY_FOFA, latest_log_text

from recbole_fofa import compat, get_trainer
from recbole_fofa.model import Stage
from recbole_fofa.quick_start import load_data_and_model, prepare
from recbole_fofa.trainer import load_checkpoint

pytestmark = pytest.mark.slow  # trains a model per test or starts processes

COST = ["NDCG", "Hit", "MACs", "Params", "Blocks"]

# Run in a fresh interpreter: nothing of the training process (numpy aliases set by Config(),
# imported modules, the model object) may help the reload.
RELOAD = textwrap.dedent(
    """
    import json, sys
    from recbole_fofa import get_trainer, load_data_and_model
    config, model, _, _, _, test = load_data_and_model(sys.argv[1])
    stage = getattr(model, "stage", None)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    result = trainer.evaluate(test, load_best_model=False)
    print(json.dumps({"stage": [stage, getattr(model, "stage", None)],
                      "result": {k: float(v) for k, v in result.items()}}))
    """
)


def _train(model_name, dataset, config):
    cfg, model, (train, valid, test) = prepare(model_name, dataset, config_dict=config)
    trainer = get_trainer(cfg["MODEL_TYPE"], model_name)(cfg, model)
    trainer.fit(train, valid, saved=True)
    result = trainer.evaluate(test, load_best_model=True)
    return trainer, model, test, {key: float(value) for key, value in result.items()}


@pytest.mark.parametrize("model_name", ["ForwardOFA", "SASRec"])
def test_reload_in_a_fresh_process_gives_the_scores_and_costs_of_training(planted, model_name):
    dataset, config = planted
    config.update(TINY_FOFA, epochs=2, supernet_epochs=1, metrics=COST)
    trainer, model, _, expected = _train(model_name, dataset, config)
    done = subprocess.run([sys.executable, "-c", RELOAD, trainer.saved_model_file],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reloaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert reloaded["result"] == expected  # exactly: same weights, same stage, same structures
    assert set(expected) >= {"ndcg@10", "hit@10", "macs", "params", "blocks"}
    if model_name == "ForwardOFA":
        assert reloaded["stage"] == ["adapt", "adapt"]  # building the trainer kept the stage


def test_a_new_trainer_keeps_a_trained_models_stage(planted):
    dataset, config = planted
    config.update(TINY_FOFA, epochs=1, supernet_epochs=1, backbone_lr_scale=0.0,
                  search_space="elastic")
    cfg, model, _ = prepare("ForwardOFA", dataset, config_dict=config)
    assert model.stage is Stage.SUPERNET  # a new model starts with the supernet stage
    model.stage = "adapt"  # a Stage or its string
    assert model.stage is Stage.ADAPT
    state = {k: t.clone() for k, t in model.state_dict().items()}
    trainer = get_trainer(cfg["MODEL_TYPE"], "ForwardOFA")(cfg, model)
    assert model.stage is Stage.ADAPT and trainer.epochs == cfg["epochs"]
    # building the trainer mutates nothing: weights, trainable flags, sampled space
    assert all(torch.equal(t, state[k]) for k, t in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters()) and model.subnet_space is None
    cfg, model, _ = prepare("ForwardOFA", dataset, config_dict=dict(config, supernet_epochs=0))
    assert model.stage is Stage.ADAPT
    with pytest.raises(ValueError, match=r"stage = 'finetune': use one of \['supernet', 'adapt'\]"):
        model.stage = "finetune"


def test_a_checkpoint_with_a_plain_string_stage_loads(planted):
    dataset, config = planted
    config.update(TINY_FOFA, epochs=1, supernet_epochs=1)
    trainer, model, _, _ = _train("ForwardOFA", dataset, config)
    checkpoint = compat.load_checkpoint_file(trainer.saved_model_file)
    assert type(checkpoint["other_parameter"]["stage"]) is str  # no enum is pickled
    checkpoint["other_parameter"]["stage"] = "adapt"  # as checkpoints before the enum stored it
    _, fresh, _ = prepare("ForwardOFA", dataset, config_dict=config)
    assert fresh.stage is Stage.SUPERNET
    load_checkpoint(fresh, checkpoint)
    assert fresh.stage is Stage.ADAPT
    assert all(torch.equal(t, model.state_dict()[k]) for k, t in fresh.state_dict().items())


def test_the_trainer_reports_epoch_times_and_the_stage1_backbone(planted):
    dataset, config = planted
    config.update(TINY_FOFA, epochs=2, supernet_epochs=1,
                  backbone_lr_scale=0.0)  # stage 2 leaves the backbone
    trainer, model, _, _ = _train("ForwardOFA", dataset, config)
    assert [epoch.stage for epoch in trainer.epoch_times] == ["supernet", "adapt", "adapt"]
    assert all(epoch.seconds > 0 for epoch in trainer.epoch_times)
    backbone = model.backbone_state_dict()
    assert trainer.stage1_backbone.keys() == backbone.keys()
    assert all(torch.equal(trainer.stage1_backbone[k], t) for k, t in backbone.items())
    sasrec, _, _, _ = _train("SASRec", dataset, dict(config, epochs=1))
    assert [epoch.stage for epoch in sasrec.epoch_times] == ["train"]


def _held_state(model):
    """Sizes of every container a model (and its submodules) holds outside its tensors."""
    sizes = {}
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            if attr.startswith("_") and attr in ("_parameters", "_buffers", "_modules"):
                continue
            if isinstance(value, (list, dict, set, tuple)):
                sizes[f"{name}.{attr}"] = len(value)
    return sizes


@pytest.mark.parametrize("metrics", [["NDCG", "Hit"], COST], ids=["no-cost", "cost"])
def test_serving_after_an_evaluation_accumulates_nothing(planted, metrics):
    dataset, config = planted
    config.update(TINY_FOFA, epochs=1, supernet_epochs=1, metrics=metrics)
    trainer, model, test, _ = _train("ForwardOFA", dataset, config)
    assert model._eval_masks is None  # the evaluation's recording ended with it
    batch = next(iter(test))[0]
    model.eval()
    model.full_sort_predict(batch)
    before = _held_state(model)
    for _ in range(300):
        scores = model.full_sort_predict(batch)
    assert _held_state(model) == before
    assert model._eval_masks is None and scores.shape == (len(batch), model.n_items)
    with torch.no_grad():
        trainer.evaluate(test, load_best_model=False)  # and again after a second evaluation
    assert model._eval_masks is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_checkpoint_trained_on_a_gpu_reloads_on_the_cpu(planted):
    dataset, config = planted
    config.update(epochs=1, metrics=["NDCG", "Hit"])
    trainer, _, _, expected = _train("SASRec", dataset, config)
    checkpoint = compat.load_checkpoint_file(trainer.saved_model_file)
    checkpoint["config"]["device"] = torch.device("cuda")  # as RecBole saves a GPU run's
    checkpoint["config"]["gpu_id"] = "0"
    path = trainer.saved_model_file.replace(".pth", "-gpu.pth")
    torch.save(checkpoint, path)
    config, model, *_, test = load_data_and_model(path, {"state": "warning"})
    assert config["device"] == torch.device("cpu") and config["gpu_id"] == ""
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    log = latest_log_text()
    assert "WARNING" in log and "reloaded on the CPU" in log
    result = get_trainer(config["MODEL_TYPE"], "SASRec")(config, model).evaluate(
        test, load_best_model=False)
    assert {k: float(v) for k, v in result.items()} == expected
