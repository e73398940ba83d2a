"""Real savings at evaluation: does ForwardOFA's evaluation time fall with the MACs it saves?

Usage: python benchmarks/real_savings.py [--checkpoint FILE] [--structures 000111,110011]
           [--shares 0.6,0.4] [--repeats 7] [--threads N] [--breakdown] [--style markdown]

Builds ForwardOFA and SASRec with ``n_layers = n_blocks`` (SASRec-6 by default) at the sizes of
``--config_files`` (properties/main.yaml) on RecBole's bundled ml-100k, and times full-sort
evaluation of the test split (RecBole's ``trainer.evaluate``, median of ``--repeats`` after one
warm-up; the models take turns within each repeat), for ForwardOFA with each ``eval_grouping``
and for SASRec. Trains nothing: with
``--checkpoint`` (a ForwardOFA checkpoint; its model keys are used) the trained controller picks
each user's blocks, otherwise an untrained model in the adapt stage runs with its controller's
decision replaced by ``--structures`` in ``--shares`` (the controller and the mapper still run).
A structure is one character per block, block 0 first: ``000111`` keeps blocks 3, 4 and 5;
``--structures all`` is every structure in equal shares.

Columns: ``eval s`` RecBole's whole evaluation (data, model, top-k, metrics); ``model s`` the
model alone (``full_sort_predict`` over the test batches); MACs per user (the cost metric);
the time and MACs ratios to SASRec; ``real savings`` = time ratio / MACs ratio (1.0: time falls
exactly with MACs; ``model real`` the same for the model alone). ``--breakdown`` times the parts
of ForwardOFA's evaluation forward pass on the first test batch.
"""

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from recbole_fofa import compat
from recbole_fofa.checks import EVAL_GROUPINGS, MODEL_CHECKS
from recbole_fofa.model import Stage
from recbole_fofa.model.layers import group_by_structure
from recbole_fofa.quick_start import prepare, quiet_console
from recbole_fofa.table import format_table
from recbole_fofa.trainer import load_checkpoint
from recbole_fofa.utils import get_trainer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STRUCTURES, DEFAULT_SHARES = "000111,110011", "0.6,0.4"
#: SASRec reads these under the same names; ForwardOFA's n_blocks is its n_layers
SHARED_KEYS = ("hidden_size", "inner_size", "n_heads", "hidden_act", "layer_norm_eps",
               "MAX_ITEM_LIST_LENGTH", "loss_type")


def parse_structures(text, shares_text, n_blocks):
    """(masks [S, n] bool, shares [S]) from ``--structures`` and ``--shares``; ValueError naming
    the flag otherwise."""
    if text == "all":
        codes = range(1, 2**n_blocks)
        masks = np.array([[bool(c >> b & 1) for b in range(n_blocks)] for c in codes])
        return masks, np.full(len(masks), 1.0 / len(masks))
    names = [s.strip() for s in text.split(",")]
    for name in names:
        if len(name) != n_blocks or set(name) - {"0", "1"} or "1" not in name:
            raise ValueError(f"--structures: {name!r} must be {n_blocks} characters of 0/1 "
                             f"(one per block, block 0 first) keeping at least one block, or "
                             "'all'")
    try:
        shares = np.array([float(s) for s in shares_text.split(",")])
    except ValueError:
        raise ValueError(f"--shares: {shares_text!r} must be comma-separated numbers") from None
    if len(shares) != len(names) or (shares <= 0).any() or abs(shares.sum() - 1) > 1e-6:
        raise ValueError(f"--shares: {shares_text!r} must give one positive share per structure "
                         f"({len(names)}) summing to 1")
    return np.array([[c == "1" for c in name] for name in names]), shares


def assign(masks, shares, batch, seed=0):
    """Masks [batch, n]: structure s for round(shares[s] * batch) rows (largest remainders), in a
    seeded random row order (the same for every call with this batch size)."""
    exact = shares * batch
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact)[: batch - counts.sum()]] += 1
    rows = np.repeat(np.arange(len(masks)), counts)
    rows = rows[np.random.default_rng([seed, batch]).permutation(batch)]
    return torch.as_tensor(masks[rows])


def force_structures(model, masks, shares):
    """Replace the controller's decision by the given mix (the controller still runs)."""
    original = model.eval_structure

    def forced(item_seq, item_seq_len):
        z, mask, probs = original(item_seq, item_seq_len)
        return z, assign(masks, shares, mask.size(0)).to(mask.device), probs

    model.eval_structure = forced


