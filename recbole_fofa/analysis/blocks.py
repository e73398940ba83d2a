"""Block selection (the paper's figure 4): which blocks the structure controller keeps for the test
users, how many, and how varied the per-user structures are.

Per seed ForwardOFA is trained once. Its test users' kept masks give the keep frequency of each
block, the distribution of users by number of kept blocks, the number of distinct structures, the
entropy of the structure distribution and the most common structure's share. The same statistics
are measured for settings that may change how varied the structures are: the evaluation
``keep_threshold`` (post hoc, on the same model) and stage-2 keys (stage 2 retrained from the same
supernet, one training per value).

Which users get more blocks: :func:`user_behaviour` gives each test user's kept blocks, history
length, recent-item popularity and NDCG@10; :func:`behaviour_by_blocks` groups them by the number
of kept blocks and :func:`block_correlations` gives Spearman correlations with the block count.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Dict, List

import numpy as np
import torch
from recbole.data.dataloader import AbstractDataLoader
from recbole.data.dataset import Dataset
from recbole.data.interaction import Interaction
from scipy import stats

from recbole_fofa import experiment, plots
from recbole_fofa.analysis import AnalysisResult
from recbole_fofa.analysis._common import (
    MODEL,
    bits,
    check_values,
    error_bars,
    eval_cases,
    fmt,
    mean_std,
    progress_bar,
    require_metrics,
    require_stage2,
    resolve_config,
    resolve_seeds,
    run_config,
    structure_stats,
    user_structures,
)
from recbole_fofa.model import Stage
from recbole_fofa.model.controller import last_k

__all__ = ["run_blocks", "user_behaviour", "behaviour_by_blocks", "block_correlations",
           "DEFAULT_VARIATIONS", "STAGE2_KEYS", "DOMINANT_SHARE", "BEHAVIOUR_KEYS"]

NAME = "blocks"
#: a structure covering at least this share of users is reported as dominant
DOMINANT_SHARE = 0.8
#: stage-2 retrainings tried by default: strong sparsity, a warmer final Gumbel temperature, a
#: shorter behaviour window for the controller
DEFAULT_VARIATIONS = {"sparsity_weight": [0.5], "tau_end": [0.5], "rt_len": [3]}
#: keys a variation may change: they act in stage 2 only, so the supernet is shared (the
#: threshold is swept post hoc instead)
STAGE2_KEYS = tuple(sorted(experiment.STAGE2_KEYS - {"keep_threshold", "epochs"}))
#: what :func:`user_behaviour` measures per user besides the block count, in table order
BEHAVIOUR_KEYS = ("history", "popularity", "ndcg@10")
TOPK = 10


def run_blocks(dataset, config_file_list=None, config_dict=None, output_dir="fofa-output",
               seeds=None, progress=True, thresholds=(0.3, 0.5, 0.7),
               variations=None) -> AnalysisResult:
    """Per-user block selection of ForwardOFA on the test split, and what changes it.

    ``thresholds``: evaluation ``keep_threshold`` values applied post hoc to the trained model
    (the configured one is always included). ``variations``: ``{stage-2 key: [values]}`` (keys
    from :data:`STAGE2_KEYS`; None: :data:`DEFAULT_VARIATIONS`; ``{}``: none), each value one
    stage-2 retraining from the seed's supernet. Statistics are means over ``seeds``.

    Writes ``<output_dir>/blocks.png`` ((a) keep frequency per block, (b) users by number of kept
    blocks, (c) top-structure share and entropy per setting), ``blocks.md`` and ``blocks.csv``
    (one row per setting). For the trained setting, the test users grouped by number of kept
    blocks (:func:`behaviour_by_blocks`: share, history, popularity, NDCG@10) and the Spearman
    correlations (:func:`block_correlations`) are further tables (``result.tables['users']``,
    ``['correlation']``) in ``blocks.md``, ``blocks_users.csv`` and ``blocks_correlation.csv``.
    Returns the :class:`AnalysisResult`.
    """
    thresholds = check_values("thresholds", thresholds, key="keep_threshold")
    variations = _check_variations(DEFAULT_VARIATIONS if variations is None else variations)
    config = resolve_config(dataset, config_file_list, config_dict)
    require_metrics(config, ["NDCG"])
    require_stage2(config)
    seeds = resolve_seeds(config, seeds)
    trained_threshold = config["keep_threshold"]
    thresholds = sorted(set(thresholds) | {trained_threshold})
    n_blocks = config["n_blocks"]

    settings = [(f"keep_threshold={t:g}", "post hoc" if t != trained_threshold else "trained")
                for t in thresholds]
    settings += [(f"{key}={value}", "stage 2 retrained") for key, values in variations.items()
                 for value in values]
    measured: Dict[str, List[dict]] = {label: [] for label, _ in settings}
    behaviours: List[Dict[str, np.ndarray]] = []  # per seed, the trained setting's test users
    trainings = len(seeds) * (1 + sum(len(v) for v in variations.values()))
    with progress_bar(trainings, "block selection", progress) as bar:
        for seed in seeds:
            trained = experiment.train(MODEL, dataset, config_file_list,
                                       run_config(config_dict, seed))
            bar.update(1)
            model = trained.model
            try:
                for threshold in thresholds:
                    model.keep_threshold = threshold
                    measured[f"keep_threshold={threshold:g}"].append(_measure(trained))
            finally:
                model.keep_threshold = trained_threshold
            behaviours.append(user_behaviour(model, trained.test_data, trained.train_data))
            for key, values in variations.items():
                for value in values:
                    variant = experiment.train(
                        MODEL, dataset, config_file_list,
                        run_config(config_dict, seed, **{key: value}),
                        supernet=trained.supernet,
                        supernet_seconds=trained.epoch_seconds.get(Stage.SUPERNET.value),
                    )
                    measured[f"{key}={value}"].append(_measure(variant))
                    bar.update(1)

    rows = [_row(label, kind, measured[label], n_blocks) for label, kind in settings]
    columns = ["setting", "kind", "users", "distinct", "entropy", "entropy_std", "top_structure",
               "top_share", "top_share_std", "mean_blocks", "ndcg@10", "ndcg@10_std"]
    columns += [f"keep_b{b + 1}" for b in range(n_blocks)]
    columns += [f"users_{k}_blocks" for k in range(1, n_blocks + 1)]
    base = next(row for row in rows if row["kind"] == "trained")
    by_blocks, correlations = _behaviour_tables(behaviours)
    findings = _findings(base, rows, n_blocks) + _behaviour_findings(by_blocks, correlations)
    result = AnalysisResult(
        NAME, rows, columns, findings,
        settings={"dataset": dataset, "model": MODEL, "seeds": seeds, "n_blocks": n_blocks,
                  "trained keep_threshold": trained_threshold, "thresholds": thresholds,
                  "variations": variations, "split": "test",
                  "statistics": "per seed, then mean (std) over seeds; top_structure is the most "
                  "common structure over all seeds' users (bit l = block l kept)",
                  "users by kept blocks": f"the {base['setting']} model's test users; popularity "
                  "= mean train-split count of the last rt_len items; NDCG@10 per user, "
                  "full-sort as RecBole's"},
        tables={"users": (f"Test users by number of kept blocks ({base['setting']}; mean over "
                          "the seeds where the count occurs, share averaged over all seeds)",
                          by_blocks, ["blocks", "seeds", "share", "users", *BEHAVIOUR_KEYS]),
                "correlation": ("Spearman correlation with the number of kept blocks (mean over "
                                "the seeds where it is defined)", correlations,
                                ["with", "spearman", "spearman_std", "seeds_defined"])},
    )
    base_seeds = measured[base["setting"]]
    keep_std = (np.std([s["keep_frequency"] for s in base_seeds], axis=0, ddof=1)
                if len(base_seeds) > 1 else None)
    png = _plot(base, keep_std, rows, n_blocks, f"{output_dir}/{NAME}.png", dataset)
    return result.save(output_dir, png)


def _check_variations(variations):
    if not isinstance(variations, dict):
        raise ValueError(f"variations={variations!r}: expected a dict {{stage-2 key: [values]}}")
    checked = {}
    for key, values in variations.items():
        if key not in STAGE2_KEYS:
            raise ValueError(f"variations key {key!r} is not a stage-2 key: use one of "
                             f"{STAGE2_KEYS} (each retrains stage 2 from the same supernet)")
        checked[key] = check_values(f"variations[{key!r}]", values, key=key)
    return checked


def _measure(trained):
    """Structure statistics and test NDCG@10 of a trained model as it is now."""
    masks = user_structures(trained.model, trained.test_data)
    stats = structure_stats(masks)
    stats["masks"] = masks
    stats["ndcg@10"] = trained.evaluate(trained.test_data)[0]["ndcg@10"]
    return stats


def _row(label, kind, per_seed, n_blocks):
    """One table row: statistics averaged over seeds (std of entropy, top share and NDCG)."""
    pooled = Counter(bits(mask) for stats in per_seed for mask in stats["masks"])
    top, top_users = pooled.most_common(1)[0]
    row = {"setting": label, "kind": kind, "users": per_seed[0]["users"],
           "distinct": float(np.mean([s["distinct"] for s in per_seed])),
           "top_structure": top, "pooled_top_users": top_users,
           "pooled_users": sum(s["users"] for s in per_seed)}
    for key, name in (("entropy", "entropy"), ("top_share", "top_share"),
                      ("ndcg@10", "ndcg@10")):
        row[name], row[f"{name}_std"] = mean_std(s[key] for s in per_seed)
    row["mean_blocks"] = float(np.mean([s["mean_blocks"] for s in per_seed]))
    keep = np.mean([s["keep_frequency"] for s in per_seed], axis=0)
    by_blocks = np.mean([s["users_by_blocks"] for s in per_seed], axis=0)
    for b in range(n_blocks):
        row[f"keep_b{b + 1}"] = float(keep[b])
    for k in range(1, n_blocks + 1):
        row[f"users_{k}_blocks"] = float(by_blocks[k])
    return row


def _behaviour_tables(behaviours):
    """Rows by kept-block count and Spearman rows, each averaged over the seeds' behaviours."""
    per_seed = [{row["blocks"]: row for row in behaviour_by_blocks(b)} for b in behaviours]
    by_blocks = []
    for count in sorted(set().union(*per_seed)):
        present = [rows[count] for rows in per_seed if count in rows]
        row = {"blocks": count, "seeds": len(present),
               "share": float(np.mean([rows[count]["share"] if count in rows else 0.0
                                       for rows in per_seed])),
               "users": float(np.mean([r["users"] for r in present]))}
        for key in BEHAVIOUR_KEYS:
            row[key] = float(np.mean([r[key] for r in present]))
        by_blocks.append(row)
    rhos = [block_correlations(b) for b in behaviours]
    correlations = []
    for key in BEHAVIOUR_KEYS:
        defined = [r[key] for r in rhos if not np.isnan(r[key])]
        mean, std = mean_std(defined) if defined else (float("nan"), float("nan"))
        correlations.append({"with": key, "spearman": mean, "spearman_std": std,
                             "seeds_defined": len(defined)})
    return by_blocks, correlations


