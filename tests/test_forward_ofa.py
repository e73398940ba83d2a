"""ForwardOFA and its trainer on the planted dataset: learning, structure, budgets, errors."""

import pytest
import torch
from conftest import TINY_FOFA, random_ndcg_at_10

from recbole_fofa import compat, cost, get_model, get_trainer, run_recbole_fofa
from recbole_fofa.model import ForwardOFA, Stage
from recbole_fofa.quick_start import prepare


@pytest.fixture
def fofa(planted):
    dataset, config = planted
    config.update(TINY_FOFA, supernet_epochs=5, epochs=5,
                  metrics=["NDCG", "Hit", "MACs", "Blocks", "Params"])
    return dataset, config


def _batch(cfg, data):
    return next(iter(data))


@pytest.mark.slow
def test_forward_ofa_learns_and_reports_its_structure(fofa):
    dataset, config = fofa
    result = run_recbole_fofa(model="ForwardOFA", dataset=dataset, config_dict=config)
    test = result["test_result"]
    assert test["ndcg@10"] > 0.8 > 5 * random_ndcg_at_10()
    block = cost.block_macs(8, 16, 32, 2)
    assert 1 <= test["blocks"] <= 3
    assert test["macs"] == pytest.approx(test["blocks"] * block)
    assert test["params"] == pytest.approx(cost.device_params_fixed(8, 16)
                                           + test["blocks"] * cost.block_params(16, 32))


def test_resolved_by_name_and_usable_with_the_stock_config(fofa):
    from recbole.config import Config as StockConfig

    from recbole_fofa import default_config_file
    from recbole_fofa.trainer import ForwardOFATrainer

    dataset, config = fofa
    assert get_model("ForwardOFA") is ForwardOFA
    assert get_trainer(ForwardOFA.type, "ForwardOFA") is ForwardOFATrainer
    stock = StockConfig(model=ForwardOFA, dataset=dataset,
                        config_file_list=[default_config_file("ForwardOFA")],
                        config_dict=dict(config, train_neg_sample_args=None))
    assert stock["n_blocks"] == 3 and stock["mapper_mode"] == "parallel"


def _head_grads(model, block):
    """Gradients of a scalar of block ``block``'s generated parameters w.r.t. every head."""
    model.zero_grad()
    for head in model.mapper.heads:
        torch.nn.init.normal_(head[-1].weight, std=0.5)
    z = torch.randn(4, model.hidden_size)
    mask = torch.ones(4, model.n_blocks)
    generated = model.mapper(z, mask)[block]
    (generated.g1.sum() + generated.ln_scale.sum()).backward()
    return [sum(float(p.grad.abs().sum()) if p.grad is not None else 0.0
                for p in head.parameters()) for head in model.mapper.heads]


@pytest.mark.parametrize("mode", ["parallel", "shared"])
def test_parallel_heads_isolate_gradients_and_shared_ones_couple_them(fofa, mode):
    dataset, config = fofa
    _, model, _ = prepare("ForwardOFA", dataset, config_dict=dict(config, mapper_mode=mode))
    for block in range(model.n_blocks):
        grads = _head_grads(model, block)
        if mode == "parallel":
            assert grads[block] > 0
            assert all(g == 0.0 for j, g in enumerate(grads) if j != block)
        else:
            assert len(grads) == 1 and grads[0] > 0


def _mean_kept_blocks(dataset, config, weight):
    config = dict(config, sparsity_weight=weight, supernet_epochs=2, epochs=4, seed=7,
                  keep_threshold=0.5)
    return run_recbole_fofa(model="ForwardOFA", dataset=dataset, config_dict=config,
                            saved=False)["test_result"]["blocks"]


@pytest.mark.slow
def test_larger_sparsity_weight_keeps_fewer_blocks(fofa):
    dataset, config = fofa
    assert _mean_kept_blocks(dataset, config, 20.0) < _mean_kept_blocks(dataset, config, 0.0)


