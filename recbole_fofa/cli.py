"""``run_recbole_fofa``: RecBole's run_recbole.py flags; other ``--key=value`` flags are config."""

import argparse

from recbole_fofa.quick_start import comparison_table, results_table, run


def build_parser():
    parser = argparse.ArgumentParser(
        prog="run_recbole_fofa",
        description="Train and test a recbole_fofa or RecBole model. Any other --key=value flag "
        "becomes a RecBole config entry (e.g. --epochs=5 --hidden_size=32).",
    )
    parser.add_argument("--model", "-m", type=str, default="ForwardOFA",
                        help="model name, or several separated by commas to compare them")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated files")
    parser.add_argument("--nproc", type=int, default=1, help="number of processes (GPUs)")
    parser.add_argument("--ip", type=str, default="localhost", help="ip of the master node")
    parser.add_argument("--port", type=str, default="5678", help="port of the master node")
    parser.add_argument("--world_size", type=int, default=-1, help="total number of jobs")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank offset")
    return parser


def main(argv=None):
    """Console entry point: run the models, print their metrics; returns the exit status 0."""
    run_models(argv)
    return 0


def run_models(argv=None):
    """Parse flags (unknown ones are left to RecBole's Config), run each model, print metrics.

    Returns ``{model: run_recbole_fofa result}``.
    """
    args, _ = build_parser().parse_known_args(argv)
    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    results = {}
    for model in [name.strip() for name in args.model.split(",") if name.strip()]:
        result = run(
            model,
            args.dataset,
            config_file_list=config_file_list,
            nproc=args.nproc,
            world_size=args.world_size,
            ip=args.ip,
            port=args.port,
            group_offset=args.group_offset,
        )
        if result is not None:
            results[model] = result
            print(f"\n{model} on {args.dataset}")
            print(results_table(result))
    if len(results) > 1:
        print(f"\ntest results on {args.dataset} (MACs per user; FLOPs = 2 x MACs)")
        print(comparison_table({name: r["test_result"] for name, r in results.items()}))
    return results
