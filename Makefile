# qcbench: `make run` sets up and runs the local default; `make test` sets up and runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= 2
# The venv's bin first, so snakemake finds the scontrol wrapper (workflow/profiles/scontrol.sh).
SNAKEMAKE := PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/snakemake

.PHONY: setup system-packages slurm-conf profiles scontrol-wrapper run test test-fast bench lint format dryrun-paper smoke-paper smoke-slice costs archive clean

setup: system-packages slurm-conf profiles $(VENV)/.installed scontrol-wrapper

# Debian packages: the real Fashion-MNIST (IDX files under /usr/share/datasets/fashion-mnist),
# chromium (headless, for the report test) and
# a single-node SLURM cluster for tests/test_slurm.py (slurmctld, slurmd, slurm-client, munge).
SYSTEM_PACKAGES := dataset-fashion-mnist slurmctld slurmd slurm-client munge chromium
system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	[ -z "$$missing" ] || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; }

# /etc/slurm/slurm.conf for the localhost test cluster, only if absent (tests/slurm/slurm.conf.in).
slurm-conf: system-packages
	@tests/slurm/cluster.sh conf

# Make `snakemake --profile local` (`slurm`, `slurm-local`) resolve: link the repository's
# profiles into Snakemake's user config dir. A link to another checkout's profiles is relinked to
# this checkout (said so: the last clone set up is the one `--profile slurm` uses); a real
# (non-link) folder there is left alone, with a warning.
PROFILE_HOME ?= $${XDG_CONFIG_HOME:-$$HOME/.config}/snakemake
profiles:
	@mkdir -p "$(PROFILE_HOME)"; for p in local slurm slurm-local; do \
	  src="$(CURDIR)/workflow/profiles/$$p"; dst="$(PROFILE_HOME)/$$p"; \
	  if [ -L "$$dst" ]; then \
	    old=$$(readlink "$$dst"); \
	    if [ "$$old" != "$$src" ]; then \
	      ln -sfn "$$src" "$$dst" && echo "profiles: $$dst pointed at $$old; relinked to $$src"; fi; \
	  elif [ -e "$$dst" ]; then \
	    echo "profiles: warning: $$dst is not a link; left alone (--profile $$p uses it, not $$src)" >&2; \
	  else ln -s "$$src" "$$dst" && echo "profiles: linked $$dst -> $$src"; fi; done

# .venv/bin/scontrol: fails at once when no SLURM controller listens, instead of the ~9 s every
# snakemake start would wait in the slurm executor plugin's `scontrol show config` (see the script).
scontrol-wrapper: $(VENV)/.installed
	@install -m 755 workflow/profiles/scontrol.sh $(VENV)/bin/scontrol

$(VENV)/.installed: envs/requirements.txt envs/requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r envs/requirements.txt -c envs/requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

run: setup
	$(SNAKEMAKE) --profile $(CURDIR)/workflow/profiles/local --cores $(CORES) all

test: setup
	$(VENV)/bin/pytest -q -m "not smoke"

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow"

# The paper DAG's CI slice (tests/smoke/slice.yaml): every table, figure, architecture and dataset
# format at smoke budgets on fabricated data, `snakemake --cores 2` in a temporary folder.
smoke-slice: setup
	$(VENV)/bin/pytest -q -s -m smoke tests/test_smoke_slice.py

# Benchmark suite (tests/benchmarks/, not part of `make test`): writes results/benchmarks/summary.json.
# BENCH_RUN = a finished local-default run to read (its repository root; default: this checkout).
BENCH_RUN ?= .
bench: setup
	$(PY) -m tests.benchmarks --run $(BENCH_RUN)

lint: setup
	$(VENV)/bin/ruff check workflow tests
	$(VENV)/bin/ruff format --check workflow tests
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules
	$(SNAKEMAKE) --lint

format: setup
	$(VENV)/bin/ruff check --fix workflow tests
	$(VENV)/bin/ruff format workflow tests
	$(VENV)/bin/snakefmt Snakefile workflow/rules

# the paper config alone (any --configfile replaces the local default's config/local.yaml)
dryrun-paper: setup
	$(SNAKEMAKE) -n all --configfile config/config.yaml

# The whole paper DAG (every table and figure, one seed) at smoke budgets (config/smoke.yaml) on
# datasets fabricated in their real formats, through the single-node SLURM cluster, in SMOKE_DIR.
# Then `make costs` collates its benchmark files and estimates the paper config from them.
SMOKE_DIR ?= results/smoke-paper
SMOKE_CONFIGS := $(CURDIR)/config/config.yaml $(CURDIR)/config/smoke.yaml
smoke-paper: setup
	mkdir -p $(SMOKE_DIR)
	$(VENV)/bin/qcbench fabricate --root $(SMOKE_DIR)/resources/fabricated
	tests/slurm/cluster.sh start
	$(SNAKEMAKE) --profile $(CURDIR)/workflow/profiles/slurm-local --keep-going all --snakefile $(CURDIR)/Snakefile \
	  --directory $(SMOKE_DIR) --configfile $(SMOKE_CONFIGS)

# Costs per rule x architecture x dataset from SMOKE_DIR's benchmark files, and the paper config's
# CPU- and GPU-hours estimated from them: the whole plan, and each part of it alone (qcbench sections:
# the main grid, each table, each figure; docs/cluster.md).
costs: $(VENV)/.installed
	rm -rf $(SMOKE_DIR)/paper-plan; mkdir -p $(SMOKE_DIR)/paper-plan/work
	$(SNAKEMAKE) -n all --snakefile $(CURDIR)/Snakefile --directory $(SMOKE_DIR)/paper-plan/work \
	  --configfile $(CURDIR)/config/config.yaml > $(SMOKE_DIR)/paper-plan/all.txt
	$(VENV)/bin/qcbench sections $(CURDIR)/config/config.yaml | while IFS=$$'\t' read -r name targets; do \
	  $(SNAKEMAKE) -n --snakefile $(CURDIR)/Snakefile --directory $(SMOKE_DIR)/paper-plan/work \
	    --configfile $(CURDIR)/config/config.yaml -- $$targets > $(SMOKE_DIR)/paper-plan/$$name.txt || exit 1; done
	$(VENV)/bin/qcbench costs --run $(SMOKE_DIR) --config $(CURDIR)/config/smoke.yaml \
	  --plan $(SMOKE_DIR)/paper-plan/all.txt $$(ls $(SMOKE_DIR)/paper-plan/*.txt | grep -v '/all.txt$$') \
	  --out $(SMOKE_DIR)/costs.csv --plans-out $(SMOKE_DIR)/costs-per-part.csv

# Reviewer archive (`qcbench archive`): results/MANIFEST.sha256 + results/archive/qcbench-<date>-<commit>.tar.gz
# (the repository files the README refers to, and results/); ARCHIVE_OUT=path overrides.
archive: $(VENV)/.installed
	$(VENV)/bin/qcbench archive --root . $(if $(ARCHIVE_OUT),--out $(ARCHIVE_OUT))

clean:
	rm -rf results/* resources/data .snakemake
