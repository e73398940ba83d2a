#!/bin/bash
# The verdict benchmark (issue 19; docs/benchmarks.md, "The verdict benchmark"): the one place
# its models, protocol and tuning grid are written. Run from anywhere; extra flags are passed on
# (e.g. --jobs=2; a later --model=SASRec-6,ForwardOFA tabulates those two models alone). It
# resumes the stored runs in benchmarks/results/verdict and, once every run has finished, prints
# the table and the comparisons and writes comparisons.csv; on finished runs it trains nothing.
# PY: the Python that has recbole_fofa (default python3).
#
# Protocol changes, each for every model (docs/benchmarks.md, "The verdict benchmark"): the
# learning-rate grid was [0.001, 0.002, 0.004] until SASRec-6's tuning chose its top; it was then
# extended to 0.008 (valid scores of the tuning seed only, before any test seed had finished).
# Tuning then ran on seed 2023 alone, and SASRec-6 at its choice (0.004) stalled (valid NDCG@10
# near 0.02-0.03 from the first epochs) on test seed 2021 (early-stopped at its best valid, 0.027, against 0.075 on seed 2020)
# and was on the way there on 2022 (0.025 after 6 epochs): one tuning seed cannot see an
# unstable learning rate, so tuning takes two seeds, 2023 and 2024, chosen by the mean valid
# score. The tuning seeds are written out so that more test seeds later (skip
# 2023 and 2024: --seeds=2020,2021,2022,2025,...) leave them as they are.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
exec ${PY:-python3} -m recbole_fofa --benchmark \
  --model=SASRec-6,ForwardOFA,ForwardOFA-fromSASRec,SASRec-3,SASRec-2 --seeds=3 \
  --dataset=ml-100k --config_files="$ROOT/properties/main.yaml $ROOT/properties/converge.yaml" \
  --routing --tune="{learning_rate: [0.001, 0.002, 0.004, 0.008]}" --tuning_seeds=2023,2024 \
  --output="$ROOT/benchmarks/results/verdict" "$@"
