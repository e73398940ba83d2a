#!/bin/bash
# The verdict benchmark (issue 19; docs/benchmarks.md, "The verdict benchmark"): the one place
# its models, protocol and tuning grid are written. Run from anywhere; extra flags are passed on
# (e.g. --jobs=2; a later --model=SASRec-6,ForwardOFA tabulates those two models alone). It
# resumes the stored runs in benchmarks/results/verdict and, once every run has finished, prints
# the table and the comparisons and writes comparisons.csv; on finished runs it trains nothing.
# PY: the Python that has recbole_fofa (default python3).
#
# The learning-rate grid was [0.001, 0.002, 0.004] until SASRec-6's tuning chose its top; it
# was then extended to 0.008 for every model, on the tuning seed's valid scores only, before any
# test seed had finished (docs/benchmarks.md says so).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
exec ${PY:-python3} -m recbole_fofa --benchmark \
  --model=SASRec-6,ForwardOFA,ForwardOFA-fromSASRec,SASRec-3,SASRec-2 --seeds=3 \
  --dataset=ml-100k --config_files="$ROOT/properties/main.yaml $ROOT/properties/converge.yaml" \
  --routing --tune="{learning_rate: [0.001, 0.002, 0.004, 0.008]}" --tuning_seeds=1 \
  --output="$ROOT/benchmarks/results/verdict" "$@"
