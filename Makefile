# avss: two commands for a newcomer (see README.md). Both create and use .venv in this folder.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
QUICKSTART_ARGS ?=

.PHONY: quickstart test env sync export clean-nbs nbtest pytest bench clean

## Install everything into .venv and pretrain on the bundled synthetic corpus (CPU, minutes).
quickstart: env
	$(BIN)/papermill -k python3 nbs/pretrain.ipynb runs/quickstart.ipynb -p preset tiny -p run_name quickstart $(QUICKSTART_ARGS)
	@echo "run directory: runs/quickstart (loss plot: runs/quickstart/loss.png)"

## Install what the tests need and run the whole suite: notebooks in sync, nbdev_test, pytest.
test: env sync nbtest pytest

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.py settings.ini
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

## avss/ must be what nbdev_export makes of nbs/, and nbs/ what nbdev_clean makes of them.
sync: env
	$(BIN)/python tests/check_sync.py

nbtest: env
	$(BIN)/nbdev_test --n_workers 2

pytest: env
	$(BIN)/python -m pytest

## Developer helpers
export: env
	$(BIN)/nbdev_export
clean-nbs: env
	$(BIN)/nbdev_clean

bench: env
	$(BIN)/python -m avss.bench

clean:
	rm -rf $(VENV) build *.egg-info
