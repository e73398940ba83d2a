"""Quality of a sub-network: a RecBole evaluation on the valid split, and an optional predictor.

:class:`SubnetEstimator` is the estimator the search (:func:`recbole_fofa.search.evolution.search`)
asks for scores: ``evaluate(configs)`` runs the trainer's own ``evaluate`` under
``model.active_subnet(config)`` and reads ``search_metric``; every key is evaluated once, and
``evaluations`` counts the RecBole evaluations really run. :class:`AccuracyPredictor` is OFA's
accuracy predictor (an MLP on :meth:`SearchSpace.encode` features), fitted on evaluated configs;
the estimator offers ``predict`` to the search only when the predictor ranks held-out configs
well enough (Spearman >= ``search_predictor_min_rank_corr``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from logging import getLogger
from typing import Dict, Iterable, List, Sequence

import numpy as np
import torch
from recbole.utils import set_color
from scipy import stats
from torch import nn

from recbole_fofa import distributed
from recbole_fofa.subnet import SubnetConfig


def _unwrap(model):
    return getattr(model, "module", model)  # DistributedDataParallel


def subsample_users(eval_data, n_users: int, seed: int = 0):
    """A dataloader of the same kind as ``eval_data`` over a fixed random subset of its users.

    ``n_users`` users are drawn without replacement (``numpy.random.default_rng(seed)``) from the
    users that have rows in ``eval_data``; every row of a chosen user is kept, in the original
    order, so that the subset's metrics are RecBole's metrics on exactly those users. With
    ``n_users`` at least the number of users, ``eval_data`` itself is returned.
    """
    dataset = eval_data._dataset
    uids = dataset.inter_feat[dataset.uid_field].cpu().numpy()
    users = np.unique(uids)
    if n_users >= len(users):
        return eval_data
    chosen = np.random.default_rng(seed).choice(users, size=n_users, replace=False)
    rows = np.flatnonzero(np.isin(uids, chosen))
    return rows_loader(eval_data, rows)


def rows_loader(eval_data, rows: Sequence[int]):
    """A dataloader of the same class, config and sampler as ``eval_data`` over ``rows`` of its
    dataset (positions into ``eval_data._dataset.inter_feat``)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        raise ValueError("rows_loader: no rows selected")
    dataset = eval_data._dataset
    subset = dataset.copy(dataset.inter_feat[torch.as_tensor(rows)])
    config = distributed.unsharded_config(eval_data.config)  # every row, also under DDP
    return type(eval_data)(config, subset, eval_data._sampler, shuffle=False)


def n_users_of(eval_data) -> int:
    """Number of distinct users with rows in ``eval_data``."""
    dataset = eval_data._dataset
    return int(np.unique(dataset.inter_feat[dataset.uid_field].cpu().numpy()).size)