def _behaviour_findings(by_blocks, correlations):
    groups = "; ".join(
        f"{row['blocks']} blocks: {row['share']:.0%} of users, history {row['history']:.1f}, "
        f"popularity {row['popularity']:.1f}, NDCG@10 {fmt(row['ndcg@10'])}" for row in by_blocks)
    findings = [f"Test users by number of kept blocks: {groups}."]
    defined = [row for row in correlations if row["seeds_defined"]]
    if not defined:
        findings.append("Spearman correlations with the number of kept blocks are undefined (NaN): "
                        "every test user keeps the same number of blocks, so the controller's "
                        "choice does not depend on history, popularity or quality.")
    else:
        findings.append("Spearman correlation of the number of kept blocks with " + ", ".join(
            f"{row['with']}: {fmt(row['spearman'], 3)}" for row in correlations)
            + " (NaN where every user keeps the same number of blocks).")
    return findings


def _short(label):
    key, value = label.split("=")
    names = {"keep_threshold": "thr", "sparsity_weight": "lambda", "tau_end": "tau_end",
             "rt_len": "rt_len"}
    return f"{names.get(key, key)} {value}"


def _plot(base, keep_std, rows, n_blocks, path, dataset):
    fig, (keep_ax, users_ax, share_ax) = plots.figure(
        3, width=4.6, height=3.6, title=f"ForwardOFA on {dataset}: block selection "
        f"({base['setting']}): the top structure {base['top_structure']} covers "
        f"{base['top_share']:.1%} of test users, {base['mean_blocks']:.2f} of {n_blocks} blocks "
        "kept on average")
    plots.bars(keep_ax, [f"b{b + 1}" for b in range(n_blocks)],
               [base[f"keep_b{b + 1}"] for b in range(n_blocks)], xlabel="block",
               ylabel="fraction of test users keeping it",
               errors=None if keep_std is None else list(keep_std))
    keep_ax.set_ylim(0, 1.05)
    keep_ax.set_title("(a) keep frequency", fontsize=9)
    plots.bars(users_ax, [str(k) for k in range(1, n_blocks + 1)],
               [base[f"users_{k}_blocks"] for k in range(1, n_blocks + 1)],
               xlabel="number of kept blocks", ylabel="fraction of test users")
    users_ax.set_ylim(0, 1.05)
    users_ax.set_title("(b) users by number of kept blocks", fontsize=9)
    labels = [_short(row["setting"]) for row in rows]
    plots.bars(share_ax, labels, [row["top_share"] for row in rows], xlabel="setting",
               ylabel="top-structure share (bars)",
               errors=error_bars(row["top_share_std"] for row in rows))
    share_ax.patches[0].set_label("top-structure share")
    share_ax.axhline(DOMINANT_SHARE, color="k", linestyle=":", linewidth=1,
                     label=f"dominant at {DOMINANT_SHARE:g}")
    share_ax.set_ylim(0, 1.4)  # room for the legend above the bars
    share_ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    share_ax.tick_params(axis="x", rotation=35)
    entropy_ax = share_ax.twinx()
    for start, stop in _series(rows):  # a line only through one key's values
        entropy_ax.plot(range(start, stop), [row["entropy"] for row in rows[start:stop]],
                        "o-" if stop - start > 1 else "o", color="C1",
                        label="entropy, bits (right axis)" if start == 0 else None)
    entropy_ax.set_ylabel("entropy of structures, bits (dots)", color="C1")
    entropy_ax.set_ylim(0, max(1.0, max(row["entropy"] for row in rows)) * 1.4)
    handles, names = share_ax.get_legend_handles_labels()
    more, more_names = entropy_ax.get_legend_handles_labels()
    share_ax.legend(handles + more, names + more_names, fontsize=7, loc="upper center",
                    ncol=2)
    share_ax.set_title("(c) structure diversity per setting", fontsize=9)
    return plots.save(fig, path)