def median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def model_only(model, batches):
    """``full_sort_predict`` over the test batches, as RecBole's evaluation calls it."""
    def run():
        with torch.no_grad():
            for interaction in batches:
                model.full_sort_predict(interaction)
    return run


def build(name, config_files, config_dict):
    config, model, (_, _, test) = prepare(name, "ml-100k", config_file_list=config_files,
                                          config_dict=config_dict)
    model.eval()
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return config, model, trainer, test


def checkpoint_keys(path, trust=False):
    """(ForwardOFA keys of the checkpoint's config, checkpoint); ``trust``: the config key
    ``trust_checkpoint`` (full unpickling, for files you trust)."""
    checkpoint = compat.load_checkpoint_file(path, "cpu", trust)
    saved = checkpoint["config"]
    if saved["model"] != "ForwardOFA":
        raise ValueError(f"--checkpoint {path}: a {saved['model']} checkpoint; expected "
                         "ForwardOFA")
    keys = list(MODEL_CHECKS["ForwardOFA"]) + ["MAX_ITEM_LIST_LENGTH"]
    return {k: saved[k] for k in keys if k in saved}, checkpoint


def time_models(entries, repeats):
    """Rows of timings for ``entries`` (label, path, model, trainer, test, eval_grouping or None).

    The entries take turns within each repeat (one evaluation and one model pass each), so a slow
    spell of the machine hits all of them rather than one; each time is a median over repeats.
    """
    timed = []
    for label, path, model, trainer, test, grouping in entries:
        _use(model, grouping)
        result = trainer.evaluate(test, load_best_model=False)  # warm-up; its MACs metric
        batches = [batch[0] for batch in test]
        timed.append({"model": label, "path": path, "users": sum(len(b) for b in batches),
                      "MACs/user": float(result["macs"]),
                      "blocks/user": float(result["blocks"]), "_eval": [], "_model": []})
        timed[-1]["_run"] = model_only(model, batches)
    for _ in range(repeats):
        for row, (_, _, model, trainer, test, grouping) in zip(timed, entries):
            _use(model, grouping)
            row["_eval"].append(median_seconds(
                lambda t=trainer, d=test: t.evaluate(d, load_best_model=False), 1))
            row["_model"].append(median_seconds(row["_run"], 1))
    for row in timed:
        row["eval s"] = statistics.median(row.pop("_eval"))
        row["model s"] = statistics.median(row.pop("_model"))
        row.pop("_run")
    return timed


def _use(model, grouping):
    if grouping is not None:
        model.eval_grouping = grouping


