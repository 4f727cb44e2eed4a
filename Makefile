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
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

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

demo-loop: install  ## the drift loop: calm days, a champion, a drifted day, the alert, retraining (own runtime dir)
	MLB_HOME="$(CURDIR)/.mlb/loop" $(PY) -m mlblueprints.cli demo --loop

test: install tools python312 browser  ## run the whole test suite (slow tests included)
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
	$(PY) bench/monitoring.py
	$(PY) bench/explainability.py

lock:  ## re-resolve uv.lock after editing pyproject.toml, then regenerate the requirements files
	$(UV) lock
	$(MAKE) requirements

WORKER_IMAGE ?= mlblueprints-worker
worker-image:  ## build the Step Functions worker image (needs Docker; docs/stepfunctions.md says how to push it)
	docker build -f infra/worker.Dockerfile -t $(WORKER_IMAGE):$$(git rev-parse --short=12 HEAD) \
	  --build-arg GIT_COMMIT=$$(git rev-parse HEAD) .

clean:  ## remove the runtime directory (data, tables, Airflow DB, reports)
	rm -rf "$(MLB_HOME)"

.PHONY: help install tools demo demo-claims demo-loop test test-fast lint bench lock clean worker-image

# ---- where users run it: MWAA, Astro, a local Airflow UI (docs/deployment.md) ----------------
# the Airflow version of the managed targets: MWAA offers 3.3.1, 3.2.1 and 3.0.6; Astro Runtime's
# 3.3 line; both on Python 3.12. Change both together.
AIRFLOW_TARGET ?= 3.3.1
ASTRO_RUNTIME ?= 3.3-2
export AIRFLOW_TARGET ASTRO_RUNTIME
UP_PORT ?= 8080

requirements: install  ## regenerate requirements/aws-worker.txt (3.12, AIRFLOW_TARGET) and requirements/local.txt
	$(PY) -m mlblueprints.deploy.requirements --uv $(UV) --airflow $(AIRFLOW_TARGET)

image-table: install  ## rewrite the SageMaker image table from the installed SDK
	$(PY) -m mlblueprints.aws.image_table

.PHONY: requirements image-table

# the managed images' Python, for the tests that install the MWAA bundle's and the Astro project's
# requirements: the machine's own 3.12 (PYTHON312, python3.12, pyenv's) or else uv's build,
# installed into .tools/python (uv downloads it from its own release site, not from PyPI)
python312: install  ## find a Python 3.12 for the MWAA/Astro install tests, or install uv's into .tools/python
	@$(PY) -m mlblueprints.deploy.requirements --find-python 3.12 \
	  || { UV_PYTHON_DOWNLOADS=automatic UV_PYTHON_INSTALL_DIR=$(CURDIR)/$(TOOLS)/python $(UV) python install 3.12 \
	       && $(PY) -m mlblueprints.deploy.requirements --find-python 3.12; }

.PHONY: python312

mwaa-bundle: install  ## dist/mwaa: dags/, plugins.zip, requirements.txt, startup.sh for MWAA (AIRFLOW_TARGET)
	$(PY) -m mlblueprints.cli deploy mwaa-bundle --out dist/mwaa --airflow $(AIRFLOW_TARGET)

.PHONY: mwaa-bundle

up: install  ## the Airflow UI (API server, scheduler, DAG processor, triggerer) on the runtime's DB; prints URL and login
	$(PY) -m mlblueprints.cli up --port $(UP_PORT)

down:  ## stop what `make up` started
	$(PY) -m mlblueprints.cli down

.PHONY: up down

astro: install  ## assemble astro/ for `astro dev start` (Astro Runtime ASTRO_RUNTIME, Airflow AIRFLOW_TARGET)
	$(PY) -m mlblueprints.cli deploy astro --out astro --airflow $(AIRFLOW_TARGET) --runtime $(ASTRO_RUNTIME)

.PHONY: astro

browser:  ## Debian's chromium for the reports plugin's browser test (apt-get as root; make test calls it)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium package (sudo apt-get install chromium) for the browser test" >&2; exit 1; fi; }
	@chromium --version

.PHONY: browser
