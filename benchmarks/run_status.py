"""Where a benchmark stands: its finished runs and the runs cut mid-training, from its folder.

Usage: python benchmarks/run_status.py [OUTPUT]   (default benchmarks/results/verdict)

Reads the output folder only (recbole_fofa.benchmark.status): tuning runs (valid NDCG@10),
test runs (valid and test), and each progress file's stage, validations so far and best valid
score so far. Resume the benchmark with the command that started it.
"""

import sys

from recbole_fofa.benchmark.status import print_folder_table, run_status


def main(argv):
    print_folder_table(argv, run_status, "no runs yet")


if __name__ == "__main__":
    main(sys.argv[1:])