def test_skipped_blocks_are_not_called_and_budgets_hold(fofa):
    dataset, config = fofa
    config["device_budget"] = 0.34  # one block of three
    cfg, model, (train, valid, test) = prepare("ForwardOFA", dataset, config_dict=config)
    model.stage = Stage.ADAPT  # the controller's structures (a new model starts as a supernet)
    rows_seen = [0] * model.n_blocks

    def counter(index):
        def hook(module, args, output):
            rows_seen[index] += args[0].size(0)
        return hook

    for index, block in enumerate(model.blocks):
        block.register_forward_hook(counter(index))
    with torch.no_grad():  # make the controller keep exactly block 1 for everyone
        model.controller.linear.weight.zero_()
        model.controller.linear.bias.copy_(torch.tensor([-5.0, 5.0, -5.0]))
    model.eval()
    batch = next(iter(test))[0]
    model.full_sort_predict(batch)
    assert rows_seen == [0, len(batch), 0]

    with torch.no_grad():  # all blocks wanted, the budget allows one: the most probable stays
        model.controller.linear.bias.copy_(torch.tensor([5.0, 6.0, 4.0]))
    _, mask, _ = model.eval_structure(batch["item_id_list"], batch["item_length"])
    assert mask.sum(dim=1).eq(1).all() and mask[:, 1].all()
    model.reset_evaluation_costs()
    model.full_sort_predict(batch)
    macs = model.evaluation_costs()["macs"]
    assert (macs <= model.device_budget).all()


def test_inference_is_one_forward_pass_without_gradients(fofa):
    dataset, config = fofa
    _, model, (_, _, test) = prepare("ForwardOFA", dataset, config_dict=config)
    model.stage = Stage.ADAPT
    model.eval()
    batch = next(iter(test))[0]
    before = [p.detach().clone() for p in model.parameters()]
    scores = model.full_sort_predict(batch)
    assert not scores.requires_grad and scores.shape == (len(batch), model.n_items)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
    assert model._eval_masks is None  # serving outside an evaluation records nothing
    with pytest.raises(RuntimeError, match="reset_evaluation_costs"):
        model.evaluation_costs()


def test_save_then_load_gives_identical_scores(fofa, tmp_path):
    dataset, config = fofa
    config.update(supernet_epochs=1, epochs=1)
    cfg, model, (train, valid, test) = prepare("ForwardOFA", dataset, config_dict=config)
    trainer = get_trainer(cfg["MODEL_TYPE"], "ForwardOFA")(cfg, model)
    trainer.fit(train, valid, saved=True)
    batch = next(iter(test))[0]
    model.eval()
    scores = model.full_sort_predict(batch)
    checkpoint = compat.load_checkpoint_file(trainer.saved_model_file)
    assert checkpoint["other_parameter"]["stage"] == "adapt"

    _, fresh, _ = prepare("ForwardOFA", dataset, config_dict=config)
    fresh.stage = "supernet"
    fresh.load_state_dict(checkpoint["state_dict"])
    fresh.load_other_parameter(checkpoint["other_parameter"])
    fresh.eval()
    assert fresh.stage == "adapt"
    assert torch.equal(fresh.full_sort_predict(batch), scores)

    fresh.stage = "supernet"  # resuming switches to the checkpoint's stage
    resumed = get_trainer(cfg["MODEL_TYPE"], "ForwardOFA")(cfg, fresh)
    assert fresh.stage == "supernet"
    resumed.resume_checkpoint(trainer.saved_model_file)
    assert fresh.stage == "adapt" and resumed.start_epoch == checkpoint["epoch"] + 1


