# kubetune developer commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# DeepSpeed's ops are compiled on first use (or prebuilt in the trainer image), never at install.
export DS_BUILD_OPS := 0

.PHONY: help venv quickstart test lint typecheck unit gpu-check crds clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml trainer-image/constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c trainer-image/constraints.txt -e '.[dev,operator,train]'
	@touch $@

venv: $(INSTALLED) ## Create .venv with kubetune and every extra (idempotent)

QUICKSTART := runs/quickstart

quickstart: $(INSTALLED) ## The main job: validate the examples, then fine-tune the quickstart on this machine
	$(BIN)/kubetune validate examples/
	@test -f $(QUICKSTART)/volumes/models/tiny-phi3/config.json || \
		$(BIN)/kubetune make-tiny-model $(QUICKSTART)/volumes/models/tiny-phi3 --corpus examples/quickstart.yaml
	$(BIN)/kubetune run examples/quickstart.yaml --volumes $(QUICKSTART)/volumes

lint: $(INSTALLED) ## ruff lint and format check
	$(BIN)/ruff check operator trainer-image tests
	$(BIN)/ruff format --check operator trainer-image tests

typecheck: $(INSTALLED) ## mypy (strict) on the package
	$(BIN)/mypy

unit: $(INSTALLED) ## The test suite alone, without lint and type checks
	$(BIN)/python -m pytest

test: lint typecheck unit ## Everything CI runs: lint, type check, tests

gpu-check: $(INSTALLED) ## On a CUDA machine: QLoRA kernels, ZeRO-3 over NCCL, FSDP rows (prints a table)
	$(BIN)/python -m pytest tests/gpu -m gpu -s -q -p no:cacheprovider

crds: $(INSTALLED) ## Regenerate crds/ from the API models
	$(BIN)/kubetune crd > crds/kubetune.io_finetunejobs.yaml

clean: ## Remove the virtual environment, caches and local runs
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache runs
