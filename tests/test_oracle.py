"""The per-user routing oracle: each user's best sub-network on valid, scored on test."""

import numpy as np
import pytest
from conftest import TINY_FOFA

from recbole_fofa import experiment
from recbole_fofa.search import build_space
from recbole_fofa.search.oracle import align_users, route_by_valid


def test_route_by_valid_picks_each_users_valid_best_and_breaks_ties_by_cost():
    # 3 sub-networks x 4 users; user 3 ties configs 0 and 2 on valid
    valid = np.array([[0.9, 0.1, 0.0, 0.5],
                      [0.2, 0.8, 0.0, 0.1],
                      [0.1, 0.1, 0.7, 0.5]])
    test = {"ndcg@10": np.array([[1.0, 0.0, 0.0, 0.2],
                                 [0.0, 0.3, 0.0, 0.0],
                                 [0.0, 0.0, 0.6, 0.4]])}
    macs = [300.0, 200.0, 100.0]
    result = route_by_valid(valid, test, macs, ["a", "b", "c"])
    # users pick a, b, c, and c (cheaper than a at the same valid value)
    assert result["per_user"]["ndcg@10"] == [1.0, 0.3, 0.6, 0.4]
    assert result["test"]["ndcg@10"] == pytest.approx(2.3 / 4)
    assert result["macs"] == pytest.approx((300 + 200 + 100 + 100) / 4)
    assert result["users_per_config"] == {"a": 1, "b": 1, "c": 2}
    assert result["tied_users"] == 0
    # users 2 and 3 score the same on valid everywhere: routed by cost alone, to c
    flat = np.array([[0.9, 0.1, 0.0, 0.5], [0.2, 0.8, 0.0, 0.5], [0.1, 0.1, 0.0, 0.5]])
    tied = route_by_valid(flat, test, macs, ["a", "b", "c"])
    assert tied["tied_users"] == 2
    assert tied["users_per_config"] == {"a": 1, "b": 1, "c": 2}
    with pytest.raises(ValueError, match="configs, users"):
        route_by_valid(valid, test, macs[:2], ["a", "b"])


def test_align_users_orders_valid_users_as_test_users():
    valid_uids = np.array([5, 3, 9, 1])
    test_uids = np.array([1, 3, 5, 9])
    order = align_users(valid_uids, test_uids)
    np.testing.assert_array_equal(valid_uids[order], test_uids)
    with pytest.raises(ValueError, match="same users"):
        align_users(valid_uids, np.array([1, 3, 5, 8]))
    with pytest.raises(ValueError, match="same users"):
        align_users(np.array([1, 1, 3]), np.array([1, 3, 3]))


@pytest.mark.slow
def test_routing_oracle_on_a_trained_forward_ofa(planted):
    dataset, config = planted
    trained = experiment.train("ForwardOFA", dataset, None,
                               {**config, **TINY_FOFA, "supernet_epochs": 2, "epochs": 1})
    trainer = trained.trainer
    result = trainer.routing_oracle(trained.valid_data, trained.test_data)
    users = len(trained.test_data._dataset)
    assert sum(result["users_per_config"].values()) == users
    assert 0 <= result["tied_users"] <= users
    space = build_space(trained.config, trained.model.shape)
    assert set(result["users_per_config"]) <= {c.key for c in space.enumerate()}
    for metric, values in result["per_user"].items():
        assert len(values) == users
        assert np.mean(values) == pytest.approx(result["test"][metric])
    # every sub-network alone, scored on test: the oracle's choice is among them, per user
    block = trained.model.shape.block_macs()[0]
    single = trainer.routing_oracle(trained.valid_data, trained.test_data, max_macs=block)
    assert single["macs"] == pytest.approx(block)
    assert len(single["users_per_config"]) <= 3
    with pytest.raises(ValueError, match="no sub-network within"):
        trainer.routing_oracle(trained.valid_data, trained.test_data, max_macs=block - 1)
