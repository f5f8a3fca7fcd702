# avss: two commands for a newcomer (see README.md). Both create and use .venv in this folder.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# Another Python gets an environment of its own: `make test PYTHON=python3.12` installs into and uses .venv-python3.12.
VENV ?= $(if $(filter command line,$(origin PYTHON)),.venv-$(notdir $(PYTHON)),.venv)
BIN := $(VENV)/bin
QUICKSTART_ARGS ?=

.PHONY: quickstart test env sync export clean-nbs nbtest pytest bench clean

## Install everything into .venv, then pretrain k = 1 and k = 16 at once on a synthetic corpus and show the paper's
## effect: a table, runs/quickstart/effect.png and effect.md (CPU, two cores, about 7 minutes after the install).
## QUICKSTART_ARGS='--seed 1' for another seed (runs/quickstart-s1).
quickstart: env
	$(BIN)/python -m avss.quickstart $(QUICKSTART_ARGS)

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
