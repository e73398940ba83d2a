"""Rewrite the computed cells of the verdict tables in README.md and docs/benchmarks.md from the
stored runs (trains nothing), for the next look.

Usage: python benchmarks/verdict_tables.py [--through=SEED] [--write]

Every cell that ``benchmarks/verdict_goals.py`` computes is rewritten over the stored test runs
whose seed is at most SEED (default: every stored run): the docs' goal table (MACs ratio, seeds,
difference, verdict, per seed, users, goal at 95%, claim), its robustness table (whole), and the
README table's MACs ratio, seeds, difference and verdict. The prose cells (the README's goal
column, the docs' first column and the switch row's decision) and the text around the tables are
left to the writer. Without ``--write`` it prints the rows that would change. At its end it
prints the command (:func:`folder_command`) that brings the verdict folder's own
``comparisons.csv`` and ``benchmark.md`` to the same look. The names the docs
give the models (:func:`pair`) are the ones ``tests/test_verdict_docs.py`` checks the tables
with, row by row at the number of seeds each states.
"""

import os
import re
import runpy
import sys

from recbole_fofa.benchmark.report import ORACLE, SEARCHED, BenchmarkReport
from recbole_fofa.benchmark.status import VERDICT_FOLDER, finished_runs

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
GOALS = runpy.run_path(os.path.join(ROOT, "benchmarks", "verdict_goals.py"))
#: how the docs name a model, and its benchmark label
NAMES = {**{name: label for label, name in GOALS["SHOWN"].items()},
         "the SASRec-6 at lr 0.002 it starts from": "SASRec-6 at lr 0.002"}
#: (file, first cells of the table's header row, its comparison column)
GOAL_TABLE = ("docs/benchmarks.md", "| goal (bound", "comparison, test NDCG@10")
README_TABLE = ("README.md", "| comparison (test NDCG@10)", "comparison (test NDCG@10)")
ROBUSTNESS_TABLE = ("docs/benchmarks.md", "| goal | comparison (test NDCG@10) | seeds | low end",
                    "comparison (test NDCG@10)")


def _label(name):
    name = re.sub(r" \(.*\)$", "", name.strip())
    name = NAMES.get(name, name)
    return re.sub(r" at lr (\S+)$", r"@learning_rate=\1", name)


def pair(comparison):
    """(model, reference) labels of a docs comparison such as "ForwardOFA - SASRec-3 (lr
    0.004)", "oracle - ForwardOFA" or "adaptSASRec - its best fixed sub-network at its MACs"."""
    model, reference = comparison.split(" - ", 1)
    if model.strip() == ORACLE:
        return f"{_label(reference)} {ORACLE}", _label(reference)
    model = _label(model)
    if reference.startswith("its best fixed sub-network") or reference.endswith(SEARCHED):
        return model, f"{model} {SEARCHED}"
    return model, _label(reference)


def _cells(line):
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _row(cells):
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def table_span(lines, header):
    """(index of the header row, index after the last row) of the markdown table in ``lines``
    whose header row starts with ``header``."""
    start = next((i for i, line in enumerate(lines) if line.startswith(header)), None)
    if start is None:
        raise ValueError(f"no markdown table whose header row starts with {header!r}")
    end = start + 2
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return start, end


def table(path, header, text=None):
    """The rows (dicts by column) of the markdown table in ``path`` (from the repository root;
    or in ``text``, that file's text) whose header row starts with ``header``."""
    if text is None:
        with open(os.path.join(ROOT, path), encoding="utf-8") as file:
            text = file.read()
    lines = text.splitlines()
    start, end = table_span(lines, header)
    columns = _cells(lines[start])
    return [dict(zip(columns, _cells(line))) for line in lines[start + 2:end]]


def _comparison(records, model, reference):
    row = GOALS["_compare"](records, model, reference)
    if row is None:
        raise ValueError(f"{model} - {reference}: the two models have no stored test seed in "
                         "common (a docs name that maps to no benchmark label?)")
    n_seeds, difference, verdict, per_seed, users, macs, _ = GOALS["_cells"](row)
    return {"MACs ratio": macs, "seeds": n_seeds, "difference [95% CI]": difference,
            "verdict": verdict, "per seed": per_seed, "users p < 0.05": users}


