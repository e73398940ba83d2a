#!/bin/bash
# The distributed checks that need CUDA GPUs (docs/distributed.md, "Checking on GPUs"), as one
# script for a lent GPU machine; run from the repository root. Each step has its own time limit
# and the script goes on after a failure; it exits non-zero if any step failed.
#   1. the GPU tests of tests/test_distributed.py: one NCCL process, two gloo processes sharing
#      GPU 0 and, with two GPUs, two NCCL processes, each against one plain GPU process;
#   2. one ForwardOFA supernet epoch on ml-100k, a plain GPU process vs one NCCL DDP process
#      (benchmarks/distributed.py --device=gpu);
#   3. the CLI as a user runs it: ForwardOFA with properties/main.yaml in one NCCL process
#      (--nproc=1 --world_size=1: with --nproc=1 alone there is no process group).
# Packages the machine lacks (recbole and its pins) can come as wheels in .whl/: they are
# installed into /tmp/site first. On the lent GPU machines (Python 3.12) these were needed:
# recbole==1.2.1, colorlog==4.7.2, texttable, pandas==2.3.3 with numpy, pytz and tzdata
# (`pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl NAME==VERSION`). Env: PYTHON (default python3), OUTDIR (logs; default $OUT or
# a temporary folder), T_TESTS, T_EPOCH, T_CLI (seconds).
set -u
source benchmarks/gpu_env.sh
OUTDIR=${OUTDIR:-${OUT:-$(mktemp -d)}}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$PY -c "import torch, recbole, recbole_fofa; print('torch', torch.__version__, 'cuda',
torch.cuda.is_available(), 'gpus', torch.cuda.device_count(), 'nccl',
torch.distributed.is_nccl_available())" || exit 1

FAILED=""
step() {  # name seconds command...: its output in $OUTDIR/name.log, its status on the console
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  timeout "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc $rc, $((SECONDS - start)) s"
  tail -25 "$OUTDIR/$name.log"
  [ $rc -eq 0 ] || FAILED="$FAILED $name"
}

step tests "${T_TESTS:-300}" $PY -m pytest -q -p no:cacheprovider -p no:warnings -rs \
  tests/test_distributed.py -k "gpu or backend or rank_gpu or spawned"
step epoch "${T_EPOCH:-240}" $PY benchmarks/distributed.py --device=gpu --part=epoch --repeats=3
WORK=$(mktemp -d)  # RecBole writes log/ and saved/ into the working directory
step cli "${T_CLI:-240}" bash -c "cd $WORK && $PY $ROOT/run_recbole_fofa.py --model=ForwardOFA \
  --dataset=ml-100k --config_files=$ROOT/properties/main.yaml --nproc=1 --world_size=1 \
  --dist_backend=nccl --port=29517"
ls "$WORK"/saved > "$OUTDIR/cli-saved.txt" 2>&1
[ -z "$FAILED" ] || { echo "failed:$FAILED"; exit 1; }
echo "all GPU checks passed"
