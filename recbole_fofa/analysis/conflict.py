"""Gradient conflict (the paper's figure 2): do users with different interests pull a shared block
in opposite directions, and does the parallel mapper reduce that compared with a shared one?

Per seed the supernet is trained once and stage 2 once per ``mapper_mode``. For a fixed sample of
evaluated users:

* a user's **interest** is the mean embedding of their last ``rt_len`` items, embedded with the
  seed's supernet item table (the same for every mode, so every mode sees the same pairs);
* **different-interest pairs** are the quarter of user pairs with the lowest interest cosine,
  **similar pairs** the quarter with the highest;
* the **gradient of block l** for a user is the gradient of their own recommendation loss (full
  softmax cross-entropy of their target item, through their own eval structure, dropout off)
  w.r.t. block l's weights, its static low-rank factors and the mapper head that generates it
  (``parallel``: head l; ``shared``: the one shared head; ``none``: no head);
* a pair counts for block l only if both users keep l; its value is the cosine of their block-l
  gradients, negative meaning conflict.
"""

from __future__ import annotations

import math
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from recbole_fofa import experiment, plots
from recbole_fofa.analysis import AnalysisResult
from recbole_fofa.analysis._common import (
    MODEL,
    check_values,
    eval_cases,
    fmt,
    mean_std,
    progress_bar,
    require_stage2,
    resolve_config,
    resolve_seeds,
    run_config,
)
from recbole_fofa.checks import is_int
from recbole_fofa.model import Stage
from recbole_fofa.model.controller import last_k

__all__ = ["run_conflict", "block_gradients", "pair_sets", "SPLITS"]

NAME = "conflict"
SPLITS = ("test", "valid")


def run_conflict(dataset, config_file_list=None, config_dict=None, output_dir="fofa-output",
                 seeds=None, progress=True, modes=("shared", "parallel"), n_users=64,
                 split="test") -> AnalysisResult:
    """Cosine of per-block loss gradients between different-interest and similar user pairs, for
    each ``mapper_mode`` in ``modes`` (one supernet per seed, shared by the modes).

    ``n_users``: users sampled (seeded) from the ``split`` (``'test'`` or ``'valid'``) split; all
    of them when the split has fewer. Writes ``<output_dir>/conflict.png`` (histograms of the
    different-interest pairs' cosines, one panel per mode), ``conflict.md`` and ``conflict.csv``
    (one row per mode); returns the :class:`AnalysisResult`.
    """
    modes = check_values("modes", modes, key="mapper_mode")
    if isinstance(n_users, bool) or not is_int(n_users) or n_users < 4:
        raise ValueError(f"n_users={n_users!r}: expected an integer >= 4 (pairs form quartiles)")
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: use one of {SPLITS}")
    config = resolve_config(dataset, config_file_list, config_dict)
    require_stage2(config)
    seeds = resolve_seeds(config, seeds)

    per_mode: Dict[str, List[dict]] = {mode: [] for mode in modes}
    notes = []
    with progress_bar(len(seeds) * len(modes), "gradient conflict", progress) as bar:
        for seed in seeds:
            supernet, seconds, users = None, None, None
            for mode in modes:
                trained = experiment.train(
                    MODEL, dataset, config_file_list,
                    run_config(config_dict, seed, mapper_mode=mode),
                    supernet=supernet, supernet_seconds=seconds,
                )
                bar.update(1)
                data = trained.test_data if split == "test" else trained.valid_data
                if users is None:  # the first mode fixes the users, the interests and pairs
                    supernet = trained.supernet
                    seconds = trained.epoch_seconds.get(Stage.SUPERNET.value)
                    users = _sample_users(trained.model, data, n_users, seed)
                    table = (supernet["item_embedding.weight"] if supernet is not None
                             else trained.model.item_embedding.weight.detach())
                    interests = _interests(users, table, trained.model.rt_len)
                    different, similar = pair_sets(interests)
                    if len(users["seq"]) < n_users:
                        notes.append(f"seed {seed}: the {split} split has "
                                     f"{len(users['seq'])} users, fewer than n_users={n_users}; "
                                     "all of them were used")
                grads, masks = block_gradients(trained.model, users)
                per_mode[mode].append({
                    "different": _pair_cosines(grads, masks, different),
                    "similar": _pair_cosines(grads, masks, similar),
                    "users": len(users["seq"]),
                    "ndcg@10": trained.evaluate(trained.test_data)[0].get("ndcg@10", math.nan),
                })

    rows = [_row(mode, per_mode[mode]) for mode in modes]
    columns = ["mapper_mode", "users", "different_pairs", "different_cos", "different_cos_std",
               "conflict_fraction", "similar_pairs", "similar_cos", "similar_cos_std",
               "similar_conflict_fraction", "ndcg@10"]
    result = AnalysisResult(
        NAME, rows, columns, notes + _findings(rows),
        settings={"dataset": dataset, "model": MODEL, "seeds": seeds, "modes": modes,
                  "n_users": n_users, "split": split, "rt_len": config["rt_len"],
                  "n_blocks": config["n_blocks"],
                  "loss": "full-softmax cross-entropy of each user's target item",
                  "block l parameters": "block l's weights, its low-rank factors and the mapper "
                  "head generating it (parallel: head l; shared: the shared head)",
                  "pairs": "counted per (user pair, block kept by both); different = lowest "
                  "quartile of interest cosine, similar = highest quartile",
                  "interest": "mean supernet item embedding of the last rt_len items"},
    )
    png = _plot(per_mode, f"{output_dir}/{NAME}.png", dataset)
    return result.save(output_dir, png)


