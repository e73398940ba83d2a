"""PNG figures of the benchmark and the analyses (matplotlib, headless).

Every figure is built with :func:`figure`, drawn with :func:`tradeoff`, :func:`lines`,
:func:`bars` or plain matplotlib calls on the returned axes, and written with :func:`save`, which
places the point labels of :func:`tradeoff` (:func:`place_labels`) once the layout is final, so
that no two labels overlap. matplotlib is imported on first use, with the non-interactive Agg
backend, so that importing the plugin stays light and nothing ever opens a window.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

__all__ = ["figure", "save", "tradeoff", "lines", "bars", "pareto_points", "place_labels",
           "label_boxes", "compact_number", "LABEL_GID"]

# marker per kind of point in a quality/cost plot
_MARKERS = {"model": "o", "ablation": "s", "baseline": "^", "searched": "D", "controller": "*"}
#: gid of the point labels :func:`place_labels` moves
LABEL_GID = "point-label"
# Offsets (points) a label tries around its point, nearest first: 8 directions per radius. A
# label further than _LEADER points from its point keeps a thin line to it.
_DIRECTIONS = ((1, 1), (1, 0), (1, -1), (-1, 1), (-1, 0), (-1, -1), (0, 1), (0, -1))
_RADII = (5, 12, 20, 30, 42, 56, 72)
_LEADER = 10
_MARKER_PX = 6  # half-width of the box a marker keeps free of other points' labels


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


def save(fig, path, close: bool = True) -> Path:
    """Write ``fig`` as a PNG at ``path`` (folders created), after the final layout and
    :func:`place_labels` on every axes, and close it (unless ``close`` is False); returns the
    path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.draw_without_rendering()  # the legends' final places
    for ax in fig.axes:
        place_labels(ax)
    fig.savefig(path, format="png", dpi=120)
    if close:
        _pyplot().close(fig)
    return path


def _overlap(a, b) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def _text_box(label, renderer):
    """The display box of an annotation's text alone (its own box also covers its line)."""
    from matplotlib.text import Text

    label.update_positions(renderer)  # where the text goes for the current offset and dpi
    return Text.get_window_extent(label, renderer)


def label_boxes(ax, renderer=None):
    """Display-space boxes of the point labels' texts of ``ax`` (in :func:`tradeoff` order)."""
    renderer = renderer or ax.figure.canvas.get_renderer()
    return [_text_box(t, renderer) for t in ax.texts if t.get_gid() == LABEL_GID]


def place_labels(ax):
    """Move each point label of ``ax`` to the nearest offset around its point where it overlaps
    no label placed before it, no other point's marker and not the legend, and stays inside the
    axes (the least overlap when no offset is free). Labels far from their point keep a leader
    line. Returns the labels' boxes."""
    from matplotlib.transforms import Bbox

    labels = [t for t in ax.texts if t.get_gid() == LABEL_GID]
    if not labels:
        return []
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    anchors = [ax.transData.transform(label.xy) for label in labels]
    markers = [Bbox.from_bounds(x - _MARKER_PX, y - _MARKER_PX, 2 * _MARKER_PX, 2 * _MARKER_PX)
               for x, y in anchors]
    legend = ax.get_legend()
    fixed = [legend.get_window_extent(renderer)] if legend is not None else []
    placed = []
    for index, label in enumerate(labels):
        obstacles = placed + fixed + markers[:index] + markers[index + 1:]
        best = None
        for radius in _RADII:
            for dx, dy in _DIRECTIONS:
                _offset(label, radius, dx, dy)
                box = _text_box(label, renderer)
                cost = (sum(_overlap(box, other) for other in obstacles)
                        + 4 * (box.width * box.height - _overlap(box, frame)))
                if best is None or cost < best[0]:
                    best = (cost, radius, dx, dy)
                if cost == 0:
                    break
            if best[0] == 0:
                break
        _, radius, dx, dy = best
        _offset(label, radius, dx, dy)
        if label.arrow_patch is not None:
            label.arrow_patch.set_visible(radius > _LEADER)
        placed.append(_text_box(label, renderer))
    return placed


def _offset(label, radius, dx, dy):
    scale = radius / math.hypot(dx, dy)
    label.xyann = (dx * scale, dy * scale)
    label.set_horizontalalignment({1: "left", 0: "center", -1: "right"}[dx])
    label.set_verticalalignment({1: "bottom", 0: "center", -1: "top"}[dy])


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
    front over all points as a dashed line. Points of one kind at the same place share one label
    ("search@0.5, 0.75"); :func:`save` moves the labels apart.

    ``points``: dicts with ``label``, ``x``, ``y`` and optionally ``xerr``, ``yerr`` and ``kind``
    (``model``, ``ablation``, ``baseline``, ``searched``, ``controller``: the marker).
    """
    kinds, labels = {}, {}
    for point in points:
        kind = point.get("kind", "model")
        handle = ax.errorbar(
            point["x"], point["y"], xerr=point.get("xerr") or None,
            yerr=point.get("yerr") or None, fmt=_MARKERS.get(kind, "o"), capsize=3,
            markersize=7 if kind != "controller" else 10, label=kind if kind not in kinds else None,
            color=f"C{list(_MARKERS).index(kind) if kind in _MARKERS else 0}",
        )
        kinds.setdefault(kind, handle)
        labels.setdefault((kind, point["x"], point["y"]), []).append(point["label"])
    for (_, x, y), names in labels.items():
        ax.annotate(_joined(names), (x, y), textcoords="offset points", xytext=(4, 4),
                    fontsize=7, gid=LABEL_GID, arrowprops={
                        "arrowstyle": "-", "color": "0.45", "linewidth": 0.6, "shrinkA": 1,
                        "shrinkB": 4})
    if pareto and points:
        front = pareto_points((p["x"], p["y"]) for p in points)
        ax.plot([x for x, _ in front], [y for _, y in front], "k--", linewidth=1, alpha=0.6,
                label="Pareto front")
    if log_x:
        _compact_log_axis(ax.xaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return ax


def _compact_log_axis(axis):
    """A log axis labelled at 1, 2 and 5 per decade in short numbers (200K, 1M): matplotlib's
    default labels of 2-9 x 10^k run into each other."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis.axes.set_xscale("log") if axis.axis_name == "x" else axis.axes.set_yscale("log")
    compact = FuncFormatter(lambda value, _: compact_number(value))
    axis.set_major_locator(LogLocator(base=10))
    axis.set_minor_locator(LogLocator(base=10, subs=(2, 5)))
    axis.set_major_formatter(compact)
    axis.set_minor_formatter(compact)


def compact_number(value: float) -> str:
    """``200000`` -> ``"200K"``, ``1e6`` -> ``"1M"``, ``2.5e9`` -> ``"2.5G"``."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:g}{unit}"
    return f"{value:g}"


def _joined(names):
    """``["search@0.5", "search@0.75"]`` -> ``"search@0.5, 0.75"`` (a shared prefix once)."""
    prefix = names[0].split("@")[0] + "@"
    if len(names) > 1 and all(name.startswith(prefix) for name in names):
        return prefix + ", ".join(name[len(prefix):] for name in names)
    return ", ".join(names)


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
