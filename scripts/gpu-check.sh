#!/usr/bin/env bash
# The GPU acceptance check, for a machine with one CUDA GPU (about 3-5 minutes, under 8).
#
#   scripts/gpu-check.sh             needs CUDA; creates $ABLATE_VENV (default .venv) by the README's
#                                    CUDA steps (scripts/bootstrap.sh) if it is missing, installs nothing else
#   scripts/gpu-check.sh --dry-run   on a CPU: prints what the real check runs, then runs the same
#                                    code paths at tiny sizes (about 2 minutes on 2 cores)
#
# Steps: (1) the CUDA-marked tests, `pytest -m cuda`; (2) the smoke study trained on the GPU,
# `ablate run table2 --profile smoke --gpus 1`, in a temporary ABLATE_WORK_DIR and ABLATE_DATA;
# (3) benchmarks/gpu.py: FreqFusion under fp16/bf16 autocast vs fp32, CARAFE vs mmcv's op (when
# full mmcv works here, else a `skipped` row), and seconds per training iteration of the four
# Table 2 variants at batch 16, 512x512. Each step has a time limit, a failed step does not stop
# the others, and one table of all results is printed at the end and written to
# benchmarks/results/gpu-check-DATE.md (dry run: into its temporary folder). Exit status 1 when
# a check failed, 2 when the check cannot start.
#
# The dry run differs only where CUDA is needed: the cuda tests are skipped by pytest, the smoke
# study trains its baseline for 4 iterations on the CPU (a copy of table2.yaml with a shorter
# smoke profile, as there is no --gpus without CUDA), and benchmarks/gpu.py runs with
# `--device cpu --tiny`.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  --dry-run) dry=1 ;;
  "") dry=0 ;;
  *) echo "usage: scripts/gpu-check.sh [--dry-run]" >&2; exit 2 ;;
esac
started=$SECONDS
venv="${ABLATE_VENV:-.venv}"
py="$venv/bin/python"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, wherever the venv's editable install points
tmp="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
export ABLATE_WORK_DIR="$tmp/work_dirs" ABLATE_DATA="$tmp/data"
rows="$tmp/rows.tsv"
: > "$rows"
failed=0

row() {  # check, result, detail: one row of the final table
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$rows"
}
trimmed() {  # the last line of a file, without its '=' rules and outer spaces
  tail -n 1 "$1" | tr -d '=' | sed 's/^ *//; s/ *$//'
}
outcome() {  # exit status of a step, time limit -> result cell
  case "$1" in
    0) echo "ok" ;;
    124) echo "FAILED (over its ${2} s limit)" ;;
    *) echo "FAILED (exit $1)" ;;
  esac
}

if [ ! -x "$py" ]; then
  if [ "$dry" = 1 ]; then
    echo "error: no virtualenv at $venv; set ABLATE_VENV or run scripts/bootstrap.sh" >&2
    exit 2
  fi
  echo "=== creating $venv by the README's CUDA steps (torch from ${TORCH_INDEX_URL:-the default index})"
  scripts/bootstrap.sh test || exit 2
fi
if [ "$dry" = 0 ] && ! "$py" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "error: torch $("$py" -c 'import torch; print(torch.__version__)') sees no CUDA device here;" \
       "on a CPU machine run scripts/gpu-check.sh --dry-run" >&2
  exit 2
fi

if [ "$dry" = 1 ]; then
  smoke=(run table2 --profile smoke --variants baseline)
  bench=(--device cpu --tiny)
  result="$tmp/gpu-check-$(date +%F)-dry-run.md"
else
  smoke=(run table2 --profile smoke --gpus 1)
  bench=(--device cuda)
  result="benchmarks/results/gpu-check-$(date +%F).md"
fi
echo "GPU check$([ "$dry" = 1 ] && echo ', dry run'): temporary folder $tmp"
echo "the real check runs, with ABLATE_WORK_DIR and ABLATE_DATA under its temporary folder:"
echo "  1. (limit 100 s) $py -m pytest -m cuda -q -ra"
echo "  2. (limit 200 s) $venv/bin/ablate run table2 --profile smoke --gpus 1"
echo "  3. (limit 150 s) $py benchmarks/gpu.py --rows ROWS --device cuda"
echo "  4.               $py benchmarks/gpu.py --table ROWS --out benchmarks/results/gpu-check-$(date +%F).md"
if [ "$dry" = 1 ]; then
  echo "this dry run: 1 as is (the cuda tests skip here), 2 as \`ablate ${smoke[*]}\` with 4 iterations" \
       "on the CPU, 3 with \`${bench[*]}\`, 4 into $result"
fi

echo; echo "=== 1. pytest -m cuda"
log="$tmp/pytest.log"
timeout 100 "$py" -m pytest -m cuda -q -ra -p no:cacheprovider > "$log" 2>&1
code=$?
tail -n 25 "$log"
[ "$code" = 0 ] || failed=1
row "pytest -m cuda" "$(outcome "$code" 100)" "$(trimmed "$log")"

echo; echo "=== 2. ablate ${smoke[*]}"
if [ "$dry" = 1 ]; then  # the smoke profile cut to 4 iterations, in a copy of the study
  mkdir -p "$tmp/experiments"
  ln -s "$PWD/experiments/_base_" "$tmp/experiments/_base_"
  "$py" - "$tmp/experiments/table2.yaml" <<'EOF' || exit 2
import sys, yaml
study = yaml.safe_load(open("experiments/table2.yaml"))
overrides = study["profiles"]["smoke"]["overrides"]
overrides.update({"train_cfg.max_iters": 4, "train_cfg.val_interval": 4, "default_hooks.checkpoint.interval": 2})
yaml.safe_dump(study, open(sys.argv[1], "w"), sort_keys=False)
EOF
  export ABLATE_STUDIES="$tmp/experiments"
fi
step_start=$SECONDS
timeout 200 "$venv/bin/ablate" "${smoke[@]}" 2>&1 | tee "$tmp/smoke.log"
code=${PIPESTATUS[0]}
[ "$code" = 0 ] || failed=1
row "smoke study: ablate ${smoke[*]}" "$(outcome "$code" 200)" \
    "$(trimmed "$tmp/smoke.log") in $((SECONDS - step_start)) s; runs in $ABLATE_WORK_DIR"

echo; echo "=== 3. benchmarks/gpu.py ${bench[*]}"
timeout 150 "$py" benchmarks/gpu.py --rows "$rows" "${bench[@]}"
code=$?
if [ "$code" != 0 ]; then
  failed=1
  [ "$code" = 1 ] || row "benchmarks/gpu.py" "$(outcome "$code" 150)" "rows above are the checks it finished"
fi

echo; echo "=== results ($((SECONDS - started)) s)"
"$py" benchmarks/gpu.py --table "$rows" --out "$result" || exit 2
echo "written to $result"
exit "$failed"
