"""SubnetEstimator (RecBole valid evaluation per sub-network) and the accuracy predictor."""

import contextlib
import itertools
import math
import re

import numpy as np
import pytest
import torch
from conftest import planted_config

from recbole_fofa.quick_start import prepare
from recbole_fofa.search.estimator import (
    AccuracyPredictor,
    SubnetEstimator,
    distinct_samples,
    n_users_of,
    rows_loader,
    subsample_users,
    train_predictor,
)
from recbole_fofa.subnet import SubnetConfig
from recbole_fofa.utils import get_trainer

N_BLOCKS = 3


class FixedStructure:
    """Test double of ``ForwardOFA.active_subnet``: every user gets ``config.mask`` (full-width
    blocks), by replacing the controller's decision; counts how often it is entered."""

    def __init__(self, model):
        self.model, self.entered = model, []

    @contextlib.contextmanager
    def __call__(self, config):
        self.model.shape.validate(config)
        self.entered.append(config.key)
        model, original = self.model, self.model.eval_structure

        def fixed(item_seq, item_seq_len):
            z, mask, probs = original(item_seq, item_seq_len)
            return z, torch.tensor(config.mask).expand_as(mask).clone(), probs

        model.eval_structure = fixed
        try:
            yield model
        finally:
            del model.eval_structure


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(trainer, valid_data, fixed-structure double) of an untrained ForwardOFA, adapt stage."""
    root = tmp_path_factory.mktemp("estimator")
    config_dict = dict(planted_config(root), n_blocks=N_BLOCKS, epochs=0, supernet_epochs=0,
                       metric_decimal_place=12, seed=7)
    config, model, (_, valid_data, _) = prepare("ForwardOFA", "planted", config_dict=config_dict)
    double = FixedStructure(model)
    model.active_subnet = double
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    yield trainer, valid_data, double
    del model.active_subnet


def masks(model):
    return [model.shape.from_mask(m) for m in itertools.product([False, True], repeat=N_BLOCKS)
            if any(m)]


def direct_score(trainer, data, config, metric="ndcg@10"):
    with trainer.model.active_subnet(config):
        return trainer.evaluate(data, load_best_model=False)[metric]


def test_scores_are_recbole_evaluations_cached_by_key(setup):
    trainer, valid, double = setup
    double.entered.clear()
    estimator = SubnetEstimator(trainer, valid, "NDCG@10")
    configs = masks(trainer.model)
    a, b = configs[0], configs[-1]
    scores = estimator.evaluate([a, b, a, SubnetConfig.from_key(a.key)])
    assert scores.dtype == np.float64 and scores.shape == (4,)
    assert estimator.evaluations == 2 and double.entered == [a.key, b.key]
    assert scores[0] == scores[2] == scores[3]
    assert scores[0] == pytest.approx(direct_score(trainer, valid, a), abs=0)
    assert scores[1] == pytest.approx(direct_score(trainer, valid, b), abs=0)
    assert scores[0] != scores[1]  # the structure really changes the scores
    double.entered.clear()
    again = estimator.evaluate(configs)
    assert estimator.evaluations == len(configs)  # only the 5 unseen keys ran
    assert sorted(double.entered) == sorted(c.key for c in configs if c not in (a, b))
    assert again[0] == scores[0] and len(estimator.cache) == len(configs)
    assert estimator.seconds > 0


def test_metric_is_read_in_any_case_and_a_missing_one_names_the_key(setup):
    trainer, valid, _ = setup
    config = trainer.model.shape.full()
    hit = SubnetEstimator(trainer, valid, "Hit@10").evaluate([config])[0]
    assert hit == direct_score(trainer, valid, config, "hit@10")
    with pytest.raises(ValueError, match=re.escape("`search_metric` = 'mrr@10'")):
        SubnetEstimator(trainer, valid, "MRR@10").evaluate([config])


def test_a_model_without_active_subnet_is_refused(setup):
    trainer, valid, _ = setup

    class Plain:
        model = torch.nn.Linear(2, 2)

    with pytest.raises(TypeError, match="active_subnet"):
        SubnetEstimator(Plain(), valid)


def test_user_subsample_is_fixed_and_exact(setup):
    trainer, valid, _ = setup
    n = n_users_of(valid)
    assert n == 60
    full = SubnetEstimator(trainer, valid)
    assert full.data is valid and full.users == n
    everyone = SubnetEstimator(trainer, valid, eval_users=n)
    more = SubnetEstimator(trainer, valid, eval_users=10 * n)
    config = trainer.model.shape.from_mask([True, False, True])
    score = full.evaluate([config])[0]
    assert everyone.evaluate([config])[0] == more.evaluate([config])[0] == score

    sub = SubnetEstimator(trainer, valid, eval_users=17, seed=3)
    assert sub.users == 17 and len(sub.data._dataset) == 17
    same = subsample_users(valid, 17, seed=3)
    uid = valid._dataset.uid_field
    users = set(sub.data._dataset.inter_feat[uid].tolist())
    assert users == set(same._dataset.inter_feat[uid].tolist())
    assert users != set(subsample_users(valid, 17, seed=4)._dataset.inter_feat[uid].tolist())
    # a partition of the users: the per-user mean of the parts is the full mean
    rows = np.arange(len(valid._dataset))
    chosen = np.isin(valid._dataset.inter_feat[uid].numpy(), list(users))
    other = rows_loader(valid, rows[~chosen])
    part_a, part_b = sub.evaluate([config])[0], direct_score(trainer, other, config)
    assert (17 * part_a + (n - 17) * part_b) / n == pytest.approx(score, abs=1e-9)
    # all rows, shuffled: the same loader kind and the same score
    shuffled = rows_loader(valid, np.random.default_rng(0).permutation(rows))
    assert type(shuffled) is type(valid)
    assert direct_score(trainer, shuffled, config) == pytest.approx(score, abs=1e-12)


# ----------------------------------------------------------------------------- predictor


class MaskSpace:
    """Stand-in search space over block masks (smallest/largest/sample/encode only)."""

    def __init__(self, shape):
        self.shape = shape

    def smallest(self):
        return self.shape.from_mask([True] + [False] * (self.shape.n_blocks - 1))

    def largest(self):
        return self.shape.full()

    def sample(self, rng):
        mask = rng.random(self.shape.n_blocks) < 0.5
        if not mask.any():
            mask[rng.integers(self.shape.n_blocks)] = True
        return self.shape.from_mask(mask)

    def encode(self, configs):
        return np.array([c.mask for c in configs], dtype=np.float32)


def test_predictor_ranks_a_learnable_target_and_not_noise():
    rng = np.random.default_rng(0)
    features = rng.random((120, 12)).astype(np.float32)
    target = features @ rng.normal(size=12) + 0.3 * np.sin(3 * features[:, 0])
    predictor = AccuracyPredictor(12, seed=1).fit(features[:90], target[:90])
    spearman, kendall = predictor.rank_correlation(features[90:], target[90:])
    assert spearman > 0.9 and kendall > 0.75
    noise = rng.random(120)
    predictor = AccuracyPredictor(12, seed=1).fit(features[:90], noise[:90])
    spearman, _ = predictor.rank_correlation(features[90:], noise[90:])
    assert abs(spearman) < 0.5
    # same seed, same fit; constant predictions have no rank correlation
    again = AccuracyPredictor(12, seed=1).fit(features[:90], noise[:90])
    assert np.array_equal(again.predict(features), predictor.predict(features))
    assert all(math.isnan(v) for v in predictor.rank_correlation(features[:5], np.ones(5)))
    with pytest.raises(ValueError, match=r"shape \[N, 12\]"):
        predictor.predict(features[:, :3])


def test_predictor_is_used_only_above_the_threshold():
    configs = [SubnetConfig((w, 0, 4), (1, 0, 1)) for w in range(1, 41)]

    class WidthSpace:
        def encode(self, cfgs):
            return np.array([[c.widths[0] / 40, c.widths[0] ** 2 / 1600] for c in cfgs])

    def fit(threshold):  # the same split and seed each time: only the threshold differs
        rng = np.random.default_rng(1)
        scores = np.arange(1, 41, dtype=float) + rng.normal(0, 5, 40)
        return train_predictor(WidthSpace(), configs, scores, threshold, rng, seed=0)[1]

    report = fit(0.8)
    assert report.samples == 40 and report.held_out == 8 and report.train == 32
    assert 0.8 <= report.spearman < 0.95 and 0 < report.kendall < report.spearman
    assert report.used and report.to_dict()["used"] is True
    strict = fit(0.95)
    assert strict.spearman == report.spearman and not strict.used


def test_fit_predictor_offers_predict_only_when_it_ranks_well(setup):
    trainer, valid, _ = setup
    space = MaskSpace(trainer.model.shape)
    configs = distinct_samples(space, 50, np.random.default_rng(0))
    assert len(configs) == 2**N_BLOCKS - 1  # the whole 7-config space, no endless loop
    assert len({c.key for c in configs}) == len(configs)
    estimator = SubnetEstimator(trainer, valid)
    report = estimator.fit_predictor(space, 7, min_rank_corr=-1.0)
    assert report.samples == 7 and report.held_out == 3 and estimator.evaluations == 7
    assert report.used == (not math.isnan(report.spearman)) and hasattr(estimator, "predict")
    predicted = estimator.predict(configs)
    assert predicted.shape == (7,) and np.isfinite(predicted).all()
    assert estimator.evaluations == 7  # predictions are not evaluations
    report = estimator.fit_predictor(space, 7, min_rank_corr=1.0)
    assert estimator.evaluations == 7  # the same configs again come from the cache
    assert report.used == (report.spearman >= 1.0)
    assert hasattr(estimator, "predict") == report.used
    with pytest.raises(ValueError, match="search_predictor_samples"):
        estimator.fit_predictor(space, 3, min_rank_corr=0.0)


def test_real_active_subnet_of_the_full_supernet_is_the_supernet(planted):
    """No test double: in the supernet stage the full config under active_subnet scores exactly
    like the supernet itself, and a smaller config reports its own MACs."""
    dataset, config_dict = planted
    config_dict.update(n_blocks=N_BLOCKS, supernet_epochs=1, metrics=["NDCG", "MACs"],
                       metric_decimal_place=12)
    config, model, (_, valid, _) = prepare("ForwardOFA", dataset, config_dict=config_dict)
    assert model.stage == "supernet"
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    plain = trainer.evaluate(valid, load_best_model=False)
    estimator = SubnetEstimator(trainer, valid, "NDCG@10")
    full, small = model.shape.full(), SubnetConfig((32, 0, 8), (2, 0, 1))
    assert estimator.evaluate([full])[0] == plain["ndcg@10"]
    with model.active_subnet(small):
        result = trainer.evaluate(valid, load_best_model=False)
    assert result["macs"] == pytest.approx(float(model.shape.cost(small).encoder_macs[0]))
    assert estimator.evaluate([small])[0] == result["ndcg@10"]
    assert estimator.evaluations == 2