def _series(rows):
    """``(start, stop)`` of the runs of consecutive settings of one key (``key=value``): the
    values of one key form a series; settings of different keys are unrelated."""
    keys = [row["setting"].split("=")[0] for row in rows]
    runs, start = [], 0
    for index in range(1, len(keys) + 1):
        if index == len(keys) or keys[index] != keys[start]:
            runs.append((start, index))
            start = index
    return runs


def _describe(row):
    return (f"{row['setting']}: top structure {row['top_structure']} covers "
            f"{row['top_share']:.1%} of users, {row['distinct']:.1f} distinct structures, "
            f"entropy {row['entropy']:.2f} bits, {row['mean_blocks']:.2f} blocks on average, "
            f"NDCG@10 {fmt(row['ndcg@10'])}")


def _findings(base, rows, n_blocks):
    findings = [
        f"As trained ({base['setting']}), {base['distinct']:.1f} distinct structures over "
        f"{base['users']} test users (entropy {base['entropy']:.2f} bits; at most "
        f"{np.log2(2 ** n_blocks - 1):.2f} for {n_blocks} blocks); the most common, "
        f"{base['top_structure']}, covers "
        f"{base['top_share']:.1%} of users; {base['mean_blocks']:.2f} of {n_blocks} blocks kept "
        f"on average; test NDCG@10 {fmt(base['ndcg@10'])}.",
        "Keep frequency per block: " + ", ".join(
            f"b{b + 1} {base[f'keep_b{b + 1}']:.0%}" for b in range(n_blocks)) + ".",
        "Users by number of kept blocks: " + ", ".join(
            f"{k}: {base[f'users_{k}_blocks']:.0%}" for k in range(1, n_blocks + 1)) + ".",
    ]
    others = [row for row in rows if row is not base]
    if base["top_share"] >= DOMINANT_SHARE:
        findings.append(
            f"One structure dominates: {base['top_structure']} is the sub-network of "
            f"{base['top_share']:.1%} of test users (>= {DOMINANT_SHARE:.0%}), so the controller "
            f"assigns {'every user' if base['top_share'] == 1 else 'nearly everyone'} the same "
            "structure."
        )
        varied = [row for row in others if row["top_share"] < DOMINANT_SHARE]
        if varied:
            findings.append("Settings that bring the top structure below "
                            f"{DOMINANT_SHARE:.0%}: " + "; ".join(_describe(r) for r in varied)
                            + ".")
        elif others:
            closest = min(others, key=lambda row: row["top_share"])
            findings.append(f"None of the {len(others)} other settings brings the top structure "
                            f"below {DOMINANT_SHARE:.0%}; the closest is " + _describe(closest)
                            + ".")
    elif others:
        most = max(rows, key=lambda row: row["entropy"])
        findings.append(f"No structure covers {DOMINANT_SHARE:.0%} of users; the most varied "
                        "setting is " + _describe(most) + ".")
    if others:
        best = max(rows, key=lambda row: row["ndcg@10"])
        findings.append(f"Best test NDCG@10 among the settings: {_describe(best)}.")
    return findings


