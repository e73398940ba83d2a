"""The cloud-device protocol's report: one row per method (means over the sessions), the
findings and the figure, from the session records :mod:`recbole_fofa.analysis.protocol` collects.

It defines what the report compares, and the simulation reads both from here: the methods
(:data:`METHODS`, Forward-OFA first, the baseline second) and the cutoff of the quality metrics
(:data:`TOPK`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from recbole_fofa import plots
from recbole_fofa.analysis import AnalysisResult

__all__ = ["METHODS", "TOPK", "COLUMNS", "human_bytes", "report"]

METHODS = ("Forward-OFA", "fine-tuning")
TOPK = 10
COLUMNS = ["method", "sessions", "kept_blocks", "bytes_down", "model_bytes_down", "bytes_up",
           "device_macs", "device_train_macs", "cloud_macs", "device_peak_bytes",
           "adaptation_ms", "forward_ms", "adaptation_ratio", "device_infer_ms", "NDCG@10",
           "Hit@10", "backprop"]


def _paired(a, b):
    """Mean and standard error of the paired difference a - b."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    return float(diff.mean()), se


def _rows(records, finetune_steps):
    rows = []
    mean_ms = {m: 1e3 * float(np.mean([r.adaptation_seconds for r in records[m]]))
               for m in METHODS}
    for method in METHODS:
        rs = records[method]

        def mean(attr, rs=rs):
            return float(np.mean([getattr(r, attr) for r in rs]))

        def whole(attr):  # bytes and MACs: a mean to the nearest unit
            return int(round(mean(attr)))

        ratio = mean_ms[method] / mean_ms["fine-tuning"] if mean_ms["fine-tuning"] > 0 else None
        rows.append({
            "method": method if method == "Forward-OFA" else f"fine-tuning ({finetune_steps} "
                                                              "steps)",
            "sessions": len(rs),
            "kept_blocks": mean("kept_blocks"),
            "bytes_down": whole("bytes_down"),
            "model_bytes_down": whole("model_bytes_down"),
            "bytes_up": whole("bytes_up"),
            "device_macs": whole("device_macs"),
            "device_train_macs": whole("device_train_macs"),
            "cloud_macs": whole("cloud_macs"),
            "device_peak_bytes": whole("peak_bytes"),
            "adaptation_ms": mean_ms[method],
            "forward_ms": 1e3 * mean("forward_seconds"),
            "adaptation_ratio": ratio,
            "device_infer_ms": 1e3 * mean("infer_seconds"),
            "NDCG@10": mean("ndcg"),
            "Hit@10": mean("hit"),
            "backprop": method != "Forward-OFA" and finetune_steps > 0,
        })
    return rows


def _findings(rows, records, finetune_steps):
    fofa, ft = rows
    out = []
    diff, se = _paired([r.ndcg for r in records["Forward-OFA"]],
                       [r.ndcg for r in records["fine-tuning"]])
    ratio = fofa["adaptation_ratio"]
    not_worse = fofa["NDCG@10"] >= ft["NDCG@10"]
    if ratio is None:
        out.append(f"Fine-tuning with {finetune_steps} steps takes no adaptation time, so the "
                   "adaptation-time claim (Forward-OFA <= 1% of fine-tuning) cannot be tested; "
                   f"NDCG@10 {fofa['NDCG@10']:.4f} (Forward-OFA) vs {ft['NDCG@10']:.4f}.")
    else:
        fast = ratio <= 0.01
        holds = "holds" if fast and not_worse else "does not hold"
        out.append(
            f"The claim (adaptation time <= 1% of fine-tuning at equal or better NDCG@10) {holds}:"
            f" Forward-OFA adapts in {fofa['adaptation_ms']:.3f} ms (one cloud forward pass: "
            f"controller and mapper {fofa['forward_ms']:.3f} ms, the rest slicing the "
            "sub-model's weights and merging the generated parameters), "
            f"fine-tuning in {ft['adaptation_ms']:.3f} ms ({finetune_steps} Adam steps on the "
            f"device), a ratio of {100 * ratio:.2f}% ({'<=' if fast else '>'} 1%; controller "
            f"and mapper alone: {100 * fofa['forward_ms'] / ft['adaptation_ms']:.2f}%); NDCG@10 "
            f"{fofa['NDCG@10']:.4f} vs {ft['NDCG@10']:.4f} "
            f"({'equal or better' if not_worse else 'worse'}; paired difference {diff:+.4f} "
            f"+- {se:.4f} s.e. over {fofa['sessions']} sessions)."
        )
    out.append(
        f"Per session Forward-OFA downloads {fofa['bytes_down']:,.0f} bytes "
        f"({fofa['model_bytes_down']:,.0f} of them the sub-model of {fofa['kept_blocks']:.2f} of "
        f"{ft['kept_blocks']:.0f} blocks on average) and uploads "
        f"{fofa['bytes_up']:,.0f} (real-time window embeddings, no ids); fine-tuning downloads "
        f"{ft['bytes_down']:,.0f} ({ft['model_bytes_down']:,.0f} the full network) and uploads "
        f"{ft['bytes_up']:,.0f}."
    )
    out.append(
        f"Device compute per session: Forward-OFA {fofa['device_macs']:,.0f} MACs (inference "
        f"only); fine-tuning {ft['device_macs']:,.0f} MACs of inference plus about "
        f"{ft['device_train_macs']:,.0f} MACs of training (3x forward per step). Device peak "
        f"memory {fofa['device_peak_bytes']:,.0f} vs {ft['device_peak_bytes']:,.0f} bytes."
    )
    return out


