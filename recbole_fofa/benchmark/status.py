"""Where a benchmark that spans sessions stands: its finished runs and its runs cut mid-training,
read from the output folder alone (nothing is trained or evaluated).

``python benchmarks/run_status.py <output>`` prints it as a table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

from recbole_fofa.table import format_table
from recbole_fofa.trainer import progress

__all__ = ["run_status", "finished_runs", "file_stem", "checkpoint_path", "run_checkpoint",
           "print_folder_table", "VERDICT_FOLDER"]

#: where the verdict benchmark keeps its runs (benchmarks/verdict.sh), from the repository root:
#: the folder the scripts in benchmarks/ read when given none
VERDICT_FOLDER = "benchmarks/results/verdict"


def file_stem(label: str, seed: int) -> str:
    """The file name stem of a run: ``<label>__seed<seed>`` (its run file, lock and checkpoint)."""
    return f"{label}__seed{seed}"


def checkpoint_path(output_dir, stem: str, key: str) -> Path:
    """Where the run ``stem`` with settings key ``key`` keeps its best checkpoint."""
    return Path(output_dir) / "saved" / f"{stem}-{key}.pth"


def run_checkpoint(output_dir, record) -> Path:
    """The best checkpoint of a finished test run (a record of :func:`finished_runs`); a
    FileNotFoundError when the benchmark did not keep it."""
    path = checkpoint_path(output_dir, file_stem(record["label"], record["seed"]),
                           record["settings_key"])
    if not path.is_file():
        raise FileNotFoundError(f"{record['label']} seed {record['seed']}: no checkpoint at "
                                f"{path} (the benchmark keeps them in <output>/saved/)")
    return path


def _finished(path: Path, kind: str) -> Dict[str, Any]:
    record = json.loads(path.read_text())
    training = record.get("training") or []
    metric = (record.get("valid") or {}).get("ndcg@10")
    return {
        "run": path.stem, "kind": kind, "status": record.get("status"),
        "valid ndcg@10": metric, "test ndcg@10": (record.get("test") or {}).get("ndcg@10"),
        "epochs": "; ".join(f"{e['stage']} {e['epochs']}" for e in training),
        "best epoch": "; ".join(f"{e['stage']} {e['best_epoch']}" for e in training),
        "stopped early": "; ".join(str(e["stopped_early"]) for e in training),
        "device": record.get("device", ""),
    }


def _in_progress(path: Path) -> Dict[str, Any]:
    state = progress.read(path)
    scores = state["valid_scores"]
    stage = scores[-1][0] if scores else ""
    in_stage = [score for name, score in scores if name == stage]
    finished = {end[0]: end for end in state["stage_ends"]}
    return {
        "run": path.stem.rsplit("-", 1)[0], "kind": "in progress",
        "status": f"stage {stage}: {len(in_stage)} validations",
        "valid ndcg@10": max(in_stage) if in_stage else None, "test ndcg@10": None,
        "epochs": "; ".join(f"{name} {end[1]}" for name, end in finished.items()),
        "best epoch": "; ".join(f"{name} {end[3]}" for name, end in finished.items()),
        "stopped early": "", "device": "",
    }


def _folder(output_dir) -> Path:
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise ValueError(f"{output_dir}: no benchmark output folder there")
    return output_dir


def finished_runs(output_dir) -> List[Dict[str, Any]]:
    """The finished test runs' files (``runs/*.json``) of the benchmark in ``output_dir``: what
    its tables and comparisons are made of."""
    paths = sorted(_folder(output_dir).glob("runs/*.json"))
    return [json.loads(path.read_text()) for path in paths]


def run_status(output_dir) -> List[Dict[str, Any]]:
    """One row per run of the benchmark in ``output_dir``: finished tuning and test runs (their
    best valid NDCG@10, test NDCG@10 for test runs, epochs, best epoch and how each stage
    ended) and runs cut mid-training (the stage they are in, validations so far in it and the
    best valid score so far; the finished stages)."""
    output_dir = _folder(output_dir)
    rows = [_finished(path, "tuning") for path in sorted(output_dir.glob("tuning/runs/*.json"))]
    rows += [_finished(path, "test") for path in sorted(output_dir.glob("runs/*.json"))]
    rows += [_in_progress(path) for path in sorted(output_dir.glob("progress/*.pt"))]
    return rows


def print_folder_table(argv, rows_of, empty, columns=None):
    """The main of a script that tabulates a benchmark folder: ``argv[0]`` (default
    :data:`VERDICT_FOLDER`), ``rows_of(folder)`` printed as a markdown table, or
    ``"<folder>: <empty>"`` when there are no rows. Returns the rows."""
    folder = argv[0] if argv else VERDICT_FOLDER
    rows = rows_of(folder)
    print(format_table(rows, columns, style="markdown") if rows else f"{folder}: {empty}")
    return rows
