"""Figures (issue 20, must-have 8): point labels never overlap, lines join only settings that form
a series, every reference line is labelled and each analysis shows its headline number. Read from
the matplotlib artists of figures drawn from generated results (no training)."""

import itertools

import numpy as np
import pytest

from recbole_fofa import plots
from recbole_fofa.analysis import blocks, protocol_report
from recbole_fofa.benchmark.report import BenchmarkReport

#: (label, kind, MACs, NDCG@10) of the README benchmark's crowded figure (docs/img)
POINTS = [("ForwardOFA", "model", 5.3e5, 0.0510), ("SASRec-2", "baseline", 3.8e5, 0.0564),
          ("LightSANs", "baseline", 4.9e5, 0.0578), ("SASRec-6", "baseline", 1.13e6, 0.0586),
          ("NextItNet", "baseline", 4.7e6, 0.0533), ("Caser", "baseline", 8.1e5, 0.0450),
          ("GRU4Rec", "baseline", 2.3e5, 0.0440), ("BERT4Rec", "baseline", 4.0e5, 0.0497),
          ("ForwardOFA-shared", "ablation", 4.9e5, 0.0487),
          ("ForwardOFA-nomapper", "ablation", 2.9e5, 0.0451),
          ("ForwardOFA-allblocks", "ablation", 1.13e6, 0.0526)]
#: budget: ((searched MACs, NDCG@10), (controller MACs, NDCG@10)); 0.5 and 0.75 find one config
SEARCH = {0.25: ((1.9e5, 0.0474), (1.9e5, 0.0463)), 0.5: ((3.15e5, 0.0475), (5.0e5, 0.0503)),
          0.75: ((3.15e5, 0.0475), (5.35e5, 0.0508))}


@pytest.fixture
def kept(monkeypatch):
    """The figures :func:`plots.save` writes, kept open: ``{file name: figure}``."""
    figures, save = {}, plots.save

    def keep(fig, path, close=True):
        figures[str(path).rsplit("/", 1)[-1]] = fig
        return save(fig, path, close=False)

    monkeypatch.setattr(plots, "save", keep)
    yield figures
    for fig in figures.values():
        plots._pyplot().close(fig)


def _records():
    records = []
    for seed, noise in zip((1, 2, 3), (-1, 0, 1)):
        for label, kind, macs, ndcg in POINTS:
            record = {"label": label, "model": label.split("-")[0], "kind": kind, "seed": seed,
                      "status": "ok", "test": {"ndcg@10": ndcg + 0.001 * noise,
                                               "macs": macs * (1 + 0.05 * noise)}}
            if label == "ForwardOFA":
                record["search"] = [
                    {"budget": budget, "config": "110011",
                     "test": {"ndcg@10": searched[1], "macs": searched[0]},
                     "controller_test": {"ndcg@10": ctrl[1], "macs": ctrl[0]}}
                    for budget, (searched, ctrl) in SEARCH.items()]
            records.append(record)
    return records


def _area(a, b):
    width, height = min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def test_benchmark_labels_do_not_overlap(tmp_path, kept):
    report = BenchmarkReport(_records(), {"dataset": "ml-100k", "seeds": [1, 2, 3]})
    report.plot(tmp_path / "benchmark.png")
    ax = kept["benchmark.png"].axes[0]
    labels = [t for t in ax.texts if t.get_gid() == plots.LABEL_GID]
    texts = [t.get_text() for t in labels]
    assert {"ForwardOFA", "ctrl@0.75", "ctrl@0.5", "BERT4Rec", "search@0.5, 0.75"} <= set(texts)
    assert len(texts) == len(POINTS) + 5  # one label for the two searches at one point
    boxes = plots.label_boxes(ax)
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert _area(a, b) == 0, (texts[i], texts[j])
    frame = ax.get_window_extent()
    legend = ax.get_legend().get_window_extent()
    points = [ax.transData.transform(t.xy) for t in labels]
    for text, box in zip(texts, boxes):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 <= frame.y1
        assert _area(box, legend) == 0, text
        assert not any(box.contains(x, y) for x, y in points), text  # no marker under a label
    # a label moved away from its point keeps a line to it
    for label in labels:
        far = np.hypot(*label.xyann) > 10
        assert label.arrow_patch.get_visible() == far
    # the log axis' tick labels (200K, 500K, 1M, ...) do not run into each other either
    ax.figure.canvas.draw()
    low, high = ax.get_xlim()
    ticks = [tick.label1 for tick in ax.xaxis.get_major_ticks() + ax.xaxis.get_minor_ticks()
             if low <= tick.get_loc() <= high and tick.label1.get_text()]
    assert {"200K", "500K", "1M", "2M", "5M"} <= {t.get_text() for t in ticks}
    for a, b in itertools.combinations([t.get_window_extent() for t in ticks], 2):
        assert _area(a, b) == 0


