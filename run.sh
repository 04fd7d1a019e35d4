#!/usr/bin/env bash
# One entry point for a fresh machine: sets up .venv on first use, then runs a job.
#   bash run.sh demo    train the digits demo and write runs/demo/ (the main job)
#   bash run.sh test    run the test suite
#   bash run.sh bench   run the demo benchmark (benchmarks/gates/digits_demo.py)
#   bash run.sh dff ... run any dff command inside the environment
# Live training curves: .venv/bin/pip install -e ".[tensorboard]", then .venv/bin/tensorboard --logdir runs
set -euo pipefail
cd "$(dirname "$0")"
VENV=${DFF_VENV:-.venv}
# torch is installed first and pinned, so pip does not pull a multi-GB CUDA build where a
# CPU build is what the machine has; set DFF_TORCH to choose another (e.g. "torch" on a GPU box).
TORCH_SPEC=${DFF_TORCH:-torch==2.13.0}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
  fi
  if ! "$VENV/bin/python" -c "import dff, pytest, xdist, diffusers" 2>/dev/null \
     || [ pyproject.toml -nt "$VENV/.dff-installed" ]; then
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    touch "$VENV/.dff-installed"
  fi
}

job=${1:-demo}; shift || true
setup
case "$job" in
  demo)  exec "$VENV/bin/dff" demo "$@" ;;
  test)  exec "$VENV/bin/python" -m pytest -q -n auto "$@" ;;  # one worker per core (pytest-xdist)
  bench) exec "$VENV/bin/python" benchmarks/gates/digits_demo.py "$@" ;;
  dff)   exec "$VENV/bin/dff" "$@" ;;
  *) echo "run.sh: unknown job '$job' (expected demo, test, bench or dff)" >&2; exit 2 ;;
esac
