"""The verdict tables in README.md and docs/benchmarks.md are ``benchmarks/verdict_goals.py``'s
output (``benchmarks/verdict_tables.py`` rewrites their computed cells for a new look): each row
must be what the stored runs (benchmarks/results/verdict/runs) give over the number of seeds the
row states, the first paired test seeds in ascending order (the order they ran). A typo, a row
left at an older look beside newer ones, or a run file changed after the docs were written fails
here."""

import csv
import os
import runpy

import pytest

from recbole_fofa.benchmark.report import PRIMARY, SEARCHED, BenchmarkReport, comparison_text
from recbole_fofa.benchmark.status import VERDICT_FOLDER, finished_runs

ROOT = os.path.join(os.path.dirname(__file__), "..")
TABLES = runpy.run_path(os.path.join(ROOT, "benchmarks", "verdict_tables.py"))
GOALS, _pair, _table = TABLES["GOALS"], TABLES["pair"], TABLES["table"]


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


VERDICT_TABLES = [TABLES["GOAL_TABLE"], TABLES["README_TABLE"]]


@pytest.mark.parametrize("path, header, column", VERDICT_TABLES,
                         ids=[t[0] for t in VERDICT_TABLES])
def test_verdict_table_is_what_the_stored_runs_give(records, path, header, column):
    _check_rows(records, path, _table(path, header), column)


def _check_rows(records, path, rows, column):
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
    _check_robustness(runs, records, _table(*TABLES["ROBUSTNESS_TABLE"][:2]))


def _check_robustness(runs, records, rows):
    assert len(rows) >= 10
    for row in rows:
        model, reference = _pair(row["comparison (test NDCG@10)"])
        _, seeds = GOALS["_look"](records, model, reference, 0.95)
        first = set(seeds[:int(row["seeds"])])
        computed = GOALS["robustness_rows"]([r for r in runs if r["seed"] in first])[0]
        want = next(cells for cells in GOALS["_shown"](computed)
                    if cells[:2] == [row["goal"], row["comparison (test NDCG@10)"]])
        assert list(row.values()) == [str(cell) for cell in want], row


@pytest.mark.slow
def test_verdict_tables_rewrites_every_table_to_an_earlier_look(runs, records):
    """benchmarks/verdict_tables.py over the pilot's test seeds alone: every row of the three
    tables then states 3 seeds and is what the stored runs give there, and the prose cells
    (the README's goal column) are kept."""
    pilot = [r for r in runs if r["seed"] <= max(GOALS["PILOT_SEEDS"])]
    texts = TABLES["rewritten"](pilot)
    for path, header, column in VERDICT_TABLES:
        rows = _table(path, header, texts[path][0])
        assert {row["seeds"] for row in rows} == {"3"}
        _check_rows(records, path, rows, column)
        assert texts[path][1], f"{path}: nothing changed"
    readme = _table(*TABLES["README_TABLE"][:2])
    rewritten = _table(*TABLES["README_TABLE"][:2], texts["README.md"][0])
    assert [list(r.values())[-1] for r in rewritten] == [list(r.values())[-1] for r in readme]
    robustness = _table(*TABLES["ROBUSTNESS_TABLE"][:2], texts["docs/benchmarks.md"][0])
    assert {row["seeds"] for row in robustness} == {"3"}
    _check_robustness(runs, records, robustness)


def test_stored_comparisons_are_at_the_readme_look():
    """The benchmark's own ``comparisons.csv`` beside the verdict's runs is at the look the README
    tabulates: every README row against SASRec-6 appears there, over the same seeds, with the
    same difference. A run of a subset of the models, or a look tabulated in the docs but not
    rewritten there, leaves it stale; that fails here."""
    with open(os.path.join(ROOT, VERDICT_FOLDER, "comparisons.csv"), encoding="utf-8") as file:
        stored = {(row["model"], row["reference"]): row for row in csv.DictReader(file)
                  if row["metric"] == PRIMARY}
    checked = 0
    for row in _table(*TABLES["README_TABLE"][:2]):
        model, reference = _pair(row[TABLES["README_TABLE"][2]])
        if reference != "SASRec-6":
            continue
        where = f"comparisons.csv: {model} - {reference}"
        assert (model, reference) in stored, where
        numbers = {key: float(stored[model, reference][key])
                   for key in ("mean_diff", "ci_low", "ci_high", "macs_ratio")}
        assert stored[model, reference]["n_seeds"] == row["seeds"], where
        assert comparison_text(dict(numbers, seeds_needed=0))["difference"] == (
            row["difference [95% CI]"]), where
        checked += 1
    assert checked >= 2


def test_docs_names_map_to_benchmark_labels():
    assert _pair("ForwardOFA - SASRec-3 (lr 0.004)") == ("ForwardOFA", "SASRec-3")
    adapt = GOALS["ADAPT"]
    assert _pair("adaptSASRec - the SASRec-6 at lr 0.002 it starts from") == (
        adapt, "SASRec-6@learning_rate=0.002")
    assert _pair("oracle - ForwardOFA") == ("ForwardOFA oracle", "ForwardOFA")
    assert _pair("adaptSASRec - its best fixed sub-network at its MACs") == (
        adapt, f"{adapt} {SEARCHED}")


def test_verdict_tables_names_what_it_cannot_find():
    with pytest.raises(ValueError, match="no markdown table whose header row starts with"):
        TABLES["table"]("README.md", "| no such header")
    with pytest.raises(ValueError, match="no stored test seed in common"):
        TABLES["_comparison"]([], "ForwardOFA", "SASRec-7")


def test_folder_command_covers_the_readme_models_at_the_look(runs):
    """The command verdict_tables prints for the folder's own output names every benchmark
    model of the README's table and the test seeds all of them finished up to the look."""
    pilot = [r for r in runs if r["seed"] <= max(GOALS["PILOT_SEEDS"])]
    command = TABLES["folder_command"](pilot)
    models = command.split('--model="')[1].split('"')[0].split(",")
    assert models[:2] == ["ForwardOFA", "SASRec-6"]
    assert {GOALS["ADAPT"], "SASRec-3", "SASRec-2", "SASRec-6@learning_rate=0.002"} <= set(models)
    assert not any(SEARCHED in m or m.endswith("oracle") for m in models)
    assert command.endswith("--seeds=2020,2021,2022")