def breakdown(model, batch, repeats):
    """Median seconds of each part of ForwardOFA's evaluation forward on one batch."""
    seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    rows = []

    def add(part, fn, note=""):
        with torch.inference_mode():
            fn()
            rows.append({"part": part, "ms": 1e3 * median_seconds(fn, repeats), "note": note})

    with torch.inference_mode():
        z, mask, _ = model.eval_structure(seq, lengths)
        kept = mask.any(dim=0).nonzero().flatten().tolist()
        seq_output = model.encode_grouped(seq, lengths, z, mask)
    groups = len(group_by_structure(mask)[1])
    add("controller (all rows)", lambda: model.code_and_logits(seq, lengths))
    add("controller + masks", lambda: model.eval_structure(seq, lengths),
        "deterministic_mask, repair_to_budget")

    def record():
        model.reset_evaluation_costs()
        model._record(mask)
    add("record structures", record)
    add("evaluation_costs()", lambda: (record(), model.evaluation_costs()),
        "once per evaluation")
    add("group_by_structure", lambda: group_by_structure(mask), f"{groups} structures")
    add("mapper, all rows", lambda: model.mapper(z, mask.to(z.dtype), blocks=kept),
        f"blocks kept by anyone: {len(kept)}")
    add("embed + attention mask", lambda: (model.embed(seq), model.get_attention_mask(seq)))
    add("encode, per block", lambda: model.encode(
        seq, lengths, mask, gen=model.mapper(z, mask.to(z.dtype), blocks=kept)),
        "mapper included")
    add("encode, grouped", lambda: model.encode_grouped(seq, lengths, z, mask),
        "mapper included")
    with torch.inference_mode():
        scores = model.scores(seq_output)
    add("scores", lambda: model.scores(seq_output), f"{model.n_items} items")
    add("scores.clone()", scores.clone, "the copy inference_mode would need")
    for grouping in EVAL_GROUPINGS:
        model.eval_grouping = grouping
        add(f"full_sort_predict ({grouping})", lambda: model.full_sort_predict(batch))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a trained ForwardOFA checkpoint (.pth)")
    parser.add_argument("--trust_checkpoint", action="store_true", help="unpickle the "
                        "checkpoint fully (runs any code in it: only for files you trust)")
    parser.add_argument("--structures", help=f"forced structures (default without a "
                        f"checkpoint: {DEFAULT_STRUCTURES}), or 'all'")
    parser.add_argument("--shares", default=None, help=f"their shares (default "
                        f"{DEFAULT_SHARES} for the default structures)")
    parser.add_argument("--config_files", default=str(ROOT / "properties" / "main.yaml"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: "
                        "torch's)")
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--style", default="text", choices=["text", "markdown"])
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config_files = [str(Path(f).resolve()) for f in args.config_files.split(",")]
    checkpoint = Path(args.checkpoint).resolve() if args.checkpoint else None
    sys.argv = sys.argv[:1]  # RecBole's Config would read our flags as config keys

    with tempfile.TemporaryDirectory() as workdir, contextlib.chdir(workdir), quiet_console():
        settings, saved = ({}, None) if checkpoint is None else checkpoint_keys(checkpoint,
                                                                          args.trust_checkpoint)
        settings["state"] = "ERROR"
        config, fofa, trainer, test = build("ForwardOFA", config_files, settings)
        if saved is not None:
            load_checkpoint(fofa, saved)
            fofa.eval()
        else:
            fofa.stage = Stage.ADAPT
        if fofa.stage is not Stage.ADAPT:
            raise ValueError(f"--checkpoint {checkpoint}: saved in the '{fofa.stage}' stage; "
                             "per-user structures exist in the 'adapt' stage only")
        structures = args.structures or (None if saved is not None else DEFAULT_STRUCTURES)
        if structures is not None:
            shares = args.shares or (DEFAULT_SHARES if structures == DEFAULT_STRUCTURES else "")
            masks, shares = parse_structures(structures, shares, fofa.n_blocks)
            force_structures(fofa, masks, shares)
        sasrec_dict = {key: config[key] for key in SHARED_KEYS}
        sasrec_dict.update(n_layers=fofa.n_blocks, state="ERROR",
                           hidden_dropout_prob=config["hidden_dropout_prob"],
                           attn_dropout_prob=config["attn_dropout_prob"])
        _, sasrec, sasrec_trainer, sasrec_test = build("SASRec", config_files, sasrec_dict)
        entries = [("ForwardOFA", grouping, fofa, trainer, test, grouping)
                   for grouping in EVAL_GROUPINGS]
        entries.append((f"SASRec-{fofa.n_blocks}", "-", sasrec, sasrec_trainer, sasrec_test,
                        None))
        *rows, base = time_models(entries, args.repeats)
        parts = breakdown(fofa, next(iter(test))[0], args.repeats) if args.breakdown else None

    for row in rows + [base]:
        row["time ratio"] = row["eval s"] / base["eval s"]
        row["MACs ratio"] = row["MACs/user"] / base["MACs/user"]
        row["real savings"] = row["time ratio"] / row["MACs ratio"]
        row["model real"] = row["model s"] / base["model s"] / row["MACs ratio"]
    load = os.getloadavg()
    where = f"checkpoint {checkpoint}" if saved is not None else "untrained"
    mix = "the trained controller" if structures is None else (
        f"{structures} in shares {np.round(shares, 4).tolist()}" if structures != "all"
        else f"all {len(shares)} structures, equal shares")
    print(f"\nReal savings on ml-100k ({rows[0]['users']} test users, eval_batch_size "
          f"{config['eval_batch_size']}), {where}, structures: {mix}; torch threads "
          f"{torch.get_num_threads()}, median of {args.repeats}; load average "
          f"{load[0]:.2f} (1 min) on {os.cpu_count()} CPUs")
    print(format_table(rows + [base], ["model", "path", "eval s", "model s", "MACs/user",
                                       "blocks/user", "time ratio", "MACs ratio",
                                       "real savings", "model real"], style=args.style))
    if parts is not None:
        print(f"\nParts of ForwardOFA's evaluation forward on one batch of "
              f"{len(next(iter(test))[0])} users (median ms)")
        print(format_table(parts, ["part", "ms", "note"], style=args.style))


if __name__ == "__main__":
    main()
