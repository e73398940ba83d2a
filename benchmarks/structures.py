"""The structures the controller gives the test users, per stored routed run (trains nothing).

Usage: python benchmarks/structures.py [OUTPUT]   (default benchmarks/results/verdict)

Goal 3 of the verdict (per-user structure pays) compares the controller with the best fixed
sub-network at its MACs; this says why the difference is what it is. For every finished test run
with routing results, it reloads the run's best checkpoint (``<output>/saved``), runs the
controller on every test user and prints how many distinct structures the users get, their
entropy, the most common structure (block 1 first) and its share, the mean kept blocks, beside
the run's test NDCG@10 and the fixed sub-network the search chose at the run's own MACs.
"""

import sys

from recbole_fofa.analysis._common import structure_stats, user_structures
from recbole_fofa.benchmark.status import finished_runs, print_folder_table, run_checkpoint
from recbole_fofa.quick_start import load_data_and_model, quiet_console

COLUMNS = ["run", "test ndcg@10", "users", "structures", "entropy (bits)", "top structure",
           "top share", "mean blocks", "search@own", "search@own ndcg@10"]


def _key_bits(key: str) -> str:
    """A search key (``64x2|-|-|-|64x2|64x2``) as kept-block bits (``100011``)."""
    return "".join("0" if block == "-" else "1" for block in key.split("|"))


def structure_rows(folder):
    """One row per finished routed run of the benchmark in ``folder`` (see :data:`COLUMNS`)."""
    rows = []
    for record in finished_runs(folder):
        routing = record.get("routing")
        if record.get("status") != "ok" or not routing:
            continue
        with quiet_console():
            loaded = load_data_and_model(str(run_checkpoint(folder, record)))
        model, test_data = loaded[1], loaded[5]
        found = structure_stats(user_structures(model, test_data))
        searched = routing["searched_at_own_macs"]
        rows.append([f"{record['label']} seed {record['seed']}", record["test"]["ndcg@10"],
                     found["users"], found["distinct"], found["entropy"], found["top"],
                     found["top_share"], found["mean_blocks"], _key_bits(searched["config"]),
                     searched["test"]["ndcg@10"]])
    return rows


def main(argv):
    print_folder_table(argv, structure_rows, "no finished test run with routing results yet",
                       COLUMNS)


if __name__ == "__main__":
    main(sys.argv[1:])