class SubnetEstimator:
    """Valid-split quality of sub-networks, by RecBole's evaluator under ``active_subnet``.

    Args:
        trainer: the RecBole trainer holding the trained model (``trainer.model``); its
            ``evaluate`` (collector, evaluator, cost metrics) is used unchanged.
        valid_data: the valid dataloader.
        metric: the result to maximise, as RecBole names it (``"NDCG@10"``, any case).
        eval_users: None for every valid user, else a fixed random subsample of that many users,
            drawn once with ``seed`` (see :func:`subsample_users`).
        seed: seed of the user subsample and of the predictor.

    ``evaluate(configs)`` returns one score per config (higher is better); each key is evaluated
    once (``cache``), ``evaluations`` counts RecBole evaluations and ``seconds`` their wall time.
    """

    def __init__(self, trainer, valid_data, metric: str = "NDCG@10",
                 eval_users: int | None = None, seed: int = 0):
        if not valid_data:
            raise ValueError("SubnetEstimator needs the valid dataloader (got none)")
        self.trainer = trainer
        self.model = _unwrap(trainer.model)
        if not hasattr(self.model, "active_subnet"):
            raise TypeError(
                f"{type(self.model).__name__} has no active_subnet(): only ForwardOFA "
                "sub-networks can be searched"
            )
        self.metric = metric.lower()
        self.seed = int(seed)
        self.n_users = n_users_of(valid_data)
        self.eval_users = None if eval_users is None else int(eval_users)
        # In a process group each rank scores whole configs on every (sub-sampled) valid user.
        self.data = (distributed.unsharded(valid_data) if self.eval_users is None
                     else subsample_users(valid_data, self.eval_users, self.seed))
        self.users = n_users_of(self.data)  # users the scores are computed on
        self.cache: Dict[str, float] = {}
        self.evaluations = 0
        self.seconds = 0.0
        self.predictor: AccuracyPredictor | None = None
        self.predictor_space = None
        self.predictor_report: PredictorReport | None = None
        self.on_evaluation = None  # called as on_evaluation(config, score) after each evaluation

    def _measure(self, config: SubnetConfig) -> float:
        """One RecBole evaluation of ``config`` in this process (no gathering across ranks)."""
        reduce = getattr(self.trainer, "reduce_results", None)
        if reduce is not None:
            self.trainer.reduce_results = False
        try:
            with self.model.active_subnet(config):
                result = self.trainer.evaluate(self.data, load_best_model=False,
                                               show_progress=False)
        finally:
            if reduce is not None:
                self.trainer.reduce_results = reduce
        if self.metric not in result:
            raise ValueError(
                f"config key `search_metric` = {self.metric!r} is not among the evaluation "
                f"results {sorted(result)}; use one of them"
            )
        return float(result[self.metric])

    def _store(self, config: SubnetConfig, score: float):
        self.cache[config.key] = score
        self.evaluations += 1
        if self.on_evaluation is not None:
            self.on_evaluation(config, score)

    def score(self, config: SubnetConfig) -> float:
        """``metric`` of one config on the (sub-sampled) valid split; cached by key."""
        key = config.key
        if key not in self.cache:
            start = time.perf_counter()
            score = self._measure(config)
            self.seconds += time.perf_counter() - start
            self._store(config, score)
        return self.cache[key]

    def evaluate(self, configs: Iterable[SubnetConfig]) -> np.ndarray:
        """Scores of ``configs`` (float64, in order); configs already evaluated cost nothing.

        In a process group of several ranks (every rank runs the same search, so asks for the
        same configs) each rank evaluates every ``world_size``-th new config and the scores are
        gathered: every rank ends with the same cache, so the search takes the same decisions
        as a serial one.
        """
        configs = list(configs)
        if distributed.is_distributed():
            new = list({c.key: c for c in configs if c.key not in self.cache}.values())
            if new:
                start = time.perf_counter()
                rank, world = distributed.get_rank(), distributed.get_world_size()
                mine = {c.key: self._measure(c) for c in new[rank::world]}
                scores = {}
                for part in distributed.all_gather_objects(mine):
                    scores.update(part)
                self.seconds += time.perf_counter() - start
                for config in new:
                    self._store(config, scores[config.key])
        return np.array([self.score(config) for config in configs], dtype=np.float64)

    # ------------------------------------------------------------------ predictor
    def fit_predictor(self, space, n_samples: int, min_rank_corr: float,
                      rng: np.random.Generator | None = None, **predictor_args):
        """Evaluate ``n_samples`` distinct random configs of ``space``, fit an
        :class:`AccuracyPredictor` on 80% of them and measure its rank correlation on the rest.

        When the held-out Spearman correlation is at least ``min_rank_corr`` the estimator gains
        ``predict(configs)`` (the search then ranks candidates by it); otherwise it has none.
        The correlation is logged either way. Returns the :class:`PredictorReport`.
        """
        rng = rng if rng is not None else np.random.default_rng(self.seed)
        configs = distinct_samples(space, n_samples, rng)
        if len(configs) < 5:
            raise ValueError(
                f"config key `search_predictor_samples` = {n_samples}: the space has only "
                f"{len(configs)} distinct configs to learn from; the predictor needs at least 5 "
                "(set `search_predictor: False`: an exhaustive search is cheaper)"
            )
        scores = self.evaluate(configs)
        predictor, report = train_predictor(space, configs, scores, min_rank_corr, rng,
                                            seed=self.seed, **predictor_args)
        self.predictor, self.predictor_space, self.predictor_report = predictor, space, report
        spearman, kendall, used = report.spearman, report.kendall, report.used
        if used:
            self.predict = self._predict
        else:
            self.__dict__.pop("predict", None)
        getLogger().info(
            set_color("accuracy predictor", "yellow")
            + f": held-out Spearman {spearman:.4f}, Kendall {kendall:.4f} on {report.held_out} "
            f"configs (trained on {report.train}); "
            + ("used for ranking" if used else
               f"not used (Spearman below search_predictor_min_rank_corr = {min_rank_corr})")
        )
        return report

    def _predict(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        """Predicted scores of ``configs`` (for ranking only; never cached as measured)."""
        features = self.predictor_space.encode(list(configs))
        return self.predictor.predict(np.asarray(features, dtype=np.float32))


class PredictedQuality:
    """The estimator the search sees when the predictor is used (OFA's way): every candidate is
    ranked by its predicted score, with no RecBole evaluation. The configs the search returns
    are then measured by the real estimator (:meth:`measure`), so reported scores never come
    from the predictor."""

    def __init__(self, estimator: SubnetEstimator):
        if not hasattr(estimator, "predict"):
            raise ValueError("PredictedQuality needs an estimator whose predictor is used "
                             "(fit_predictor() reported used=True)")
        self.estimator = estimator
        self.predictions = 0

    def evaluate(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        configs = list(configs)
        self.predictions += len(configs)
        return self.estimator.predict(configs)

    def measure(self, result):
        """``result`` (a SearchResult ranked on predictions) with every budget's valid score
        measured (its prediction kept as ``predicted_score``) and the archive reduced to the
        configs really evaluated, so the Pareto front is a measured one."""
        measured = []
        for entry in result.budgets:
            score = self.estimator.score(entry.config)
            measured.append(replace(entry, valid_score=score)
                            .with_extra(predicted_score=entry.valid_score))
        result.budgets = measured
        result.archive = {key: (macs, params, self.estimator.cache[key])
                          for key, (macs, params, _) in result.archive.items()
                          if key in self.estimator.cache}
        result.evaluations = self.estimator.evaluations
        return result


def train_predictor(space, configs, scores, min_rank_corr: float, rng: np.random.Generator,
                    seed: int = 0, **predictor_args):
    """(predictor, :class:`PredictorReport`): an :class:`AccuracyPredictor` fitted on a random
    80% of ``configs`` (measured ``scores``) and its Spearman and Kendall rank correlation on the
    other 20% (at least 3 configs); ``used`` when Spearman >= ``min_rank_corr``."""
    scores = np.asarray(scores, dtype=np.float64)
    features = np.asarray(space.encode(list(configs)), dtype=np.float32)
    order = rng.permutation(len(scores))
    n_test = max(3, int(round(0.2 * len(scores))))
    if len(scores) - n_test < 2:
        raise ValueError(f"train_predictor: {len(scores)} configs leave fewer than 2 to train on")
    test, train = order[:n_test], order[n_test:]
    predictor = AccuracyPredictor(features.shape[1], seed=seed, **predictor_args)
    predictor.fit(features[train], scores[train])
    spearman, kendall = predictor.rank_correlation(features[test], scores[test])
    report = PredictorReport(
        samples=len(scores), train=len(train), held_out=len(test), spearman=spearman,
        kendall=kendall, min_rank_corr=float(min_rank_corr),
        used=bool(np.isfinite(spearman) and spearman >= min_rank_corr),
    )
    return predictor, report


def distinct_samples(space, n: int, rng: np.random.Generator,
                     tries_per_sample: int = 20) -> List[SubnetConfig]:
    """Up to ``n`` configs of ``space`` with distinct keys: its smallest and largest, then random
    samples (at most ``tries_per_sample * n`` draws, so a small space ends the loop)."""
    out: Dict[str, SubnetConfig] = {}
    for config in (space.smallest(), space.largest()):
        out.setdefault(config.key, config)
    for _ in range(tries_per_sample * n):
        if len(out) >= n:
            break
        config = space.sample(rng)
        out.setdefault(config.key, config)
    return list(out.values())[:n]


@dataclass(frozen=True)
class PredictorReport:
    """How well the predictor ranks configs it was not trained on, and whether it is used."""

    samples: int  # evaluated configs
    train: int
    held_out: int
    spearman: float
    kendall: float
    min_rank_corr: float
    used: bool

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in ("spearman", "kendall"):  # JSON has no NaN
            out[key] = None if not math.isfinite(out[key]) else out[key]
        return out


class AccuracyPredictor:
    """OFA-style accuracy predictor: an MLP (``layers`` x Linear+ReLU of width ``hidden``, then a
    bias-free output) on config features, added to the mean training score.

    Targets are standardised before fitting (valid NDCG differences between sub-networks are
    small); Adam with OFA's learning rate and weight decay, full batch, ``steps`` steps. Fitting
    and initialisation use their own seeded generator, so the global torch RNG is untouched.
    """

    def __init__(self, n_features: int, hidden: int = 64, layers: int = 3, steps: int = 300,
                 lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0):
        self.n_features = int(n_features)
        self.steps, self.lr, self.weight_decay = int(steps), float(lr), float(weight_decay)
        self.seed = int(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            blocks: List[nn.Module] = []
            width = self.n_features
            for _ in range(layers):
                blocks += [nn.Linear(width, hidden), nn.ReLU()]
                width = hidden
            blocks.append(nn.Linear(width, 1, bias=False))
            self.net = nn.Sequential(*blocks)
        self.mean, self.std = 0.0, 1.0

    def _inputs(self, features) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
        if x.dim() != 2 or x.size(1) != self.n_features:
            raise ValueError(
                f"AccuracyPredictor expects features of shape [N, {self.n_features}], got "
                f"{tuple(x.shape)}"
            )
        return x

    def fit(self, features, scores) -> AccuracyPredictor:
        """Fit on ``features`` [N, F] and measured ``scores`` [N]; returns self."""
        x = self._inputs(features)
        y = np.asarray(scores, dtype=np.float64)
        if len(y) != len(x) or len(y) < 2:
            raise ValueError(f"AccuracyPredictor.fit: {len(x)} feature rows, {len(y)} scores "
                             "(need the same number, at least 2)")
        self.mean = float(y.mean())
        self.std = float(y.std()) or 1.0
        target = torch.as_tensor((y - self.mean) / self.std, dtype=torch.float32)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr,
                                     weight_decay=self.weight_decay)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a net this small trains faster without thread hand-offs
        self.net.train()
        try:
            for _ in range(self.steps):
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(self.net(x).squeeze(-1), target)
                loss.backward()
                optimizer.step()
        finally:
            self.net.eval()
            torch.set_num_threads(threads)
        return self

    @torch.no_grad()
    def predict(self, features) -> np.ndarray:
        """Predicted scores [N] (float64)."""
        out = self.net(self._inputs(features)).squeeze(-1).double().numpy()
        return self.mean + self.std * out

    def rank_correlation(self, features, scores):
        """(Spearman, Kendall) between predicted and measured ``scores`` (scipy.stats); NaN when
        either side is constant."""
        predicted = self.predict(features)
        scores = np.asarray(scores, dtype=np.float64)
        if np.ptp(predicted) == 0 or np.ptp(scores) == 0:
            return float("nan"), float("nan")
        return (float(stats.spearmanr(predicted, scores).statistic),
                float(stats.kendalltau(predicted, scores).statistic))


__all__ = ["AccuracyPredictor", "PredictedQuality", "PredictorReport", "SubnetEstimator",
           "distinct_samples",
           "n_users_of", "rows_loader", "subsample_users", "train_predictor"]