def test_stage_two_scales_or_freezes_the_backbone(fofa):
    dataset, config = fofa
    for scale in (0.0, 0.5):
        settings = dict(config, backbone_lr_scale=scale, supernet_epochs=0)
        cfg, model, _ = prepare("ForwardOFA", dataset, config_dict=settings)
        trainer = get_trainer(cfg["MODEL_TYPE"], "ForwardOFA")(cfg, model)
        assert all(p.requires_grad for p in model.parameters())  # building changes nothing
        trainer.enter_stage(Stage.ADAPT)  # what fit does when stage 2 starts
        lrs = sorted(group["lr"] for group in trainer.optimizer.param_groups)
        frozen = [p for p in model.backbone_parameters() if not p.requires_grad]
        if scale == 0.0:
            assert lrs == [cfg["learning_rate"]] and len(frozen) == len(
                list(model.backbone_parameters()))
        else:
            assert lrs == [cfg["learning_rate"] * 0.5, cfg["learning_rate"]] and not frozen
    assert trainer.temperature(0) == cfg["tau_start"]
    assert trainer.temperature(cfg["tau_anneal_epochs"]) == pytest.approx(cfg["tau_end"])


@pytest.mark.parametrize("key, value", [
    ("mapper_mode", "serial"), ("extractor", "lstm"), ("rt_len", 0), ("n_blocks", 0),
    ("sparsity_weight", -0.1), ("keep_threshold", 1.0), ("keep_threshold", 0.0),
    ("device_budget", 0.2), ("device_budget", 100), ("supernet_full_epochs", -1),
    ("sparsity_target", 0.0), ("sparsity_target", 1.5)])
def test_invalid_values_raise_naming_the_key(fofa, key, value):
    dataset, config = fofa
    config[key] = value
    with pytest.raises(ValueError, match=f"`{key}` = {value!r}"):
        prepare("ForwardOFA", dataset, config_dict=config)


def test_full_epochs_train_the_full_network_alone_then_the_sandwich(fofa):
    dataset, config = fofa
    cfg, model, (train, _, _) = prepare("ForwardOFA", dataset, config_dict=dict(
        config, supernet_full_epochs=1, supernet_subnets=2, distill_weight=0.0,
        hidden_dropout_prob=0.0, attn_dropout_prob=0.0))
    interaction = _batch(cfg, train)
    seq, length = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
    torch.manual_seed(0)
    full_only = model.calculate_loss(interaction)
    full = model._rec_loss(model.encode_subnet(seq, length, model.shape.full()), interaction)
    assert full_only.item() == pytest.approx(full.item(), rel=1e-6)
    model.supernet_epoch = 1  # the trainer sets it per epoch: now the sub-networks join
    step = model.supernet_step
    expected = full + sum(model._rec_loss(model.encode_subnet(seq, length, sub), interaction)
                          for sub in model.sample_subnets(step))
    assert model.calculate_loss(interaction).item() == pytest.approx(expected.item(), rel=1e-5)

    cfg["supernet_epochs"], cfg["epochs"] = 4, 0
    trainer = get_trainer(cfg["MODEL_TYPE"], "ForwardOFA")(cfg, model)
    trainer.fit(train, saved=False)
    assert model.supernet_epoch == 3  # the trainer set the epoch it trained last
    assert [epoch.stage for epoch in trainer.epoch_times] == ["supernet"] * 4


def test_sparsity_target_penalises_only_the_excess_per_user(fofa):
    dataset, config = fofa
    _, model, _ = prepare("ForwardOFA", dataset, config_dict=dict(config, sparsity_target=0.5))
    costs = model.block_costs / model.block_costs.sum()
    probs = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.2, 0.2], [1.0, 0.5, 0.0]], requires_grad=True)
    excess = model.penalised_cost(probs)
    expected = (probs.detach() @ costs - 0.5).clamp(min=0)
    assert torch.allclose(excess, expected) and excess[0].item() == pytest.approx(0.5)
    assert excess[1].item() == 0.0
    excess.sum().backward()
    assert probs.grad[1].abs().sum() == 0 and (probs.grad[0] > 0).all()
    model.sparsity_target = None  # the paper's global penalty: every user's expected cost
    assert torch.allclose(model.penalised_cost(probs.detach()), probs.detach() @ costs)


