"""``run_recbole_fofa``: RecBole's run_recbole.py flags; other ``--key=value`` flags are config."""

import argparse

from recbole_fofa.quick_start import results_table, run


def build_parser():
    parser = argparse.ArgumentParser(
        prog="run_recbole_fofa",
        description="Train and test a recbole_fofa or RecBole model. Any other --key=value flag "
        "becomes a RecBole config entry (e.g. --epochs=5 --hidden_size=32).",
    )
    parser.add_argument("--model", "-m", type=str, default="SASRec", help="model name")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated files")
    parser.add_argument("--nproc", type=int, default=1, help="number of processes (GPUs)")
    parser.add_argument("--ip", type=str, default="localhost", help="ip of the master node")
    parser.add_argument("--port", type=str, default="5678", help="port of the master node")
    parser.add_argument("--world_size", type=int, default=-1, help="total number of jobs")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank offset")
    return parser


def main(argv=None):
    """Parse flags (unknown ones are left to RecBole's Config), run, print the metrics table."""
    args, _ = build_parser().parse_known_args(argv)
    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    result = run(
        args.model,
        args.dataset,
        config_file_list=config_file_list,
        nproc=args.nproc,
        world_size=args.world_size,
        ip=args.ip,
        port=args.port,
        group_offset=args.group_offset,
    )
    if result is not None:
        print(f"\n{args.model} on {args.dataset}")
        print(results_table(result))
    return result