# ----------------------------------------------------------------------------- users by blocks
def user_behaviour(model, data, dataset) -> Dict[str, np.ndarray]:
    """Per evaluated case of ``data`` (the order of :func:`user_structures`), numpy arrays:

    * ``masks`` bool [users, blocks] and ``blocks`` (kept blocks) under ``model.eval_structure``;
    * ``history``: ``item_seq_len``, the history the model reads (capped at
      ``MAX_ITEM_LIST_LENGTH``);
    * ``popularity``: the mean training count of the last ``model.rt_len`` items of the sequence
      (the items the structure controller reads). An item's count is its number of rows in the
      train split ``dataset`` (a RecBole Dataset or the train dataloader): the targets of the
      training cases, which is what the model trains on and what RecBole's ``Pop`` counts (each
      user's first interaction is never a target, so it is not counted);
    * ``ndcg@10``: 1 / log2(rank + 1) of the target in RecBole's full-sort top 10 (0 outside it),
      from ``model.full_sort_predict`` on the same batches: the padding item is excluded and, as
      RecBole does for sequential models (``history_index`` is None), items the user saw before are
      not; so on a full-sort loader the mean equals RecBole's NDCG@10 on ``data`` (up to
      ``metric_decimal_place`` rounding). On a negative-sampling loader it is still full-sort.
    """
    counts = _train_item_counts(dataset, model.n_items).to(model.device)
    if getattr(model, "active_config", None) is not None:
        raise ValueError("user_behaviour(): the model is inside active_subnet(); per-user "
                         "structures need the controller: leave the active_subnet block first")
    discount = 1.0 / torch.log2(torch.arange(2, TOPK + 2, dtype=torch.float64))
    columns = {"masks": [], "history": [], "popularity": [], "ndcg@10": []}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for seq, length, target in eval_cases(model, data):
                seq, length = seq.to(model.device), length.to(model.device)
                _, mask, _ = model.eval_structure(seq, length)
                recent, recent_len = last_k(seq, length, model.rt_len)
                recent_counts = counts[recent] * (recent > 0)
                popularity = torch.where(recent_len > 0,
                                         recent_counts.sum(1) / recent_len.clamp(min=1),
                                         float("nan"))
                scores = model.full_sort_predict(
                    Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: length}))
                scores = scores.view(seq.size(0), -1)
                scores[:, 0] = -np.inf  # the padding item, as RecBole's full-sort evaluation
                top = torch.topk(scores, TOPK, dim=-1).indices.cpu()
                hits = (top == target.view(-1, 1)).to(torch.float64)
                columns["masks"].append(mask.cpu())
                columns["history"].append(length.cpu())
                columns["popularity"].append(popularity.cpu())
                columns["ndcg@10"].append(hits @ discount)
    finally:
        model.train(was_training)
    if not columns["masks"]:
        raise ValueError("the evaluation split has no users: nothing to analyse")
    out = {key: torch.cat(values).numpy() for key, values in columns.items()}
    out["masks"] = out["masks"].astype(bool)
    out["blocks"] = out["masks"].sum(axis=1)
    out["history"] = out["history"].astype(np.int64)
    out["popularity"] = out["popularity"].astype(np.float64)
    return out


