"""The verdict tables in README.md and docs/benchmarks.md are copied by hand from
``benchmarks/verdict_goals.py``'s output: each row must be what the stored runs
(benchmarks/results/verdict/runs) give over the number of seeds the row states, the first paired
test seeds in ascending order (the order they ran). A typo, a row left at an older look beside
newer ones, or a run file changed after the docs were written fails here."""

import os
import re
import runpy

import pytest

from recbole_fofa.benchmark.report import ORACLE, SEARCHED, BenchmarkReport, comparison_text
from recbole_fofa.benchmark.status import VERDICT_FOLDER, finished_runs

ROOT = os.path.join(os.path.dirname(__file__), "..")
GOALS = runpy.run_path(os.path.join(ROOT, "benchmarks", "verdict_goals.py"))
#: how the docs name a model, and its benchmark label
NAMES = {**{name: label for label, name in GOALS["SHOWN"].items()},
         "the SASRec-6 at lr 0.002 it starts from": "SASRec-6 at lr 0.002"}


def _label(name):
    name = re.sub(r" \(.*\)$", "", name.strip())
    name = NAMES.get(name, name)
    return re.sub(r" at lr (\S+)$", r"@learning_rate=\1", name)


def _pair(comparison):
    """(model, reference) labels of a docs comparison such as "ForwardOFA - SASRec-3 (lr
    0.004)", "oracle - ForwardOFA" or "adaptSASRec - its best fixed sub-network at its MACs"."""
    model, reference = comparison.split(" - ", 1)
    if model.strip() == ORACLE:
        return f"{_label(reference)} {ORACLE}", _label(reference)
    model = _label(model)
    if reference.startswith("its best fixed sub-network") or reference.endswith(SEARCHED):
        return model, f"{model} {SEARCHED}"
    return model, _label(reference)


def _table(path, header):
    """The rows (lists of cells) of the markdown table whose header row starts with
    ``header``."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as file:
        lines = file.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    columns = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(columns, (cell.strip() for cell in line.strip("|").split("|")))))
    return rows


@pytest.fixture(scope="module")
def runs():
    return finished_runs(os.path.join(ROOT, VERDICT_FOLDER))


@pytest.fixture(scope="module")
def records(runs):
    """The stored runs and what their routing scored (``<label> search@own``, ``oracle``)."""
    return runs + BenchmarkReport(runs, {}).routing_records()


def _computed(records, model, reference, n_seeds):
    """The comparison over the first ``n_seeds`` paired seeds, as the tables write it."""
    assert {model, reference} <= {r["label"] for r in records}, (model, reference)
    _, seeds = GOALS["_look"](records, model, reference, 0.95)
    assert len(seeds) >= n_seeds, f"{model} - {reference}: {len(seeds)} paired seeds stored"
    row, _ = GOALS["_look"](records, model, reference, 0.95, seeds[:n_seeds])
    per_seed = " ".join(item.partition(":")[2] for item in row["seed_diffs"].split(";"))
    return dict(comparison_text(row), per_seed=per_seed, verdict=row["verdict"])


TABLES = [("docs/benchmarks.md", "| goal (bound", "comparison, test NDCG@10"),
          ("README.md", "| comparison (test NDCG@10)", "comparison (test NDCG@10)")]


@pytest.mark.parametrize("path, header, column", TABLES, ids=[t[0] for t in TABLES])
def test_verdict_table_is_what_the_stored_runs_give(records, path, header, column):
    rows = _table(path, header)
    assert len(rows) >= 9
    for row in rows:
        model, reference = _pair(row[column])
        n_seeds = int(row["seeds"])
        want = _computed(records, model, reference, n_seeds)
        where = f"{path}: {row[column]} at {n_seeds} seeds"
        assert row["difference [95% CI]"] == want["difference"], where
        assert row["verdict"] == want["verdict"], where
        assert row["MACs ratio"] == want["macs_ratio"], where
        if "per seed" in row:
            assert row["per seed"] == want["per_seed"], where


def test_robustness_table_is_what_the_stored_runs_give(runs, records):
    """docs/benchmarks.md's table of the claims' two extra checks, row by row, against
    ``verdict_goals.robustness_rows`` over the seeds the row states."""
    rows = _table("docs/benchmarks.md", "| goal | comparison (test NDCG@10) | seeds | low end")
    assert len(rows) >= 10
    for row in rows:
        model, reference = _pair(row["comparison (test NDCG@10)"])
        _, seeds = GOALS["_look"](records, model, reference, 0.95)
        first = set(seeds[:int(row["seeds"])])
        computed = GOALS["robustness_rows"]([r for r in runs if r["seed"] in first])[0]
        want = next(cells for cells in GOALS["_shown"](computed)
                    if cells[:2] == [row["goal"], row["comparison (test NDCG@10)"]])
        assert list(row.values()) == [str(cell) for cell in want], row


def test_docs_names_map_to_benchmark_labels():
    assert _pair("ForwardOFA - SASRec-3 (lr 0.004)") == ("ForwardOFA", "SASRec-3")
    adapt = GOALS["ADAPT"]
    assert _pair("adaptSASRec - the SASRec-6 at lr 0.002 it starts from") == (
        adapt, "SASRec-6@learning_rate=0.002")
    assert _pair("oracle - ForwardOFA") == ("ForwardOFA oracle", "ForwardOFA")
    assert _pair("adaptSASRec - its best fixed sub-network at its MACs") == (
        adapt, f"{adapt} {SEARCHED}")
