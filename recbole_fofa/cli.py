"""``run_recbole_fofa``: RecBole's run_recbole.py flags; other ``--key=value`` flags are config.

``--search --checkpoint=PATH`` runs the subnet search on a saved ForwardOFA checkpoint instead of
training; ``--search_budgets="[0.3, 0.6]"`` and the other search keys are read from the flags.
``--benchmark`` runs ForwardOFA, its ablations and RecBole's baselines over ``--seeds`` and writes a
table, a CSV and a PNG to ``--output`` (docs/benchmarks.md); ``--analysis=NAME`` runs one of the
paper's analyses (:data:`ANALYSES`).

Flag names and values are checked before anything runs: values are literals, never evaluated
(compat C17); an unknown ``--key`` is an error naming the closest known keys unless one of the
``--config_files`` sets it or lists it in ``extra_keys``; an error caused by the input prints as
one message without a traceback (``--debug`` shows it).
"""

import argparse
import importlib
import sys
from pathlib import Path

import yaml

from recbole_fofa import compat, distributed
from recbole_fofa.benchmark import workers
from recbole_fofa.benchmark.runner import run_benchmark
from recbole_fofa.config import resolve_config_files, shipped_configs
from recbole_fofa.experiment import quiet_console
from recbole_fofa.key_names import check_key_names
from recbole_fofa.quick_start import (
    comparison_table,
    export_checkpoint,
    results_table,
    run,
    search_worker,
    searching_trainer,
)
from recbole_fofa.registry import read_yaml
from recbole_fofa.table import format_table
from recbole_fofa.trainer.trainer import search_table

#: --analysis names -> "module:function" (imported when used)
ANALYSES = {
    "sparsity": "recbole_fofa.analysis.sparsity:run_sparsity",
    "blocks": "recbole_fofa.analysis.blocks:run_blocks",
    "conflict": "recbole_fofa.analysis.conflict:run_conflict",
    "protocol": "recbole_fofa.analysis.protocol:run_protocol",
    "mapper": "recbole_fofa.analysis.mapper:run_mapper",
}
DEFAULT_SEED = 2020  # RecBole's default `seed`
class DefaultDataset(str):
    """``--dataset``'s default: a ``str`` that tells it was not given (``--search`` then uses
    the checkpoint's dataset)."""


#: errors a user's input causes (bad values, names, files): one message, no traceback
USER_ERRORS = (ValueError, OSError, ImportError)


