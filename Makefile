# qcbench: `make run` sets up and runs the local default; `make test` sets up and runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= 2
SNAKEMAKE := $(VENV)/bin/snakemake

.PHONY: setup system-packages run test test-fast lint format dryrun-paper clean

setup: system-packages $(VENV)/.installed

# Debian packages: the real Fashion-MNIST (IDX files under /usr/share/datasets/fashion-mnist).
system-packages:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || { \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends dataset-fashion-mnist; }

$(VENV)/.installed: envs/requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r envs/requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

run: setup
	$(SNAKEMAKE) --cores $(CORES) all

test: setup
	$(VENV)/bin/pytest -q

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check workflow tests
	$(VENV)/bin/ruff format --check workflow tests
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules
	$(SNAKEMAKE) --lint

format: setup
	$(VENV)/bin/ruff check --fix workflow tests
	$(VENV)/bin/ruff format workflow tests
	$(VENV)/bin/snakefmt Snakefile workflow/rules

dryrun-paper: setup
	$(SNAKEMAKE) -n --configfile config/config.yaml

clean:
	rm -rf results/* resources/data .snakemake
