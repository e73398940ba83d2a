#!/bin/bash
# The verdict benchmark (issue 19; docs/benchmarks.md, "The verdict benchmark"): the one place
# its models, protocol and tuning grid are written. Run from anywhere; extra flags are passed on
# (e.g. --jobs=2; a later --model=SASRec-6,ForwardOFA tabulates those two models alone). It
# resumes the stored runs in benchmarks/results/verdict and, once every run has finished, prints
# the table and the comparisons and writes comparisons.csv; on finished runs it trains nothing.
# PY: the Python that has recbole_fofa (default python3).
#
# Its protocol changes so far (the grid extended to 0.008; two tuning seeds instead of one) and
# why: docs/benchmarks.md, "The verdict benchmark". The tuning seeds are written out so that more
# test seeds later leave them as they are (skip them: --seeds=2020,2021,2022,2025,...).
# The last four models are the stage-2 switches' pilot (added 2026-12-05, before any of them
# ran): not tuned, they take ForwardOFA's choice and start from its supernet of each seed.
# SASRec-6@learning_rate=0.002 (added 2026-12-05, after SASRec-6's tuned 0.004 stalled on two
# of three test seeds) is a sensitivity check, not tuned: SASRec-6 at the grid's runner-up on
# valid; benchmarks/verdict_goals.py repeats the goals against it.
# ForwardOFA-nomapper (added 2026-12-05, before any of its runs, after ForwardOFA's test seeds
# 2020 and 2021 showed its controller giving every test user the same structure,
# benchmarks/structures.py) is a diagnostic, never adopted: stage 2 without the mapper, from
# ForwardOFA's supernet of each seed, says whether the per-user parameters are what pays.
# ForwardOFA-adaptSASRec@... (added 2026-12-05 19:45, before any of its runs; its adoption rule,
# fromSASRec's, is in benchmarks/verdict_goals.py) skips stage 1: stage 2 alone on SASRec-6 at
# lr 0.002 of the same seed, the issue's "train SASRec-6, then make it device-adaptive from its
# checkpoint" at ForwardOFA's learning rate. It is untuned; to have its runs sooner:
#   bash benchmarks/verdict.sh --model="SASRec-6@learning_rate=0.002,$ADAPT" (ADAPT as below)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The tuned models' runs are done in this order (it changes no run): SASRec-3 (goal 2) before
# ForwardOFA-fromSASRec and SASRec-2. Untuned models (the pinned one, the switches) queue behind
# every tuning run; to have the stage-2 runs sooner (one stage 2 each, from ForwardOFA's
# supernets: where ForwardOFA's gain comes from), start a second process on them alone, e.g.
#   bash benchmarks/verdict.sh --model=ForwardOFA,ForwardOFA-nomapper,ForwardOFA-backbone0
MODELS=SASRec-6,ForwardOFA,SASRec-3,SASRec-6@learning_rate=0.002
SWITCHES=ForwardOFA-distill,ForwardOFA-anneal,ForwardOFA-backbone1,ForwardOFA-backbone0,ForwardOFA-nomapper
LATER=ForwardOFA-fromSASRec,SASRec-2
ADAPT=ForwardOFA-adaptSASRec@learning_rate=0.002@backbone_init=@SASRec-6@learning_rate=0.002
exec ${PY:-python3} -m recbole_fofa --benchmark --model="$MODELS,$SWITCHES,$LATER,$ADAPT" --seeds=3 \
  --dataset=ml-100k --config_files="$ROOT/properties/main.yaml $ROOT/properties/converge.yaml" \
  --routing --tune="{learning_rate: [0.001, 0.002, 0.004, 0.008]}" --tuning_seeds=2023,2024 \
  --output="$ROOT/benchmarks/results/verdict" "$@"