def _label_bars(ax, bars, values, fmt, floor=0.0):
    """Write each value above its bar; a value of 0 (no bar on a log axis) sits at ``floor``."""
    for bar, value in zip(bars, values):
        ax.annotate(fmt(value), (bar.get_x() + bar.get_width() / 2, value if value > 0 else floor),
                    ha="center", va="bottom", fontsize=7)


def _log_floor(values):
    positive = [v for v in values if v > 0]
    return min(positive) / 2 if positive else 1.0


def human_bytes(value):
    """``123652`` -> ``"124 KB"``, ``5094650`` -> ``"5.1 MB"`` (decimal units)."""
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if value >= scale:
            return f"{value / scale:.2g} {unit}" if value < 10 * scale else (
                f"{value / scale:.0f} {unit}")
    return f"{value:.0f} B"


def _headline(rows):
    """The figure's title: the adaptation-time ratio against the 1% target, and the device
    memory contrast."""
    fofa, ft = rows
    ratio = fofa["adaptation_ratio"]
    parts = ["Cloud-device protocol: Forward-OFA vs on-device fine-tuning"]
    if ratio is not None:
        parts.append(f"adaptation {100 * ratio:.2f}% of fine-tuning's time (target <= 1%: "
                     f"{'met' if ratio <= 0.01 else 'missed'})")
    memory = (fofa["device_peak_bytes"], ft["device_peak_bytes"])
    if min(memory) > 0:
        parts.append(f"device memory {human_bytes(memory[0])} vs {human_bytes(memory[1])} "
                     f"({_factor(*memory)})")
    return "\n".join([parts[0], "; ".join(parts[1:])]) if len(parts) > 1 else parts[0]


def _factor(fofa, ft):
    return f"{ft / fofa:.0f}x less" if ft >= fofa else f"{fofa / ft:.0f}x more"


def _plot(rows, path):
    labels = [row["method"] for row in rows]
    positions = np.arange(len(rows))
    fig, axes = plots.figure(4, width=4.2, height=4.0, title=_headline(rows))
    times = [row["adaptation_ms"] for row in rows]
    bars = axes[0].bar(positions, [t if t > 0 else np.nan for t in times], width=0.6)
    _label_bars(axes[0], bars, times, lambda v: f"{v:.3g} ms", _log_floor(times))
    axes[0].set_yscale("log")
    axes[0].set_ylim(_log_floor(times) / 2, 30 * max(max(times), 1e-9))
    axes[0].set_ylabel("adaptation ms per session (log)")
    ratio = rows[0]["adaptation_ratio"]
    if ratio is not None and times[1] > 0:
        axes[0].axhline(0.01 * times[1], color="C3", linestyle="--", linewidth=1,
                        label=f"1% of fine-tuning = {0.01 * times[1]:.3g} ms (target)")
        axes[0].text(0.03, 0.97, f"Forward-OFA: {100 * ratio:.2f}% of fine-tuning",
                     transform=axes[0].transAxes, va="top", fontsize=8,
                     color="C3" if ratio > 0.01 else "C2")
        axes[0].legend(fontsize=7, loc="upper right", bbox_to_anchor=(1.0, 0.88))
    for offset, metric in ((-0.2, "NDCG@10"), (0.2, "Hit@10")):
        values = [row[metric] for row in rows]
        bars = axes[1].bar(positions + offset, values, width=0.4, label=metric)
        _label_bars(axes[1], bars, values, lambda v: f"{v:.3f}")
    axes[1].set_ylim(0, 1.1)
    axes[1].set_ylabel(f"quality among the cached candidates (top {TOPK})")
    sizes = [row[f"bytes_{d}"] for row in rows for d in ("down", "up")]
    floor = _log_floor(sizes)
    for offset, direction in ((-0.2, "down"), (0.2, "up")):
        values = [row[f"bytes_{direction}"] for row in rows]
        bars = axes[2].bar(positions + offset, [v if v > 0 else np.nan for v in values],
                           width=0.4, label=f"bytes {direction}")
        _label_bars(axes[2], bars, values, human_bytes, floor)
    axes[2].set_yscale("log")
    axes[2].set_ylim(floor / 2, 10 * max(max(sizes), 1))
    axes[2].set_ylabel("bytes per session (log)")
    memory = [row["device_peak_bytes"] for row in rows]
    bars = axes[3].bar(positions, [m if m > 0 else np.nan for m in memory], width=0.6,
                       color="C4")
    _label_bars(axes[3], bars, memory, human_bytes, _log_floor(memory))
    axes[3].set_yscale("log")
    axes[3].set_ylim(_log_floor(memory) / 2, 30 * max(max(memory), 1))
    axes[3].set_ylabel("device peak memory per session (log)")
    if min(memory) > 0:
        axes[3].text(0.03, 0.97, f"Forward-OFA: {_factor(*memory)}",
                     transform=axes[3].transAxes, va="top", fontsize=8)
    for ax in axes:
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_xticks(positions)
        ax.set_xticklabels(labels, fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    for ax in axes[1:3]:
        ax.legend(fontsize=7)
    return plots.save(fig, path)


def report(records, finetune_steps, settings, output_dir) -> AnalysisResult:
    """The ``protocol`` result from ``{method: [SessionRecord]}`` (keys :data:`METHODS`) and the
    run's ``settings``: writes ``protocol.md``, ``protocol.csv`` and ``protocol.png`` under
    ``output_dir``."""
    rows = _rows(records, finetune_steps)
    result = AnalysisResult(
        name="protocol",
        rows=rows,
        columns=COLUMNS,
        findings=_findings(rows, records, finetune_steps)
        + ([f"Device runtime: {settings['device runtime']}."]
           if "device runtime" in settings else []),
        settings=settings,
    )
    output_dir = Path(output_dir)
    png = _plot(rows, output_dir / "protocol.png")
    return result.save(output_dir, png)
