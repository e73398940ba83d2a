"""The per-user routing oracle: each user's best sub-network on valid, scored on test.

A controller picks one sub-network per user from what it sees; the oracle picks the one that
scored best on that user's own valid item. Only valid results choose; test results only score
the choice. It is a ceiling on per-user routing only as far as the valid item says anything: on a
leave-one-out split a user has one valid item, and a user whose valid item ranks outside the
cutoff in every sub-network scores 0 everywhere, so the tie rule alone routes them
(``tied_users`` counts them). Where most users tie, the oracle can score below a single fixed
sub-network.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

__all__ = ["align_users", "route_by_valid"]


def align_users(valid_uids, test_uids) -> np.ndarray:
    """Index into the valid users that lists them in the test users' order; a ValueError when
    the two splits do not hold the same users once each."""
    valid_uids, test_uids = np.asarray(valid_uids), np.asarray(test_uids)
    if (len(np.unique(valid_uids)) != len(valid_uids)
            or set(valid_uids.tolist()) != set(test_uids.tolist())
            or len(valid_uids) != len(test_uids)):
        raise ValueError("the routing oracle needs one valid and one test item per user, for the "
                         "same users (RecBole's leave-one-out split: eval_args.split {'LS': "
                         "'valid_and_test'})")
    order = np.argsort(valid_uids, kind="stable")
    return order[np.searchsorted(valid_uids[order], test_uids)]


def route_by_valid(valid: np.ndarray, test: Dict[str, np.ndarray], macs: Sequence[float],
                   keys: Sequence[str]) -> dict:
    """Route every user to the sub-network with the best valid value (ties: the cheaper one).

    ``valid`` [configs, users]: the selection metric on valid; ``test`` {metric: [configs,
    users]}: per-user test values in the same user order; ``macs`` [configs]: each sub-network's
    encoder MACs; ``keys`` [configs]: their names. Returns the oracle's mean test value per metric,
    its per-user test values, its mean MACs, how many users each sub-network got, and how many
    users ``tied_users`` had the same valid value in every sub-network (routed by cost alone).
    """
    valid = np.asarray(valid, dtype=np.float64)
    macs = np.asarray(macs, dtype=np.float64)
    if valid.ndim != 2 or valid.shape[0] != len(macs) or len(keys) != len(macs):
        raise ValueError(f"valid must be [configs, users] with one MACs value and key per "
                         f"config; got {valid.shape}, {len(macs)} MACs, {len(keys)} keys")
    # best valid value first, then fewer MACs: lexsort sorts by its last key first
    order = np.lexsort((np.broadcast_to(macs[:, None], valid.shape), -valid), axis=0)
    choice = order[0]
    users = np.arange(valid.shape[1])
    per_user = {metric: np.asarray(values, dtype=np.float64)[choice, users]
                for metric, values in test.items()}
    counts = np.bincount(choice, minlength=len(keys))
    return {
        "test": {metric: float(values.mean()) for metric, values in per_user.items()},
        "per_user": {metric: values.tolist() for metric, values in per_user.items()},
        "macs": float(macs[choice].mean()),
        "users_per_config": {keys[i]: int(c) for i, c in enumerate(counts) if c},
        "tied_users": int((valid == valid[:1]).all(axis=0).sum()),
    }