# ----------------------------------------------------------------------------- users and pairs
def _sample_users(model, data, n_users, seed):
    """``n_users`` evaluated cases of ``data`` (all when fewer), chosen with ``seed``."""
    seqs, lengths, targets = [], [], []
    for seq, length, target in eval_cases(model, data):
        seqs.append(seq)
        lengths.append(length)
        targets.append(target)
    seq, length, target = torch.cat(seqs), torch.cat(lengths), torch.cat(targets)
    if len(seq) < 2:
        raise ValueError(f"the split has {len(seq)} users: pairs need at least 2")
    rng = np.random.default_rng(seed)
    index = torch.as_tensor(np.sort(rng.choice(len(seq), min(n_users, len(seq)), replace=False)))
    return {"seq": seq[index], "len": length[index], "target": target[index]}


def _interests(users, item_table, rt_len):
    """Mean embedding of each user's last ``rt_len`` items: [users, d]."""
    recent, recent_len = last_k(users["seq"], users["len"], rt_len)
    emb = item_table.detach().cpu()[recent] * (recent > 0).unsqueeze(-1)
    return emb.sum(1) / recent_len.clamp(min=1).unsqueeze(-1).to(emb.dtype)


def pair_sets(interests):
    """(different, similar): index pairs [P, 2] of the lowest and the highest quarter of all user
    pairs by interest cosine (at least one pair each; ties broken by pair order)."""
    n = interests.size(0)
    normed = F.normalize(interests.float(), dim=1)
    first, second = torch.triu_indices(n, n, offset=1)
    cosine = (normed[first] * normed[second]).sum(1)
    order = torch.argsort(cosine, stable=True)
    quarter = max(1, order.numel() // 4)
    pairs = torch.stack([first, second], dim=1)
    return pairs[order[:quarter]], pairs[order[-quarter:]]


# ----------------------------------------------------------------------------- gradients
def _block_parameters(model, block):
    """Block ``block``'s weights, its low-rank factors and the mapper head that generates it."""
    params = list(model.blocks[block].parameters())
    mapper = model.mapper
    if mapper.mode != "none":
        params += list(mapper.factor_sets[block].parameters())
        head = mapper.heads[block] if mapper.mode == "parallel" else mapper.heads[0]
        params += list(head.parameters())
    return params


def block_gradients(model, users):
    """Per-user gradients of block l's parameters (flat vectors; None where the user does not
    keep block l) and the users' kept masks (bool [users, blocks]), each user alone through their
    own eval structure with dropout off."""
    groups = [_block_parameters(model, block) for block in range(model.n_blocks)]
    unique = list({id(p): p for group in groups for p in group}.values())
    position = {id(p): i for i, p in enumerate(unique)}
    flags = [p.requires_grad for p in unique]
    was_training = model.training
    model.eval()
    device = model.device
    grads, masks = [], []
    try:
        for p in unique:
            p.requires_grad_(True)
        for i in range(len(users["seq"])):
            seq = users["seq"][i : i + 1].to(device)
            length = users["len"][i : i + 1].to(device)
            with torch.no_grad():
                mask = model.eval_structure(seq, length)[1][0].cpu()
            with torch.enable_grad():
                loss = F.cross_entropy(model.scores(model.forward(seq, length)),
                                       users["target"][i : i + 1].to(device))
                values = torch.autograd.grad(loss, unique, allow_unused=True)
            per_block = []
            for block, group in enumerate(groups):
                if not mask[block]:
                    per_block.append(None)
                    continue
                parts = [values[position[id(p)]] for p in group]
                per_block.append(torch.cat([
                    (g if g is not None else torch.zeros_like(p)).reshape(-1).cpu()
                    for g, p in zip(parts, group)]))
            grads.append(per_block)
            masks.append(mask)
    finally:
        for p, flag in zip(unique, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    return grads, torch.stack(masks).numpy().astype(bool)


def _pair_cosines(grads, masks, pairs):
    """Cosines of block-l gradients for every (pair, block kept by both); zero gradients skipped."""
    cosines = []
    for a, b in pairs.tolist():
        for block in np.flatnonzero(masks[a] & masks[b]):
            ga, gb = grads[a][block], grads[b][block]
            norm = float(ga.norm() * gb.norm())
            if norm > 0:
                cosines.append(float(torch.dot(ga, gb)) / norm)
    return np.clip(np.asarray(cosines, dtype=np.float64), -1.0, 1.0)


# ----------------------------------------------------------------------------- report
def _row(mode, per_seed):
    different = np.concatenate([s["different"] for s in per_seed])
    similar = np.concatenate([s["similar"] for s in per_seed])
    row = {"mapper_mode": mode, "users": per_seed[0]["users"],
           "different_pairs": int(different.size), "similar_pairs": int(similar.size)}
    for name, values in (("different", different), ("similar", similar)):
        row[f"{name}_cos"] = float(values.mean()) if values.size else math.nan
        row[f"{name}_cos_std"] = mean_std(
            [s[name].mean() for s in per_seed if s[name].size] or [math.nan])[1]
    row["conflict_fraction"] = float((different < 0).mean()) if different.size else math.nan
    row["similar_conflict_fraction"] = float((similar < 0).mean()) if similar.size else math.nan
    row["ndcg@10"] = mean_std(s["ndcg@10"] for s in per_seed)[0]
    return row


def _plot(per_mode, path, dataset):
    fig, axes = plots.figure(len(per_mode), width=4.6, height=3.6,
                             title=f"ForwardOFA on {dataset}: per-block gradient cosine of "
                             "user pairs")
    bins = np.linspace(-1, 1, 41)
    for ax, (mode, per_seed) in zip(axes, per_mode.items()):
        different = np.concatenate([s["different"] for s in per_seed])
        similar = np.concatenate([s["similar"] for s in per_seed])
        ax.hist(different, bins=bins, alpha=0.7, label=f"different interests ({different.size})")
        ax.hist(similar, bins=bins, histtype="step", color="k",
                label=f"similar interests ({similar.size})")
        ax.axvline(0, color="C3", linestyle=":", linewidth=1, label="0: conflict below")
        ax.set_xlabel("cosine of block gradients")
        ax.set_ylabel("(pair, block) count")
        shares = [f"{(v < 0).mean():.0%}" if v.size else "-" for v in (different, similar)]
        ax.set_title(f"mapper_mode: {mode}: conflicting {shares[0]} of different-interest "
                     f"vs {shares[1]} of similar pairs", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return plots.save(fig, path)


def _findings(rows):
    findings = []
    for row in rows:
        if not row["different_pairs"]:
            findings.append(f"{row['mapper_mode']}: no different-interest pair keeps a common "
                            "block, so there is nothing to compare.")
            continue
        findings.append(
            f"{row['mapper_mode']}: different-interest pairs have mean gradient cosine "
            f"{fmt(row['different_cos'])} and conflict (cosine < 0) on "
            f"{row['conflict_fraction']:.1%} of {row['different_pairs']} (pair, block) cases; "
            f"similar pairs {fmt(row['similar_cos'])} ({row['similar_conflict_fraction']:.1%} "
            f"of {row['similar_pairs']}).")
        if row["similar_pairs"]:
            agree = row["similar_cos"] > row["different_cos"]
            findings.append(
                f"{row['mapper_mode']}: gradients of different-interest pairs "
                f"{'agree less' if agree else 'do not agree less'} than those of similar pairs "
                f"({fmt(row['different_cos'])} vs {fmt(row['similar_cos'])}).")
    by_mode = {row["mapper_mode"]: row for row in rows}
    if {"parallel", "shared"} <= set(by_mode):
        par, sha = by_mode["parallel"], by_mode["shared"]
        if par["different_pairs"] and sha["different_pairs"]:
            reduced = par["conflict_fraction"] < sha["conflict_fraction"]
            findings.append(
                f"The parallel mapper {'reduces' if reduced else 'does not reduce'} conflict "
                f"compared with the shared one: {par['conflict_fraction']:.1%} vs "
                f"{sha['conflict_fraction']:.1%} of different-interest (pair, block) cases have "
                f"a negative cosine; mean cosine {fmt(par['different_cos'])} vs "
                f"{fmt(sha['different_cos'])}. The block-l parameter sets differ by mode (head "
                "l vs the whole shared head), so the comparison is between what each mode "
                "actually updates.")
    return findings
