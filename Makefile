# mlblueprints: `make demo` and `make test` do all the set-up on a fresh machine (Python 3.11).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# the interpreter itself, not a version manager's shim: uv recreates .venv whenever the path it
# is given differs from the one the environment was made with
PYTHON ?= $(shell $$(command -v python3.11 || command -v python3) -c 'import sys; print(sys.executable)')
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)
# everything the local runtime writes lives here; delete it to start over
export MLB_HOME ?= $(CURDIR)/.mlb

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

install: $(VENV)/.installed  ## create .venv from uv.lock (runtime + test dependencies)

# the checkers of the state machines and templates, outside the lock: asl-validator (npm) in
# .tools/npm, cfn-lint and checkov (PyPI; checkov's pins would disturb the lock) in .tools/iac
ASL_VALIDATOR_VERSION := 4.0.0
CFN_LINT_VERSION := 1.58.0
CHECKOV_VERSION := 3.3.30

$(TOOLS)/npm/node_modules/.bin/asl-validator:
	npm install --prefix $(TOOLS)/npm --no-audit --no-fund --silent "asl-validator@$(ASL_VALIDATOR_VERSION)"

$(TOOLS)/iac/bin/checkov:
	$(PYTHON) -m venv $(TOOLS)/iac
	$(TOOLS)/iac/bin/python -m pip install --quiet --disable-pip-version-check \
	  "cfn-lint==$(CFN_LINT_VERSION)" "checkov==$(CHECKOV_VERSION)"

tools: $(TOOLS)/npm/node_modules/.bin/asl-validator $(TOOLS)/iac/bin/checkov  ## asl-validator, cfn-lint, checkov

demo: install  ## generate data; run the lakehouse, feature and training DAGs on embedded defaults
	$(PY) -m mlblueprints.cli demo

demo-claims: install  ## the second example: claim cost (a regression), landed, backfilled, trained
	$(PY) -m mlblueprints.cli demo --usecase claim_cost

test: install tools  ## run the whole test suite (slow tests included)
	$(PY) -m pytest

test-fast: install tools  ## the tests not marked slow
	$(PY) -m pytest -m "not slow"

LINT_DIRS := $(wildcard include dags plugins tests bench)

lint: install  ## ruff (Airflow's own AIR rules included)
	$(VENV)/bin/ruff check $(LINT_DIRS)
	$(VENV)/bin/ruff format --check $(LINT_DIRS)

bench: install  ## benchmarks (long); results go to docs/benchmarks.md by hand
	$(PY) bench/lakehouse.py
	$(PY) bench/features.py
	$(PY) bench/training.py
	$(PY) bench/scoring.py

requirements.txt: uv.lock  ## regenerate the MWAA/Astronomer requirements from the lock
	$(UV) export --frozen --no-dev --no-hashes --no-emit-project --no-header \
	  --no-emit-package apache-airflow --no-emit-package apache-airflow-core \
	  --no-emit-package apache-airflow-task-sdk -o requirements.txt >/dev/null

lock:  ## re-resolve uv.lock after editing pyproject.toml, then regenerate requirements.txt
	$(UV) lock
	$(MAKE) requirements.txt

WORKER_IMAGE ?= mlblueprints-worker
worker-image:  ## build the Step Functions worker image (needs Docker; docs/stepfunctions.md says how to push it)
	docker build -f infra/worker.Dockerfile -t $(WORKER_IMAGE):$$(git rev-parse --short=12 HEAD) \
	  --build-arg GIT_COMMIT=$$(git rev-parse HEAD) .

clean:  ## remove the runtime directory (data, tables, Airflow DB, reports)
	rm -rf "$(MLB_HOME)"

.PHONY: help install tools demo demo-claims test test-fast lint bench lock clean worker-image