def _train_item_counts(dataset, n_items) -> torch.Tensor:
    """Rows per item id of the train split (float [n_items]); ValueError naming `dataset`."""
    if isinstance(dataset, AbstractDataLoader):
        dataset = dataset._dataset
    if not isinstance(dataset, Dataset):
        raise ValueError(f"dataset={type(dataset).__name__}: expected the train split, a RecBole "
                         "Dataset or the train dataloader (e.g. Trained.train_data)")
    items = dataset.inter_feat[dataset.iid_field]
    if items.numel() and int(items.max()) >= n_items:
        raise ValueError(f"dataset: item id {int(items.max())} is beyond the model's {n_items} "
                         "items; pass the train split of the data the model was trained on")
    return torch.bincount(items, minlength=n_items).to(torch.float64)


def _check_behaviour(behaviour):
    missing = [key for key in ("blocks", *BEHAVIOUR_KEYS) if key not in behaviour]
    if missing:
        raise ValueError(f"behaviour lacks {missing}: pass the dict user_behaviour() returns")
    blocks = np.asarray(behaviour["blocks"])
    if blocks.ndim != 1 or blocks.size == 0:
        raise ValueError(f"behaviour['blocks'] has shape {blocks.shape}: expected one count per "
                         "user, at least one user")
    for key in BEHAVIOUR_KEYS:
        if np.shape(behaviour[key]) != blocks.shape:
            raise ValueError(f"behaviour[{key!r}] has shape {np.shape(behaviour[key])}, "
                             f"behaviour['blocks'] {blocks.shape}: one value per user")
    return blocks


