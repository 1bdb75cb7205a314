#!/usr/bin/env bash
# Create (or reuse) the project's virtualenv and install ablate with the pinned stack.
#
#   scripts/bootstrap.sh [EXTRAS]     EXTRAS defaults to "test"; the same on CPU and CUDA machines.
#
# The venv lives in $ABLATE_VENV (default .venv). torch comes from pip's index (on PyPI, Linux
# x86_64: a CUDA build), or from $TORCH_INDEX_URL when set, e.g. https://download.pytorch.org/whl/cpu
# or .../whl/cu126 (README, "Installing by hand"). Installing is skipped when pyproject.toml,
# constraints.txt and these choices are unchanged since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
venv="${ABLATE_VENV:-.venv}"
python="${PYTHON:-python3}"
torch_index=(${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"})

if [ ! -x "$venv/bin/python" ]; then
  echo "creating virtualenv $venv" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.ablate-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16) $extras ${TORCH_INDEX_URL:-}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing ablate-seg[$extras] with constraints.txt into $venv (about 2 minutes the first time)" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade "pip>=23" 2>&1 | grep -v "is ignored" >&2 || true
  # torch first and alone: its index decides the build (CPU, CUDA version) without hiding PyPI
  # from the rest, and the second install keeps it, as it meets the pin.
  "$venv/bin/python" -m pip install --quiet -c constraints.txt "${torch_index[@]}" torch 2>&1 | grep -v "is ignored" >&2 || true
  "$venv/bin/python" -m pip install --quiet -c constraints.txt -e ".[$extras]" 2>&1 | grep -v "is ignored" >&2 || true
  "$venv/bin/python" -c "import ablate, torch, mmseg, mmengine"
  echo "$want" > "$stamp"
fi
