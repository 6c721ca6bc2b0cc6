#!/usr/bin/env bash
# nlframe developer entry point. Each command sets itself up on a fresh machine
# (only Python >= 3.10 needed): it creates .venv, installs nlframe, then acts.
#
#   ./dev.sh train   train specs/hope-tiny.toml on the embedded stdlib corpus,
#                    then print validation bits/byte, a sample and the TensorBoard command
#   ./dev.sh test    run the test suite (what CI runs)
#   ./dev.sh bench   run the benchmarks (side-by-side ratios; slow)
#   ./dev.sh setup   only create/refresh .venv
#
# Environment: PYTHON (interpreter used to create .venv, default python3),
# NLFRAME_TORCH (torch requirement installed first when no torch is present,
# default torch==2.13.0: a CPU build where the machine provides one),
# NLFRAME_TORCH_INDEX (optional --index-url for that install, e.g. PyTorch's CPU index).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv
PY=$VENV/bin/python

setup() {
  if [ ! -x "$PY" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp=$VENV/.nlframe-installed
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ examples/nlframe-lion/pyproject.toml -nt "$stamp" ]; then
    if ! "$PY" -c "import torch" >/dev/null 2>&1; then
      # Install a CPU build of torch before anything can pull the (multi-GB) CUDA default.
      local index=()
      [ -n "${NLFRAME_TORCH_INDEX:-}" ] && index=(--index-url "$NLFRAME_TORCH_INDEX")
      "$PY" -m pip install -q "${index[@]}" "${NLFRAME_TORCH:-torch==2.13.0}"
    fi
    "$PY" -m pip install -q -e ".[dev,plot,hf,docs,triton]"
    if [ -d examples/nlframe-lion ]; then
      # The example third-party plugin, installed like any other distribution.
      "$PY" -m pip install -q ./examples/nlframe-lion
    fi
    touch "$stamp"
  fi
}

cmd=${1:-help}
shift || true
case "$cmd" in
  setup)
    setup ;;
  train)
    setup
    "$PY" scripts/quickstart.py "$@" ;;
  test)
    setup
    "$PY" -m pytest -n "${NLFRAME_TEST_WORKERS:-2}" -q "$@" ;;
  bench)
    setup
    "$VENV/bin/nlframe" bench all "$@" ;;
  *)
    sed -n '2,16p' "$0"
    [ "$cmd" = help ] || exit 2 ;;
esac
