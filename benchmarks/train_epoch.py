"""Training cost per epoch: ForwardOFA's two stages against SASRec at the supernet's depth.

Usage: python benchmarks/train_epoch.py [--config_files FILE] [--threads N] [--steps N]
           [--style markdown] [--key=value ...]

Builds ForwardOFA and SASRec-``n_blocks`` (and SASRec-2) at the sizes of ``--config_files``
(properties/main.yaml; ``--key=value`` flags override it, e.g. ``--supernet_full_epochs=1``) on
RecBole's bundled ml-100k and times one training epoch (the trainer's ``epoch_times``) over the
first ``--steps`` training batches (all of them by default) for: ForwardOFA's supernet stage
with sub-networks (the sandwich), its supernet stage on the full network alone
(``supernet_full_epochs``), its stage 2 (controller + mapper), and the SASRec models. Trains from
the initial weights, so the numbers are costs, not quality. Ratios are to SASRec-``n_blocks``:
the issue's goals are the full network alone <= 1.05x and stage 2 <= 1.3x.
Only comparable within one run on an otherwise idle machine.
"""

import argparse
import sys
from itertools import islice
from pathlib import Path

import torch

from recbole_fofa.cli import config_flags
from recbole_fofa.quick_start import prepare, quiet_console
from recbole_fofa.table import format_table
from recbole_fofa.utils import get_trainer

ROOT = Path(__file__).resolve().parents[1]


class FirstBatches:
    """The first ``steps`` batches of a RecBole training loader (all when ``steps`` is None),
    with the loader's length, as RecBole's training loop reads it."""

    def __init__(self, loader, steps):
        self.loader, self.steps = loader, steps

    def __iter__(self):
        return iter(islice(self.loader, self.steps))

    def __len__(self):
        return len(self.loader) if self.steps is None else min(self.steps, len(self.loader))

    def __getattr__(self, name):
        return getattr(self.loader, name)


def epoch_seconds(name, config_files, config_dict, steps=None):
    """Seconds of one training epoch of ``name`` (the trainer's ``epoch_times``; ForwardOFA
    trains the stage its ``supernet_epochs`` / ``epochs`` give), and its steps."""
    config, model, (train, _, _) = prepare(name, "ml-100k", config_file_list=config_files,
                                           config_dict=config_dict)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    batches = FirstBatches(train, steps)
    trainer.fit(batches, None, saved=False, show_progress=False)  # no validation: epochs only
    return trainer.epoch_times[-1].seconds, len(batches)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_files", default=str(ROOT / "properties" / "main.yaml"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training batches per timed epoch (default: all)")
    parser.add_argument("--style", default="text", choices=["text", "markdown"])
    args, extra = parser.parse_known_args()
    try:
        overrides = config_flags(extra)  # read as run_recbole_fofa reads --key=value flags
    except ValueError as error:
        parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.argv = sys.argv[:1]  # RecBole's Config parses sys.argv itself
    files = [args.config_files]
    base = {"state": "ERROR", "show_progress": False, "saved": False, **overrides}
    with quiet_console():
        _, probe, _ = prepare("ForwardOFA", "ml-100k", config_file_list=files, config_dict=base)
        depth = probe.n_blocks
        stage1 = {**base, "supernet_epochs": 1, "epochs": 0}
        runs = [
            ("ForwardOFA supernet (sandwich)", "ForwardOFA",
             {**stage1, "supernet_full_epochs": 0}),
            ("ForwardOFA supernet (full only)", "ForwardOFA",
             {**stage1, "supernet_full_epochs": 1}),
            ("ForwardOFA stage 2", "ForwardOFA", {**base, "supernet_epochs": 0, "epochs": 1}),
            (f"SASRec-{depth}", "SASRec", {**base, "n_layers": depth, "epochs": 1}),
            ("SASRec-2", "SASRec", {**base, "n_layers": 2, "epochs": 1}),
        ]
        rows = []
        for label, name, settings in runs:
            seconds, steps = epoch_seconds(name, files, settings, args.steps)
            rows.append({"run": label, "steps": steps, "epoch s": seconds})
    reference = next(r["epoch s"] for r in rows if r["run"] == f"SASRec-{depth}")
    for row in rows:
        row[f"x SASRec-{depth}"] = row["epoch s"] / reference
    print(f"One training epoch on ml-100k ({args.config_files}, torch threads "
          f"{torch.get_num_threads()})")
    print(format_table(rows, ["run", "steps", "epoch s", f"x SASRec-{depth}"],
                       style=args.style))


if __name__ == "__main__":
    main()