def _rewrite(lines, header, cells_of):
    """Rewrite each row of the table under ``header`` with ``cells_of(row as a dict)`` (a dict of
    the columns to change); the rows that changed, as (old, new) lines."""
    start, end = table_span(lines, header)
    columns = _cells(lines[start])
    changed = []
    for i in range(start + 2, end):
        row = dict(zip(columns, _cells(lines[i])))
        row.update(cells_of(row))
        new = _row(row.values())
        if new != lines[i]:
            changed.append((lines[i], new))
        lines[i] = new
    return changed


def rewritten(runs):
    """{path: (its new text, the rows that changed)} with every computed cell of the verdict
    tables over ``runs``."""
    records = runs + BenchmarkReport(runs, {}).routing_records()
    goal_rows = {}
    for row in GOALS["goal_rows"](runs):
        goal_rows.setdefault(tuple(row[1].split(" - ", 1)), []).append(row)
    seen = {}

    def goal_cells(row):
        model, reference = pair(row[GOAL_TABLE[2]])
        k = seen[model, reference] = seen.get((model, reference), -1) + 1
        rows = goal_rows.get((model, reference), [])
        if k >= len(rows):  # not a goal row: the comparison alone; prose cells stay
            return _comparison(records, model, reference)
        _, _, n_seeds, difference, verdict, per_seed, users, macs, _, _, result, claim = rows[k]
        return {"MACs ratio": macs, "seeds": n_seeds, "difference [95% CI]": difference,
                "verdict": verdict, "per seed": per_seed, "users p < 0.05": users,
                "goal at 95%": result, next(c for c in row if c.startswith("claim")): claim}

    def readme_cells(row):
        computed = _comparison(records, *pair(row[README_TABLE[2]]))
        return {column: computed[column] for column in
                ("MACs ratio", "seeds", "difference [95% CI]", "verdict")}

    texts = {}
    for (path, header, _), cells_of in ((GOAL_TABLE, goal_cells), (README_TABLE, readme_cells)):
        with open(os.path.join(ROOT, path), encoding="utf-8") as file:
            lines = file.read().split("\n")
        changed = _rewrite(lines, header, cells_of)
        if path == ROBUSTNESS_TABLE[0]:
            start, end = table_span(lines, ROBUSTNESS_TABLE[1])
            new = [_row(row) for row in GOALS["_shown"](GOALS["robustness_rows"](runs)[0])]
            changed += [(old, row) for old, row in zip(lines[start + 2:end], new) if old != row]
            lines[start + 2:end] = new
        texts[path] = ("\n".join(lines), changed)
    return texts


def folder_command(runs):
    """The command that rewrites the verdict folder's own output (``benchmark.md``,
    ``comparisons.csv``; the tests check it against the README) at this look: the benchmark over
    the models of the README's table and the test seeds every one of them finished in ``runs``.
    It trains nothing; its per-user tests took 16 minutes on 2 cores with one run beside it."""
    labels = {r["label"] for r in runs}
    models = []
    for row in table(*README_TABLE[:2]):
        models += [label for label in pair(row[README_TABLE[2]])
                   if label in labels and label not in models]
    seeds = set.intersection(*({r["seed"] for r in runs if r["label"] == m} for m in models))
    return (f"bash benchmarks/verdict.sh --model=\"{','.join(models)}\" "
            f"--seeds={','.join(map(str, sorted(seeds)))}")


def main(argv):
    through = next((int(a.partition("=")[2]) for a in argv if a.startswith("--through=")), None)
    unknown = [a for a in argv if a != "--write" and not a.startswith("--through=")]
    if unknown:
        sys.exit(f"unknown arguments {unknown}: allowed --through=SEED and --write")
    runs = [r for r in finished_runs(os.path.join(ROOT, VERDICT_FOLDER))
            if through is None or r["seed"] <= through]
    for path, (text, changed) in rewritten(runs).items():
        for old, new in changed:
            print(f"{path}:\n- {old}\n+ {new}\n")
        if "--write" in argv and changed:
            with open(os.path.join(ROOT, path), "w", encoding="utf-8") as file:
                file.write(text)
    print("written" if "--write" in argv else "dry run: --write rewrites the files")
    print(f"the folder's benchmark.md and comparisons.csv at this look:\n  {folder_command(runs)}")


if __name__ == "__main__":
    main(sys.argv[1:])
