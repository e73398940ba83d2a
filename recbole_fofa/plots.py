"""PNG figures of the benchmark and the analyses (matplotlib, headless).

Every figure is built with :func:`figure`, drawn with :func:`tradeoff`, :func:`lines`,
:func:`bars` or plain matplotlib calls on the returned axes, and written with :func:`save`.
matplotlib is imported on first use, with the non-interactive Agg backend, so that importing the
plugin stays light and nothing ever opens a window.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

__all__ = ["figure", "save", "tradeoff", "lines", "bars", "pareto_points"]

# marker per kind of point in a quality/cost plot
_MARKERS = {"model": "o", "ablation": "s", "baseline": "^", "searched": "D", "controller": "*"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def figure(panels: int = 1, width: float = 5.5, height: float = 4.0, title: str | None = None):
    """A figure with ``panels`` axes side by side; returns ``(fig, [axes...])``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, panels, figsize=(width * panels, height), squeeze=False)
    if title:
        fig.suptitle(title)
    return fig, list(axes[0])


def save(fig, path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (folders created) and close it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    _pyplot().close(fig)
    return path


def pareto_points(points: Iterable[Tuple[float, float]]) -> List[Tuple[float, float]]:
    """The (cost, quality) points no other point beats (no more cost and at least the quality,
    one strictly), in ascending cost."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def tradeoff(ax, points: Sequence[Mapping], xlabel: str = "MACs per user",
             ylabel: str = "NDCG@10", pareto: bool = True, log_x: bool = False):
    """Quality against cost: one marker per point with error bars, labelled, and the Pareto
    front over all points as a dashed line.

    ``points``: dicts with ``label``, ``x``, ``y`` and optionally ``xerr``, ``yerr`` and ``kind``
    (``model``, ``ablation``, ``baseline``, ``searched``, ``controller``: the marker).
    """
    kinds = {}
    for point in points:
        kind = point.get("kind", "model")
        handle = ax.errorbar(
            point["x"], point["y"], xerr=point.get("xerr") or None,
            yerr=point.get("yerr") or None, fmt=_MARKERS.get(kind, "o"), capsize=3,
            markersize=7 if kind != "controller" else 10, label=kind if kind not in kinds else None,
            color=f"C{list(_MARKERS).index(kind) if kind in _MARKERS else 0}",
        )
        kinds.setdefault(kind, handle)
        ax.annotate(point["label"], (point["x"], point["y"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    if pareto and points:
        front = pareto_points((p["x"], p["y"]) for p in points)
        ax.plot([x for x, _ in front], [y for _, y in front], "k--", linewidth=1, alpha=0.6,
                label="Pareto front")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return ax


def lines(ax, x: Sequence[float],
          series: Dict[str, Tuple[Sequence[float], Sequence[float] | None]],
          xlabel: str, ylabel: str, log_x: bool = False):
    """One line per series ``{name: (values, errors or None)}`` over ``x``, error bars where
    given."""
    for name, (values, errors) in series.items():
        ax.errorbar(list(x), list(values), yerr=None if errors is None else list(errors),
                    marker="o", capsize=3, label=name)
    if log_x:
        ax.set_xscale("symlog", linthresh=min([abs(v) for v in x if v] or [1.0]))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7)
    return ax


def bars(ax, labels: Sequence[str], values: Sequence[float], xlabel: str, ylabel: str,
         errors: Sequence[float] | None = None):
    """A bar per label."""
    positions = range(len(labels))
    ax.bar(positions, list(values), yerr=None if errors is None else list(errors), capsize=3)
    ax.set_xticks(list(positions))
    ax.set_xticklabels([str(label) for label in labels], rotation=0 if len(labels) < 9 else 45,
                       fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    return ax
