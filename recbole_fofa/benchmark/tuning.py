"""The benchmark's blind tuning: every model gets the same small grid, trained on tuning seeds that
are never test seeds and chosen by its mean valid score; test is never read.

A grid is ``{key: [values]}``; ``Model.key`` (``ForwardOFA.backbone_lr_scale``) applies to that
model's rows only, so one grid carries ForwardOFA's recipe knobs beside the common learning rate.
Each model's points are the Cartesian product of the keys that apply to it.
"""

from __future__ import annotations

import itertools
import math
import statistics
from typing import Any, Dict, List, Sequence

__all__ = ["check_grid", "choose", "pinned_point", "points_for", "point_slug", "tuning_rows"]


def check_grid(grid) -> Dict[str, List[Any]]:
    """``grid`` (``{key: [values]}``) checked: each key a config name (``Model.key`` allowed),
    each value list non-empty and free of repeats; a ValueError names what is wrong."""
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"--tune: {grid!r} is not a grid; write a mapping of config keys to "
                         "lists of values, e.g. --tune=\"{learning_rate: [0.001, 0.002]}\"")
    checked = {}
    for key, values in grid.items():
        name = str(key).rpartition(".")[2]
        if not name.isidentifier():
            raise ValueError(f"--tune: {key!r} is not a config key (or Model.key)")
        if not isinstance(values, list) or not values:
            raise ValueError(f"--tune: `{key}` needs a non-empty list of values, got {values!r}")
        if len({repr(v) for v in values}) != len(values):
            raise ValueError(f"--tune: `{key}` lists a value twice: {values}")
        checked[str(key)] = list(values)
    return checked


def points_for(grid, model: str) -> List[Dict[str, Any]]:
    """The grid points of ``model``: dicts of the keys that apply to it (plain keys, and
    ``model.key``), in grid order; ``[{}]`` when none applies."""
    keys = [(k, k.rpartition(".")[2]) for k in grid
            if "." not in k or k.rpartition(".")[0] == model]
    return [dict(zip([name for _, name in keys], values))
            for values in itertools.product(*(grid[k] for k, _ in keys))]


def pinned_point(grid, model: str, overrides: Dict[str, Any]) -> Dict[str, Any] | None:
    """The point a model's own settings fix (``overrides`` set every grid key that applies to
    it: ``SASRec-6@learning_rate=0.002``), which it keeps untuned; None when it is tuned."""
    keys = list(points_for(grid, model)[0])
    if keys and all(k in overrides for k in keys):
        return {k: overrides[k] for k in keys}
    return None


def point_slug(point: Dict[str, Any]) -> str:
    """A file-name-safe name of a grid point: ``learning_rate=0.001,backbone_lr_scale=0.1``."""
    text = ",".join(f"{k}={v}" for k, v in point.items()) or "defaults"
    return "".join(c if c.isalnum() or c in "=.,-_" else "_" for c in text)


def _score(record, metric):
    valid = record.get("valid") or {}
    return valid.get(metric) if record.get("status") == "ok" else None


def choose(records: Sequence[Dict[str, Any]], points, metric: str, bigger=True):
    """``(chosen point, rows)``: the point with the best mean valid ``metric`` over the tuning
    seeds (``records``: the tuning runs of one model, each with its ``point``); ties go to the
    earlier point. A point with a failed run is not chosen; ValueError if every point failed."""
    rows = []
    for point in points:
        runs = [r for r in records if r.get("point") == point]
        scores = [_score(r, metric) for r in runs]
        ok = bool(runs) and all(s is not None for s in scores)
        rows.append({"point": point, "seeds": len(runs), "ok": ok,
                     "mean": statistics.fmean(scores) if ok else math.nan,
                     "std": statistics.stdev(scores) if ok and len(scores) > 1 else math.nan})
    candidates = [r for r in rows if r["ok"]]
    if not candidates:
        raise ValueError(f"tuning: every grid point failed for this model ({len(rows)} points)")
    sign = 1 if bigger else -1
    best = max(candidates, key=lambda r: (sign * r["mean"], -rows.index(r)))
    for row in rows:
        row["chosen"] = row is best
    return best["point"], rows


def tuning_rows(tuning: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Flat rows (label, point, seeds, valid mean, std, chosen) of every model's tuning; a model
    that took another's choice (``from``) has one row saying whose, one with its own fixed
    point (``pinned``) one saying so."""
    out = []
    for label, entry in tuning.items():
        if entry.get("from") or entry.get("pinned"):
            out.append({"model": label, "point": point_slug(entry["point"]), "seeds": 0,
                        f"valid {entry['metric']}": math.nan, "std": math.nan,
                        "chosen": f"from {entry['from']}" if entry.get("from") else "pinned"})
        for row in entry["rows"]:
            out.append({"model": label, "point": point_slug(row["point"]),
                        "seeds": row["seeds"], f"valid {entry['metric']}": row["mean"],
                        "std": row["std"], "chosen": "yes" if row["chosen"] else ""})
    return out