def _blocks_rows(n_blocks=3):
    rows = []
    for setting, kind, share, entropy in (("keep_threshold=0.3", "post hoc", 0.79, 0.94),
                                          ("keep_threshold=0.5", "trained", 0.60, 1.18),
                                          ("keep_threshold=0.7", "post hoc", 0.57, 1.55),
                                          ("sparsity_weight=0.5", "stage 2 retrained", 0.95, 0.3),
                                          ("rt_len=3", "stage 2 retrained", 0.45, 2.15)):
        row = {"setting": setting, "kind": kind, "top_share": share, "top_share_std": 0.0,
               "entropy": entropy, "top_structure": "110", "mean_blocks": 2.0}
        row.update({f"keep_b{b + 1}": 0.5 for b in range(n_blocks)})
        row.update({f"users_{k}_blocks": 1 / n_blocks for k in range(1, n_blocks + 1)})
        rows.append(row)
    return rows


def test_blocks_joins_only_series_and_labels_the_dominance_line(tmp_path, kept):
    rows = _blocks_rows()
    blocks._plot(rows[1], None, rows, 3, tmp_path / "blocks.png", "planted")
    fig = kept["blocks.png"]
    share_ax = fig.axes[2]
    entropy_ax = next(ax for ax in fig.axes[3:] if ax.bbox.bounds == share_ax.bbox.bounds)
    joined = [line for line in entropy_ax.get_lines() if len(line.get_xdata()) > 1
              and line.get_linestyle() not in ("None", "")]
    # the three thresholds form a series (one line through positions 0, 1, 2); the retrained
    # settings are markers alone
    assert [list(line.get_xdata()) for line in joined] == [[0, 1, 2]]
    singles = [line for line in entropy_ax.get_lines() if line not in joined]
    assert sorted(x for line in singles for x in line.get_xdata()) == [3, 4]
    reference = [line for line in share_ax.get_lines() if list(line.get_ydata()) == [0.8, 0.8]]
    assert len(reference) == 1 and "0.8" in reference[0].get_label()
    legend = [t.get_text() for t in share_ax.get_legend().get_texts()]
    assert reference[0].get_label() in legend and any("entropy" in t for t in legend)
    # the headline: the trained setting's top structure and its share
    assert "top structure 110 covers 60.0% of test users" in fig.get_suptitle()


def _protocol_rows(fofa_ms=2.9, ft_ms=182.0, fofa_peak=123_652, ft_peak=5_094_650):
    def row(method, ms, peak, down, up, ndcg, hit, macs, train):
        return {"method": method, "adaptation_ms": ms, "NDCG@10": ndcg, "Hit@10": hit,
                "bytes_down": down, "bytes_up": up, "device_peak_bytes": peak,
                "device_macs": macs, "device_train_macs": train,
                "adaptation_ratio": ms / ft_ms}
    return [row("Forward-OFA", fofa_ms, fofa_peak, 92_959, 1_280, 0.378, 0.69, 412_390, 0),
            row("fine-tuning (5 steps)", ft_ms, ft_peak, 224_195, 0, 0.360, 0.65, 1_139_840,
                324_598_334)]


def test_protocol_shows_the_target_the_ratio_and_the_strongest_contrast(tmp_path, kept):
    protocol_report._plot(_protocol_rows(), tmp_path / "protocol.png")
    fig = kept["protocol.png"]
    time_ax = fig.axes[0]
    target = [line for line in time_ax.get_lines() if "1%" in line.get_label()]
    assert len(target) == 1 and target[0].get_ydata()[0] == pytest.approx(1.82)
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    texts += " " + fig.get_suptitle()
    assert "1.59% of fine-tuning" in texts  # the ratio, against the 1% target
    memory_ax = next(ax for ax in fig.axes if "memory" in ax.get_ylabel())
    memory = " ".join(t.get_text() for t in memory_ax.texts)
    assert "124 KB" in memory and "5.1 MB" in memory and "41x" in memory
    # the strongest contrast (here device memory, 41x) is the headline in the title
    assert "device memory" in fig.get_suptitle() and "41x" in fig.get_suptitle()
    boxes = [t.get_window_extent() for ax in fig.axes for t in ax.texts]
    for a, b in itertools.combinations(boxes, 2):
        assert _area(a, b) == 0


def test_sparsity_and_conflict_figures_show_their_headline_numbers(kept, tmp_path):
    from recbole_fofa.analysis import conflict, sparsity

    rows = []
    for weight, ndcg, macs in ((0.0, 0.0531, 9.1e5), (1.0, 0.0448, 2.4e5)):
        row = {"sparsity_weight": weight}
        for key, value in (("ndcg@10", ndcg), ("hit@10", 2 * ndcg), ("macs", macs),
                           ("params", macs / 20)):
            row[key], row[f"{key}_std"] = value, 0.001
        rows.append(row)
    sparsity._plot(rows, str(tmp_path / "sparsity.png"), "planted")
    title = kept["sparsity.png"]._suptitle.get_text()
    assert "lambda 0 -> 1" in title and "NDCG@10 0.0531 -> 0.0448" in title
    per_seed = [{"different": np.array([-0.5, -0.1, 0.2, 0.4]), "similar": np.array([0.1, -0.3]),
                 "users": 4, "ndcg@10": 0.05}]
    conflict._plot({"parallel": per_seed, "shared": per_seed}, str(tmp_path / "conflict.png"),
                   "planted")
    axes = kept["conflict.png"].axes
    assert "conflicting 50% of different-interest vs 50% of similar pairs" in axes[0].get_title()
    assert "0: conflict below" in [t.get_text() for t in axes[0].get_legend().get_texts()]