def test_training_statistics_stay_tensors_until_the_epoch_reads_them(fofa):
    dataset, config = fofa
    cfg, model, (train, _, _) = prepare("ForwardOFA", dataset, config_dict=config)
    model.stage = Stage.ADAPT
    model.train()
    batch = _batch(cfg, train)
    model.reset_kept_blocks()
    for _ in range(2):
        rec_loss, sparsity_loss = model.calculate_loss(batch)
        (rec_loss + sparsity_loss).backward()
    assert isinstance(model._kept_sum, torch.Tensor) and not model._kept_sum.requires_grad
    assert model._kept_rows == 2 * len(batch)
    assert 0.0 <= model.mean_kept_blocks() <= model.n_blocks


def test_controller_none_fixes_every_block_and_penalises_nothing(fofa):
    dataset, config = fofa
    cfg, model, (train, _, _) = prepare("ForwardOFA", dataset,
                                        config_dict=dict(config, controller="none"))
    model.stage = Stage.ADAPT
    model.train()
    rec_loss, sparsity_loss = model.calculate_loss(_batch(cfg, train))
    assert sparsity_loss.item() == 0.0 and model.mean_kept_blocks() == model.n_blocks
    logits = torch.randn(4, model.n_blocks)
    assert torch.equal(model.keep_probs(logits), torch.ones_like(logits))
    model.eval()
    batch = _batch(cfg, train)
    _, mask, probs = model.eval_structure(batch["item_id_list"], batch["item_length"])
    assert mask.all() and torch.equal(probs, torch.ones_like(probs))


def test_stage2_distillation_adds_the_kl_from_the_full_network(fofa):
    dataset, config = fofa
    cfg, model, (train, _, _) = prepare("ForwardOFA", dataset, config_dict=dict(
        config, controller="none", hidden_dropout_prob=0.0, attn_dropout_prob=0.0))
    model.stage = Stage.ADAPT
    model.train()
    batch = _batch(cfg, train)
    plain, _ = model.calculate_loss(batch)
    model.adapt_distill_weight = 0.5
    with_kl, _ = model.calculate_loss(batch)
    seq, length = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    teacher = torch.softmax(model.scores(model.encode_subnet(seq, length, model.shape.full())), -1)
    user = model._encode_batch(seq, length).user
    kl = torch.nn.functional.kl_div(torch.log_softmax(model.scores(user), -1), teacher,
                                    reduction="batchmean")
    assert kl.item() > 0  # the generated parameters move each user away from the plain network
    assert with_kl.item() == pytest.approx(plain.item() + 0.5 * kl.item(), rel=1e-5)
    model.zero_grad()
    with_kl.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in model.named_parameters() if n.startswith("mapper."))


def test_noise_annealing_and_a_keep_everything_start(fofa):
    from recbole_fofa.model.controller import gumbel_sigmoid

    logits = torch.tensor([[2.0, -0.5, 0.1, -3.0]] * 64)
    torch.manual_seed(0)
    noisy = gumbel_sigmoid(logits, 0.5)
    torch.manual_seed(0)
    assert torch.equal(gumbel_sigmoid(logits, 0.5, noise=1.0), noisy)  # the default is unchanged
    assert not torch.equal(noisy, noisy[:1].expand_as(noisy))  # samples differ by row
    quiet = gumbel_sigmoid(logits, 0.5, noise=0.0)
    assert torch.equal(quiet, (logits > 0).float())  # evaluation's structure at threshold 0.5
    dataset, config = fofa
    cfg, model, _ = prepare("ForwardOFA", dataset, config_dict=dict(
        config, controller_init_keep=0.9, gumbel_noise_end=0.0, tau_anneal_epochs=4))
    assert torch.allclose(torch.sigmoid(model.controller.linear.bias), torch.tensor(0.9))
    trainer = get_trainer(cfg["MODEL_TYPE"], "ForwardOFA")(cfg, model)
    assert [trainer.noise_scale(e) for e in (0, 2, 4, 9)] == [1.0, 0.5, 0.0, 0.0]
