#!/usr/bin/env bash
# Creates .venv in the repository root and installs prime-megatron into it.
# torch is installed first at 2.13.0: that pin is a CPU build; any other pin or an
# open range makes pip fetch a multi-GB CUDA build. The constraints file keeps
# every later resolve from moving it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "torch==2.13.0" > .venv/constraints.txt
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -c .venv/constraints.txt -e ".[test,launch]"
echo "installed into $(pwd)/.venv"
