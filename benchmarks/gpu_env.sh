# Sourced by the scripts for a lent GPU machine (gpu_check.sh, verdict_gpu.sh), from the
# repository root: sets ROOT and PY (PYTHON, default python3), installs the wheels in .whl/ (the
# packages that machine lacks: recbole and its pins, see gpu_check.sh) into /tmp/site, and
# points PYTHONPATH at them and at this checkout.
ROOT=$PWD
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$ROOT
else
  export PYTHONPATH=$ROOT
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore::FutureWarning
