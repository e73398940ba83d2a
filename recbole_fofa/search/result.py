"""What a subnet search returns: one :class:`BudgetResult` per budget and the whole archive.

Both round-trip through JSON exactly (``SearchResult.from_json(p) == result`` after
``result.to_json(p)``). In the JSON each budget is one flat object: its fields, the config, and
the entries of ``extra`` (the RecBole hook's ``test_result`` and controller numbers) beside them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Tuple, Union

from recbole_fofa.subnet import SubnetConfig
from recbole_fofa.table import format_table

__all__ = ["BudgetResult", "SearchResult", "pareto_front"]

ArchiveEntry = Tuple[int, int, float]  # (macs, params, score)


Point = Tuple[str, int, int, float]  # (key, macs, params, score)


def pareto_front(points: Iterable[Point]) -> List[Point]:
    """The points ``(key, macs, params, score)`` that no other point dominates (no more MACs and
    at least the score, one of them strictly), in ascending MACs, so the score rises strictly
    along it. Of equal (MACs, score) points the one with the smallest key stands for them."""
    ordered = sorted(points, key=lambda p: (p[1], -p[3], p[0]))
    front, best = [], -math.inf
    for point in ordered:
        if point[3] > best:
            front.append(tuple(point))
            best = point[3]
    return front


def _float(value) -> float:
    return float(value)


@dataclass(frozen=True)
class BudgetResult:
    """The searched sub-network for one budget.

    ``curve``: the best valid score that fits the budget after the warm start / initial
    population and after each generation (``len(curve) == generations + 1``). ``evaluations``
    and ``seconds``: what serving this budget cost; work shared by all budgets (exhaustive
    enumeration, the pareto strategy's single evolution) is booked on the first budget served.
    ``extra``: JSON-native values added later (test metrics, the controller at this budget).
    """

    budget_macs: float
    budget_fraction: float
    config: SubnetConfig
    macs: int
    params: int
    valid_score: float
    feasible: bool
    curve: Tuple[float, ...]
    evaluations: int
    seconds: float
    generations: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("budget_macs", _float(self.budget_macs))
        set_("budget_fraction", _float(self.budget_fraction))
        set_("macs", int(self.macs))
        set_("params", int(self.params))
        set_("valid_score", _float(self.valid_score))
        set_("feasible", bool(self.feasible))
        set_("curve", tuple(_float(v) for v in self.curve))
        set_("evaluations", int(self.evaluations))
        set_("seconds", _float(self.seconds))
        set_("generations", int(self.generations))
        set_("extra", dict(self.extra))
        if not isinstance(self.config, SubnetConfig):
            raise TypeError(f"config must be a SubnetConfig, got {type(self.config).__name__}")
        clash = sorted(set(self.extra) & (_BUDGET_FIELDS | {"key"}))
        if clash:
            raise ValueError(f"BudgetResult.extra may not use the field names {clash}")

    @property
    def key(self) -> str:
        return self.config.key

    def with_extra(self, **items) -> BudgetResult:
        """A copy with ``items`` added to ``extra`` (this result is left as it is)."""
        return replace(self, extra={**self.extra, **items})

    def to_dict(self) -> Dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        data["config"] = self.config.to_dict()
        data["key"] = self.config.key
        data["curve"] = list(self.curve)
        data.update(self.extra)
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> BudgetResult:
        data = dict(data)
        config = SubnetConfig.from_dict(data.pop("config"))
        key = data.pop("key", config.key)
        if key != config.key:
            raise ValueError(f"budget entry: key {key!r} does not match its config {config.key}")
        known = {name: data.pop(name) for name in _BUDGET_FIELDS - {"config"} if name in data}
        return cls(config=config, extra=data, **known)


_BUDGET_FIELDS = frozenset(f.name for f in fields(BudgetResult) if f.name != "extra")


@dataclass
class SearchResult:
    """All budgets of one search (ascending budget order whatever order the strategy used) and
    the archive ``{key: (macs, params, valid score)}`` of every evaluated sub-network."""

    strategy: str
    space: str
    budgets: List[BudgetResult]
    archive: Dict[str, ArchiveEntry]
    evaluations: int = 0
    seconds: float = 0.0
    seed: int | None = None
    requested_strategy: str = ""
    reason: str = ""
    space_options: Dict[str, Any] = field(default_factory=dict)
    settings: Dict[str, Any] = field(default_factory=dict)
    full_macs: int = 0

    def __post_init__(self):
        self.budgets = sorted(self.budgets, key=lambda b: b.budget_macs)
        self.archive = {str(k): (int(v[0]), int(v[1]), _float(v[2]))
                        for k, v in self.archive.items()}
        self.evaluations = int(self.evaluations)
        self.seconds = _float(self.seconds)
        self.full_macs = int(self.full_macs)
        self.requested_strategy = self.requested_strategy or self.strategy

    # ------------------------------------------------------------------ queries
    def pareto_front(self) -> List[Tuple[str, int, int, float]]:
        """Non-dominated ``(key, macs, params, score)`` of the archive, ascending MACs."""
        return pareto_front((k, *v) for k, v in self.archive.items())

    def best_within(self, budget_macs: float) -> Tuple[str, int, int, float] | None:
        """The best archived ``(key, macs, params, score)`` with at most ``budget_macs``."""
        fitting = [p for p in self.pareto_front() if p[1] <= budget_macs]
        return fitting[-1] if fitting else None

    def configs(self) -> List[SubnetConfig]:
        """Each budget's config, ascending budget."""
        return [b.config for b in self.budgets]

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> Dict[str, Any]:
        return {
            "strategy": self.strategy,
            "requested_strategy": self.requested_strategy,
            "reason": self.reason,
            "space": self.space,
            "space_options": self.space_options,
            "settings": self.settings,
            "seed": self.seed,
            "full_macs": self.full_macs,
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "budgets": [b.to_dict() for b in self.budgets],
            "archive": {k: list(v) for k, v in self.archive.items()},
            "pareto_front": [{"key": k, "macs": m, "params": p, "valid_score": s}
                             for k, m, p, s in self.pareto_front()],
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> SearchResult:
        data = dict(data)
        data.pop("pareto_front", None)  # derived from the archive
        budgets = [BudgetResult.from_dict(b) for b in data.pop("budgets")]
        archive = {k: tuple(v) for k, v in data.pop("archive").items()}
        return cls(budgets=budgets, archive=archive, **data)

    def to_json(self, path: Union[str, Path]) -> Path:
        """Write the result to ``path`` (parents created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        return path

    @classmethod
    def from_json(cls, path: Union[str, Path]) -> SearchResult:
        return cls.from_dict(json.loads(Path(path).read_text()))

    # ------------------------------------------------------------------ printing
    def table(self) -> List[Dict[str, Any]]:
        """One row per budget: the fields, then ``extra`` flattened (``test_result.ndcg@10``)."""
        rows = []
        for b in self.budgets:
            row = {
                "budget_macs": b.budget_macs, "budget_fraction": b.budget_fraction,
                "config": b.config.key, "macs": b.macs, "params": b.params,
                "valid_score": b.valid_score, "feasible": b.feasible,
                "generations": b.generations, "evaluations": b.evaluations,
                "seconds": b.seconds,
            }
            row.update(_flatten(b.extra))
            rows.append(row)
        return rows

    def format_table(self, columns: Sequence[str] | None = None, digits: int = 4) -> str:
        """The :meth:`table` as aligned text (all columns, or ``columns``)."""
        rows = self.table()
        if columns is None:
            columns = list(dict.fromkeys(c for row in rows for c in row))
        return format_table(rows, columns, digits=digits)


def _flatten(extra: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for name, value in extra.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[f"{prefix}{name}"] = value
    return out
