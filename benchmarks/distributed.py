"""Distributed runs: one supernet epoch and the subnet search in one process vs several.

Usage: python benchmarks/distributed.py [--quick] [--device=cpu|gpu] [--nproc 2] [--k 10]
       [--checkpoint PATH] [--generations 10] [--eval_users 200] [--repeats 1]

1. Wall time of one ForwardOFA supernet epoch (stage 1 only: ``supernet_epochs=1``, ``epochs=0``)
   on the bundled ml-100k with properties/main.yaml's settings: one plain process (every core)
   against ``--nproc`` gloo processes (the cores shared out), timed around the epoch between
   barriers, data loading excluded. ``--device=gpu`` (CUDA only) instead compares one plain GPU
   process with one NCCL DDP process on the same GPU (DDP's own overhead).
2. The subnet search (elastic space, ``search_strategy`` auto) of a supernet trained once (or
   ``--checkpoint``) for k budgets spread evenly between the cheapest sub-network and the full
   encoder: one process against ``--nproc`` processes sharing each generation's evaluations;
   both must return the same per-budget sub-networks.

``--quick`` runs both on a tiny generated dataset in seconds (a smoke test, not a measurement)
inside a temporary folder. Otherwise RecBole writes log/ and saved/ (the trained supernet, for
``--checkpoint`` next time) into the working directory. Prints one markdown table per part.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from recbole_fofa import distributed, get_trainer
from recbole_fofa.quick_start import (
    load_data_and_model,
    prepare,
    quiet_console,
    search_checkpoint,
)
from recbole_fofa.search import build_space
from recbole_fofa.table import format_table

MAIN = str(Path(__file__).resolve().parent.parent / "properties" / "main.yaml")


def write_tiny_dataset(root, n_users=60, n_items=40, seq_len=14, seed=0):
    """``root/tiny/tiny.inter``: users walking the item cycle i -> i+1 (as the tests' data)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "tiny"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(1, n_users + 1):
        start = int(rng.integers(n_items))
        lines += [f"u{user}\ti{(start + s) % n_items + 1}\t{1000 * user + s}"
                  for s in range(seq_len)]
    (folder / "tiny.inter").write_text("\n".join(lines) + "\n")
    return str(root)


def setup(args, workdir):
    """(dataset, config files, config dict) of the runs."""
    settings = {"state": "ERROR", "show_progress": False, "supernet_epochs": 1, "epochs": 0,
                "search_space": "elastic"}
    if args.device == "cpu":
        settings["gpu_id"] = ""
    if args.quick:
        settings.update(data_path=write_tiny_dataset(workdir), MAX_ITEM_LIST_LENGTH=8,
                        hidden_size=16, inner_size=32, n_heads=2, n_blocks=3,
                        train_batch_size=64, eval_batch_size=256, metrics=["NDCG", "MACs"],
                        topk=[10], valid_metric="NDCG@10", dist_timeout=120,
                        load_col={"inter": ["user_id", "item_id", "timestamp"]})
        return "tiny", None, settings
    return "ml-100k", [MAIN], settings


def time_epoch(dataset, config_files, settings, repeats):
    """Seconds of one supernet epoch (the slowest rank's), median of ``repeats``; run in every
    rank of a process group, or in one plain process."""
    if torch.distributed.is_initialized():  # one rank of distributed.spawn's group
        world = torch.distributed.get_world_size()
        settings = dict(settings, local_rank=torch.distributed.get_rank(), nproc=world,
                        world_size=world, offset=0)
    settings = dict(settings, supernet_epochs=repeats, epochs=0)
    config, model, (train, _, _) = prepare("ForwardOFA", dataset, config_files, settings)
    trainer = get_trainer(config["MODEL_TYPE"], "ForwardOFA")(config, model)
    distributed.barrier()
    trainer.fit(train, None, saved=False, show_progress=False)  # no validation: epochs only
    times = [max(distributed.all_gather_objects(epoch.seconds)) for epoch in trainer.epoch_times]
    return statistics.median(times), str(config["device"]), torch.get_num_threads()


def epoch_table(args, dataset, config_files, settings):
    rows = []
    seconds, device, threads = time_epoch(dataset, config_files, settings, args.repeats)
    rows.append(["1 process", device, threads, f"{seconds:.2f}", "1.00"])
    base = seconds
    if args.device == "gpu":
        seconds, device, threads = distributed.spawn(
            time_epoch, 1, (dataset, config_files, settings, args.repeats), backend="nccl",
            gpu_id="0")
        rows.append(["1 NCCL DDP process", device, threads, f"{seconds:.2f}",
                     f"{base / seconds:.2f}"])
    else:
        seconds, device, threads = distributed.spawn(
            time_epoch, args.nproc, (dataset, config_files, settings, args.repeats),
            backend="gloo")
        rows.append([f"{args.nproc} gloo processes", device, f"{threads} each",
                     f"{seconds:.2f}", f"{base / seconds:.2f}"])
    print(f"\none ForwardOFA supernet epoch on {dataset} (median of {args.repeats}; "
          "data loading excluded)")
    print(format_table(rows, ["run", "device", "threads", "epoch s", "speed-up"],
                       style="markdown"))


def trained_checkpoint(dataset, config_files, settings):
    """Path of a ForwardOFA supernet trained for the search (one process)."""
    config, model, (train, valid, test) = prepare("ForwardOFA", dataset, config_files, settings)
    trainer = get_trainer(config["MODEL_TYPE"], "ForwardOFA")(config, model)
    trainer.fit(train, valid, saved=True)
    return trainer.saved_model_file


def spread_budgets(checkpoint, k):
    """k budgets as fractions of the full encoder, evenly inside (cheapest, full]."""
    config, model, *_ = load_data_and_model(checkpoint)
    space = build_space(config, model.shape)
    low, high = float(space.min_cost()), float(space.max_cost())
    full = float(model.shape.full_macs())
    return [(low + (high - low) * (i + 1) / (k + 1)) / full for i in range(k)]


def search_table(args, dataset, config_files, settings):
    checkpoint = args.checkpoint or trained_checkpoint(dataset, config_files, settings)
    budgets = spread_budgets(checkpoint, args.k)
    overrides = {"search_generations": args.generations, "search_eval_users": args.eval_users}
    if args.quick:  # 3 blocks: auto would enumerate the whole (small) space
        overrides.update(search_strategy="bottom_up", search_population=10, search_parents=4,
                         search_mutants=4, search_crossovers=4)
    runs = {}
    for nproc in (1, args.nproc):
        start = time.perf_counter()
        result = search_checkpoint(checkpoint, budgets, overrides, show_progress=False,
                                   nproc=nproc)
        runs[nproc] = (result, time.perf_counter() - start)
    serial = runs[1][0]
    rows = []
    for nproc, (result, wall) in runs.items():
        same = [b.config for b in result.budgets] == [b.config for b in serial.budgets]
        seconds = result.settings["search_seconds"]
        rows.append([nproc, result.strategy, result.settings["valid_evaluations"],
                     f"{seconds:.1f}", f"{serial.settings['search_seconds'] / seconds:.2f}",
                     f"{wall:.1f}", "yes" if same else "NO"])
    print(f"\nsubnet search, k = {args.k} budgets, {serial.space} space, valid NDCG@10 on "
          f"{args.eval_users} users, {args.generations} generations")
    print(format_table(rows, ["processes", "strategy", "evaluations", "search s", "speed-up",
                              "wall s (with start-up)", "same configs"], style="markdown"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data, seconds")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--generations", type=int, default=10)
    parser.add_argument("--eval_users", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--part", choices=("all", "epoch", "search"), default="all")
    args = parser.parse_args()
    if args.device == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--device=gpu: no CUDA device here")
    if args.quick:
        args.k, args.generations, args.eval_users = 3, 2, 20
    sys.argv = sys.argv[:1]  # RecBole's Config would read our flags as config keys
    # RecBole's pandas FutureWarnings, once per process, would bury the tables; the spawned
    # processes inherit the filter through the environment.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    with quiet_console(), tempfile.TemporaryDirectory(prefix="fofa-ddp-bench-") as workdir:
        if args.quick:  # a smoke test leaves nothing behind (RecBole writes into the cwd)
            os.chdir(workdir)
        dataset, config_files, settings = setup(args, workdir)
        if args.part in ("all", "epoch"):
            epoch_table(args, dataset, config_files, settings)
        if args.part in ("all", "search"):
            search_table(args, dataset, config_files, settings)


if __name__ == "__main__":
    main()
