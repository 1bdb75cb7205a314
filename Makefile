# The two set-up commands of the README. Each creates .venv and installs what it needs first.
VENV ?= .venv
BIN := $(VENV)/bin
export ABLATE_VENV := $(VENV)
export WANDB_MODE ?= offline

.PHONY: smoke test test-fast bootstrap

bootstrap:
	@scripts/bootstrap.sh

## The main job: the Table 2 study end to end on the smoke profile (CPU, minutes), then its report.
smoke: bootstrap
	$(BIN)/ablate run table2 --profile smoke
	$(BIN)/ablate report table2 --profile smoke --format all

## The whole test suite, slow end-to-end tests included; the slurm tier needs a cluster (.ci/run starts one).
test: bootstrap
	$(BIN)/python -m pytest -m "not slurm" -ra

## The default suite only (under 10 minutes on 2 cores).
test-fast: bootstrap
	$(BIN)/python -m pytest -ra
