"""``run_recbole_fofa``: RecBole's run_recbole.py flags; other ``--key=value`` flags are config.

``--search --checkpoint=PATH`` runs the subnet search on a saved ForwardOFA checkpoint instead of
training; ``--search_budgets="[0.3, 0.6]"`` and the other search keys are read from the flags.
"""

import argparse
import ast

from recbole_fofa.quick_start import comparison_table, results_table, run, searching_trainer


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
    parser.add_argument("--search", action="store_true",
                        help="search sub-networks of a saved ForwardOFA (--checkpoint) for "
                        "--search_budgets instead of training (docs/search.md)")
    parser.add_argument("--checkpoint", type=str, default=None,
                        help="with --search: the saved model file (saved/ForwardOFA-*.pth)")
    return parser


def main(argv=None):
    """Console entry point: run the models (or the search), print the results; exit status 0."""
    args, rest = build_parser().parse_known_args(argv)
    if args.search or args.checkpoint is not None:
        run_search(args, rest)
    else:
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


def config_flags(flags):
    """``{key: value}`` of ``--key=value`` flags, values read as RecBole reads command-line
    values (Python literals: numbers, lists, None, True/False; anything else a string)."""
    out = {}
    for flag in flags:
        name, sep, text = flag[2:].partition("=") if flag.startswith("--") else ("", "", "")
        if not sep or not name:
            raise ValueError(f"unrecognised argument {flag!r}: config flags are --key=value")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = {"true": True, "false": False}.get(text.lower(), text)
        if name in out and out[name] != value:
            raise ValueError(f"config flag --{name} is given twice with different values")
        out[name] = value
    return out


def run_search(args, rest):
    """``--search --checkpoint=PATH [--search_budgets=[...] ...]``: search, print the table and
    the JSON path; returns the ``SearchResult``."""
    if not args.search:
        raise SystemExit("run_recbole_fofa: --checkpoint is only read with --search")
    if not args.checkpoint:
        raise SystemExit("run_recbole_fofa: --search needs --checkpoint=PATH (a saved "
                         "ForwardOFA model file)")
    from recbole_fofa.trainer.trainer import search_table

    trainer, valid_data, test_data = searching_trainer(args.checkpoint, config_flags(rest))
    result = trainer.search(valid_data, test_data)
    print(f"\nsubnet search ({result.strategy}, {result.space} space) of {args.checkpoint}")
    print(search_table(result, trainer.config["search_metric"]))
    print(f"written to {trainer.search_result_file}")
    return result