def build_parser():
    shipped = ", ".join(shipped_configs())
    parser = argparse.ArgumentParser(
        prog="run_recbole_fofa",
        allow_abbrev=False,  # `--seed=1` is a config key, not an abbreviation of --seeds
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train and test a recbole_fofa or RecBole model (default: ForwardOFA on "
        "ml-100k). Any other --key=value flag\nbecomes a RecBole config entry (e.g. --epochs=5 "
        "--hidden_size=32); an unknown key is an error.",
        epilog=f"shipped configs, usable by name from any folder: {shipped}\n  (e.g. "
        "--config_files=main.yaml, the README job; a file of that name in the working folder "
        "wins)\n--trust_checkpoint (= --trust_checkpoint=true): load checkpoints with full "
        "unpickling, which runs any code\n  pickled into them: only for files you trust "
        "(docs/usage.md, \"Checkpoints\")\n--verbose (= --verbose=true): the console also "
        "shows the config, dataset and model dumps and library\n  warnings (always in the log "
        "file under log/)\ndocs: docs/usage.md",
    )
    parser.add_argument("--model", "-m", type=str, default=None,
                        help="model name, or several separated by commas to compare them "
                        "(default ForwardOFA; with --benchmark: ForwardOFA, its ablations and "
                        "RecBole's sequential baselines, or labels such as SASRec-6)")
    # no type=: argparse would turn the default into a plain str (its identity type keeps it)
    parser.add_argument("--dataset", "-d", default=DefaultDataset("ml-100k"),
                        help="dataset name (default ml-100k: RecBole's bundled copy, unless "
                        "data_path holds one); with --search: the checkpoint's own dataset "
                        "(the default there; another name is an error)")
    parser.add_argument("--config_files", type=str, default=None,
                        help="space-separated YAML files; a shipped config's name (see below) "
                        "works from any folder (default: none, the YAML defaults)")
    parser.add_argument("--nproc", type=int, default=1,
                        help="processes on this machine: DDP training (one per GPU, or gloo "
                        "processes on CPUs; docs/distributed.md); with --search, processes "
                        "that share each generation's evaluations")
    parser.add_argument("--ip", type=str, default="localhost", help="ip of the master node")
    parser.add_argument("--port", type=str, default="5678", help="port of the master node")
    parser.add_argument("--world_size", type=int, default=-1, help="total number of jobs")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank offset")
    parser.add_argument("--search", action="store_true",
                        help="search sub-networks of a saved ForwardOFA (--checkpoint) for "
                        "--search_budgets instead of training (docs/search.md)")
    parser.add_argument("--checkpoint", type=str, default=None,
                        help="with --search or --export: the saved model file "
                        "(saved/ForwardOFA-*.pth)")
    parser.add_argument("--export", action="store_true",
                        help="export the searched sub-network of each --export_budgets of a "
                        "saved ForwardOFA (--checkpoint) as on-device graphs and manifest.json "
                        "to --output (default fofa-export/; docs/device.md; needs the `device` "
                        "extra)")
    parser.add_argument("--export_budgets", type=str, default=None,
                        help="with --export: the tiers' budgets, e.g. \"[0.25, 0.5, 1.0]\" "
                        "(fractions or \"<n> MACs\"; default: the checkpoint's search_budgets)")
    parser.add_argument("--export_format", type=str, default="onnx",
                        choices=("onnx", "executorch"),
                        help="with --export: onnx (default) or executorch (.pte, needs the "
                        "`executorch` extra)")
    parser.add_argument("--benchmark", action="store_true",
                        help="run the models over --seeds and write a table, CSV and PNG to "
                        "--output (docs/benchmarks.md)")
    parser.add_argument("--analysis", type=str, default=None, choices=sorted(ANALYSES),
                        help="run one of the paper's analyses or the cloud-device protocol "
                        "simulation and write its table and PNG to --output")
    parser.add_argument("--seeds", type=str, default=None,
                        help="with --benchmark/--analysis: a count N (seeds seed, seed+1, ...) "
                        "or a comma-separated list; one seed is a list with a comma: 2031, "
                        "(default: 3 for --benchmark, 1 otherwise)")
    parser.add_argument("--output", type=str, default=None,
                        help="with --benchmark/--analysis/--export: the output folder "
                        "(default fofa-benchmark/, fofa-analysis/ or fofa-export/)")
    parser.add_argument("--routing", action="store_true",
                        help="with --benchmark: the ForwardOFA runs also score the best fixed "
                        "sub-network at their own MACs and the per-user routing oracle (each "
                        "user's best sub-network on valid, scored on test), compared in the "
                        "report; two evaluations per sub-network of the search space")
    parser.add_argument("--reference", type=str, default=None,
                        help="with --benchmark: the model every other one is compared with "
                        "(paired differences over seeds with 95%% CIs, per-user tests, "
                        "comparisons.csv; default SASRec-<n_blocks> when it runs)")
    parser.add_argument("--tune", type=str, default=None,
                        help="with --benchmark: a grid every model is tuned on before its test "
                        "runs, e.g. \"{learning_rate: [0.001, 0.002]}\" (Model.key applies to "
                        "one model); chosen by mean valid score over --tuning_seeds")
    parser.add_argument("--tuning_seeds", type=str, default=None,
                        help="with --tune: the tuning seeds (a count N after the test seeds, or "
                        "a comma-separated list; never a test seed; default 1)")
    parser.add_argument("--jobs", type=str, default=None,
                        help="with --benchmark: run it in N processes that share the runs (the "
                        "cores split between them; default 1); starting the same command N "
                        "times does the same")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of its message alone")
    return parser


def main(argv=None):
    """Console entry point: run the models (or the search), print the results; exit status 0.

    An error of the user's input (:data:`USER_ERRORS`) exits with its message alone
    (``SystemExit``), unless ``--debug``."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        return _main(parser, args, rest, argv)
    except USER_ERRORS as err:
        if args.debug:
            raise
        raise SystemExit(f"run_recbole_fofa: error: {err}\n(--debug shows the traceback)") from err
    except KeyboardInterrupt:  # Ctrl-C: distributed workers are already stopped
        if args.debug:
            raise
        print("run_recbole_fofa: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def check_flags(parser, args, rest):
    """The config flags ``rest`` as ``{key: value}``, after the unknown-key check (declared:
    the keys the config files set, and ``extra_keys``); resolves ``args.config_files``
    (``args.config_file_list``), saying when a shipped config is used."""
    names = args.config_files.split() if args.config_files else []
    args.config_file_list = resolve_config_files(names) or None
    for name, path in zip(names, args.config_file_list or ()):
        if name != path:
            print(f"run_recbole_fofa: --config_files: {name} is the shipped {path}",
                  file=sys.stderr)
    flags = config_flags(rest)
    declared = set(flags.get("extra_keys") or ())
    for path in args.config_file_list or ():
        values = read_yaml(Path(path))
        declared |= set(values) | set(values.get("extra_keys") or ())
    own = [action.dest for action in parser._actions if action.dest != "help"]
    check_key_names(flags, strict=True, declared=declared, also_known=own, source="flag",
                    spell=lambda key: f"--{key}")
    return flags


def _main(parser, args, rest, argv):
    flags = check_flags(parser, args, rest)
    modes = [name for name, on in (("--benchmark", args.benchmark),
                                   ("--analysis", args.analysis is not None),
                                   ("--search", args.search),
                                   ("--export", args.export)) if on]
    if len(modes) > 1:
        raise SystemExit(f"run_recbole_fofa: {' and '.join(modes)} cannot be combined")
    if (args.reference is not None or args.routing or args.tune is not None
            or args.tuning_seeds is not None) and not args.benchmark:
        raise SystemExit("run_recbole_fofa: --reference, --routing, --tune and --tuning_seeds "
                         "are read with --benchmark only")
    if args.jobs is not None and not args.benchmark:
        raise SystemExit("run_recbole_fofa: --jobs is read with --benchmark only")
    if args.benchmark:
        run_benchmark_cli(args, rest, sys.argv[1:] if argv is None else argv)
    elif args.analysis is not None:
        run_analysis_cli(args, rest)
    elif args.export:
        run_export_cli(args, rest)
    elif args.search or args.checkpoint is not None:
        run_search(args, rest)
    else:
        if args.seeds is not None or args.output is not None:
            raise SystemExit("run_recbole_fofa: --seeds and --output are read with --benchmark "
                             "or --analysis only")
        run_models(args, flags)
    return 0


def parse_seeds(text, base, default_count):
    """``--seeds``: None -> ``default_count`` seeds from ``base``; ``"3"`` -> base, base+1,
    base+2; ``"7,11"`` -> [7, 11]."""
    if text is None:
        return [base + i for i in range(default_count)]
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not values or (len(values) == 1 and "," not in str(text) and values[0] < 1):
        raise SystemExit(f"run_recbole_fofa: --seeds={text!r}: give a count >= 1 (e.g. 3) or "
                         "a comma-separated list of integer seeds (e.g. 1,2,3)")
    if len(values) == 1 and "," not in str(text):
        return [base + i for i in range(values[0])]
    if len(set(values)) != len(values):
        raise SystemExit(f"run_recbole_fofa: --seeds={text!r} repeats a seed")
    return values


def _mode_inputs(args, rest, default_count):
    flags = config_flags(rest)
    seeds = parse_seeds(args.seeds, int(flags.get("seed", DEFAULT_SEED)), default_count)
    flags.pop("seed", None)
    return flags, seeds, args.config_file_list


def run_benchmark_cli(args, rest, argv=()):
    """``--benchmark``: every model over every seed (``--jobs``: in that many processes of
    ``argv``, the command's arguments); prints the table and writes the files."""
    flags, seeds, config_file_list = _mode_inputs(args, rest, 3)
    models = [m.strip() for m in args.model.split(",") if m.strip()] if args.model else None
    grid, tuning_seeds = tuning_inputs(args, seeds)
    jobs = workers.check_jobs(args.jobs or 1)
    output = args.output or "fofa-benchmark"
    with workers.helpers(argv, jobs, output):
        report = run_benchmark(args.dataset, config_file_list, flags, models, seeds, output,
                               reference=args.reference, routing=args.routing, tune=grid,
                               tuning_seeds=tuning_seeds)
    budget = report.settings["epoch_budget"]
    print(f"\n{args.dataset}: test metrics, mean ± std over seeds {seeds}; "
          f"{budget['total']} epochs each (ForwardOFA {budget['supernet_epochs']} supernet + "
          f"{budget['epochs']} controller/mapper); MACs per user (FLOPs = 2 x MACs)")
    if report.tuning_table():
        print(f"\ntuning (valid only, seeds {report.settings['tuning_seeds']}):")
        print(report.tuning_table())
    print(report.table())
    if report.search_points():
        print("\nForwardOFA at the search budgets: the searched fixed sub-network and the "
              "per-user controller")
        print(report.search_table())
    for error in report.errors():
        print(f"failed: {error}")
    if report.comparisons():
        print(f"\nPaired comparisons with {report.reference} (model - reference, 95% CI over "
              "seeds; users: per-seed paired permutation tests with p < 0.05)")
        print(report.comparison_table())
    written = [report.files[k] for k in ("md", "csv", "comparisons", "png") if k in report.files]
    print(f"\nwritten: {', '.join(written)}")
    return report


def tuning_inputs(args, seeds):
    """``(grid, tuning seeds)`` of ``--tune``/``--tuning_seeds`` (None, [] without --tune): a
    count N of tuning seeds means the N seeds after the largest test seed."""
    if args.tune is None:
        if args.tuning_seeds is not None:
            raise ValueError("--tuning_seeds is read with --tune only")
        return None, []
    grid = yaml.safe_load(args.tune)
    text = args.tuning_seeds or "1"
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--tuning_seeds={text!r}: give a count or comma-separated "
                         "integers") from None
    if "," not in text and len(values) == 1:
        values = [max(seeds) + 1 + i for i in range(values[0])]
    return grid, values


def run_analysis_cli(args, rest):
    """``--analysis=NAME``: one analysis; prints its table and findings, writes its files."""
    flags, seeds, config_file_list = _mode_inputs(args, rest, 1)
    module, function = ANALYSES[args.analysis].split(":")
    run_analysis = getattr(importlib.import_module(module), function)
    with quiet_console():
        result = run_analysis(args.dataset, config_file_list, flags,
                              output_dir=args.output or "fofa-analysis", seeds=seeds)
    print(f"\n{args.analysis} on {args.dataset} (seeds {seeds})")
    print(result.report())
    print(f"\nwritten: {', '.join(result.files.values())}")
    return result


def run_models(args, flags):
    """Run each model of ``args`` (config flags ``flags``, as checked by :func:`check_flags`),
    print its metrics. Returns ``{model: run_recbole_fofa result}``.
    """
    config_file_list = args.config_file_list
    results = {}
    for model in [name.strip() for name in (args.model or "ForwardOFA").split(",")
                  if name.strip()]:
        result = run(
            model,
            args.dataset,
            config_file_list=config_file_list,
            config_dict=dict(flags) or None,  # also when main() is given argv, not sys.argv
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
    values (Python literals: numbers, lists, None, True/False; anything else a string), never
    evaluated (:func:`recbole_fofa.compat.literal_config_value`). A bare ``--trust_checkpoint``
    or ``--verbose`` is ``--trust_checkpoint=True`` or ``--verbose=True``."""
    out = {}
    for flag in flags:
        if flag in ("--trust_checkpoint", "--verbose"):  # the bare config flags
            flag += "=True"
        name, sep, text = flag[2:].partition("=") if flag.startswith("--") else ("", "", "")
        if not sep or not name:
            raise ValueError(f"unrecognised argument {flag!r}: config flags are --key=value")
        value = compat.literal_config_value(text)
        if name in out and out[name] != value:
            raise ValueError(f"config flag --{name} is given twice with different values")
        out[name] = value
    return out


def run_export_cli(args, rest):
    """``--export --checkpoint=PATH [--export_budgets=[...]] [--output=DIR]``: search the tiers,
    export their graphs, print the tiers; returns the manifest."""
    if not args.checkpoint:
        raise SystemExit("run_recbole_fofa: --export needs --checkpoint=PATH (a saved "
                         "ForwardOFA model file)")
    budgets = None
    if args.export_budgets is not None:
        budgets = compat.literal_config_value(args.export_budgets)
        budgets = budgets if isinstance(budgets, list) else [budgets]
    output = args.output or "fofa-export"
    overrides = config_flags(rest)
    if not isinstance(args.dataset, DefaultDataset):  # as --search: the checkpoint's own
        overrides["dataset"] = args.dataset
    manifest = export_checkpoint(args.checkpoint, budgets, output, overrides, args.export_format)
    print(f"\n{manifest['format']} tiers of {args.checkpoint}")
    print(format_table(manifest["tiers"], ["budget", "config", "macs", "params", "graph",
                                           "graph_bytes", "scoring_graph_bytes"]))
    print(f"written: {Path(output) / 'manifest.json'}")
    return manifest


def run_search(args, rest):
    """``--search --checkpoint=PATH [--search_budgets=[...] ...]``: search, print the table and
    the JSON path; returns the ``SearchResult``."""
    if not args.search:
        raise SystemExit("run_recbole_fofa: --checkpoint is only read with --search")
    if not args.checkpoint:
        raise SystemExit("run_recbole_fofa: --search needs --checkpoint=PATH (a saved "
                         "ForwardOFA model file)")
    overrides = config_flags(rest)
    if not isinstance(args.dataset, DefaultDataset):  # must be the checkpoint's own dataset
        overrides["dataset"] = args.dataset
    if args.nproc > 1:  # candidates of each generation spread over --nproc processes
        result, path = distributed.spawn(search_worker, args.nproc,
                                         (args.checkpoint, None, overrides, None),
                                         ip=args.ip, port=args.port, backend="gloo")
    else:
        trainer, valid_data, test_data = searching_trainer(args.checkpoint, overrides)
        result, path = trainer.search(valid_data, test_data), trainer.search_result_file
    print(f"\nsubnet search ({result.strategy}, {result.space} space) of {args.checkpoint}")
    print(search_table(result, result.settings["metric"]))
    print(f"written to {path}")
    return result