def behaviour_by_blocks(behaviour) -> List[dict]:
    """One row per number of kept blocks that occurs (ascending): ``blocks``, ``users``,
    ``share`` of users, and the mean ``history``, ``popularity`` and ``ndcg@10`` of its users."""
    blocks = _check_behaviour(behaviour)
    rows = []
    for count in np.unique(blocks):
        users = blocks == count
        row = {"blocks": int(count), "users": int(users.sum()), "share": float(users.mean())}
        for key in BEHAVIOUR_KEYS:
            row[key] = float(np.mean(np.asarray(behaviour[key], dtype=np.float64)[users]))
        rows.append(row)
    return rows


def block_correlations(behaviour) -> Dict[str, float]:
    """Spearman rank correlation of the kept-block count with each of :data:`BEHAVIOUR_KEYS`
    (``{key: rho}``). NaN where it is undefined: when every user keeps the same number of blocks
    (or the other quantity is constant), a rank correlation has no meaning."""
    blocks = _check_behaviour(behaviour).astype(np.float64)
    out = {}
    for key in BEHAVIOUR_KEYS:
        values = np.asarray(behaviour[key], dtype=np.float64)
        finite = np.isfinite(values)
        x, y = blocks[finite], values[finite]
        if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
            out[key] = float("nan")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            out[key] = float(stats.spearmanr(x, y).statistic)
    return out
