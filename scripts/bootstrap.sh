#!/usr/bin/env bash
# Create (or reuse) the project's virtualenv and install ablate with the pinned stack.
#
#   scripts/bootstrap.sh [EXTRAS]     EXTRAS defaults to "cpu,test"; use "test" on a CUDA machine
#                                     that has full mmcv installed (see README, "CUDA machines").
#
# The venv lives in $ABLATE_VENV (default .venv). Installing is skipped when pyproject.toml and
# constraints.txt are unchanged since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-cpu,test}"
venv="${ABLATE_VENV:-.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "creating virtualenv $venv" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.ablate-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16) $extras"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing ablate-seg[$extras] with constraints.txt into $venv (about 2 minutes the first time)" >&2
  # torch first and alone: pinned to the CPU build that pip finds without downloading CUDA.
  "$venv/bin/python" -m pip install --quiet --upgrade "pip>=23" 2>&1 | grep -v "is ignored" >&2 || true
  "$venv/bin/python" -m pip install --quiet -c constraints.txt torch 2>&1 | grep -v "is ignored" >&2 || true
  "$venv/bin/python" -m pip install --quiet -c constraints.txt -e ".[$extras]" 2>&1 | grep -v "is ignored" >&2 || true
  "$venv/bin/python" -c "import ablate, torch, mmseg, mmengine" 
  echo "$want" > "$stamp"
fi
