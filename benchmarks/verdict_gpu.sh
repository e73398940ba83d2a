#!/bin/bash
# The verdict benchmark (issue 19; docs/benchmarks.md, "The verdict benchmark") on a lent GPU
# machine, as one command for the device tool, run from the repository root:
#   1. the GPU checks (benchmarks/gpu_check.sh, with short limits; CHECK=0 skips them);
#   2. the verdict's runs (benchmarks/verdict.sh) in JOBS processes that share the GPU and
#      the stored runs, stopped after LIMIT seconds (a run cut there keeps its progress file:
#      the next session, on CPUs or a GPU, resumes it from its last validated epoch);
#   3. every file the runs added or changed in benchmarks/results/verdict, packed into
#      $OUT/verdict.tar.gz: unpack it at the repository root here (tar xzf verdict.tar.gz) and
#      commit the folder; the logs (checks, benchmark, helpers) in $OUT/logs.tar.gz.
# recbole and its pins come as wheels in .whl/ (see gpu_check.sh). Env: PYTHON (default
# python3), JOBS (default 12), LIMIT (default 420 s), CHECK (default 1), OUT (default: a
# temporary folder).
set -u
source benchmarks/gpu_env.sh
OUTDIR=${OUT:-$(mktemp -d)}
mkdir -p "$OUTDIR"
JOBS=${JOBS:-12}
LIMIT=${LIMIT:-420}
FOLDER=benchmarks/results/verdict
if [ "${CHECK:-1}" = 1 ]; then
  mkdir -p "$OUTDIR/check"
  T_TESTS=150 T_EPOCH=90 T_CLI=120 OUTDIR="$OUTDIR/check" bash benchmarks/gpu_check.sh \
    > "$OUTDIR/check.log" 2>&1
  echo "== gpu_check.sh: rc $? (its log: check.log, check/)"
  tail -5 "$OUTDIR/check.log"
fi
MARK=$(mktemp)  # files newer than this are what the runs wrote
WORK=$(mktemp -d)  # RecBole writes log/ and saved/ into the working directory
start=$SECONDS
(cd "$WORK" && PY=$PY timeout -k 30 "$LIMIT" bash "$ROOT/benchmarks/verdict.sh" --jobs="$JOBS") \
  > "$OUTDIR/verdict.log" 2>&1
echo "== verdict benchmark: rc $? after $((SECONDS - start)) s (124: stopped at LIMIT)"
tail -c 3000 "$OUTDIR/verdict.log"
find "$FOLDER" -type f -newer "$MARK" ! -path "*/locks/*" ! -path "*/workers/*" \
  ! -name "*.tmp" | tar czf "$OUTDIR/verdict.tar.gz" -T -
echo "== packed $(tar tzf "$OUTDIR/verdict.tar.gz" | wc -l) files into verdict.tar.gz"
# the device tool brings back 8 files at most: the logs travel as one archive
mkdir -p "$OUTDIR/logs"
cp "$FOLDER"/workers/*.log "$OUTDIR/logs/" 2>/dev/null
mv "$OUTDIR/verdict.log" "$OUTDIR/logs/"
[ -d "$OUTDIR/check" ] && mv "$OUTDIR/check" "$OUTDIR/logs/"
tar czf "$OUTDIR/logs.tar.gz" -C "$OUTDIR" logs && rm -rf "$OUTDIR/logs"
