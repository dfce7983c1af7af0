# Every target installs what it needs first, so each one works on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install only when the dependency pins change.
INSTALLED := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
UI_PORT ?= 8501
# dvc runs stage commands through the shell: make it find the venv's python first.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: help install run ui train test lint format mlflow-ui lock clean bench

# One line per target, in the order of docs/development.md's table (tests/deploy/test_docs.py keeps them in step).
help:
	@echo "make run                       install, train if models/model.joblib is missing, start the service"
	@echo "make test                      install the dev dependencies and tools, lint, run the whole suite"
	@echo "                               over the cores (TEST_WORKERS=auto); any skipped test fails it"
	@echo "make lint                      ruff check, format check and mypy over app/"
	@echo "make format                    ruff fix and format"
	@echo "make ui                        the web UI (Streamlit) on http://127.0.0.1:8501, talking to the API at API_URL"
	@echo "make train                     dvc repro: prepare -> train -> evaluate"
	@echo "make push / make pull          dvc push / dvc pull to the S3 remote (DVC_REMOTE_URL, DVC_S3_ENDPOINT_URL)"
	@echo "make mlflow-ui                 open the local MLflow store on http://127.0.0.1:5000"
	@echo "make bench                     load benchmark: this service against mlflow models serve, BentoML and a bare"
	@echo "                               FastAPI app (BENCH_QUICK=1: a shorter run; BENCH_PEERS=mlflow: no BentoML)"
	@echo "make stack / make stack-down   the docker-compose topology without Docker: S3 (moto), MLflow, train + push +"
	@echo "                               publish, two API replicas and a worker behind nginx, Prometheus, Alertmanager"
	@echo "                               on 127.0.0.1; stack-down stops it"
	@echo "make stack-status              what make stack runs, where, and its log"
	@echo "make obs-tools                 install Debian's prometheus and prometheus-alertmanager if missing"
	@echo "make stack-tools               install Debian's nginx (make stack's load balancer) if missing"
	@echo "make chart-tools               install checkov (the Helm chart's security scan) into .venv-chart"
	@echo "make oidc-tools                install the tests' OpenID Connect issuer (npm's oidc-provider)"
	@echo "make image                     build IMAGE:serving (API replicas) and IMAGE:full (trainer, worker, MLflow,"
	@echo "                               UI) with docker, or podman where no Docker engine runs (PYTHON_IMAGE: the base)"
	@echo "make container-tools           podman, podman-compose and debootstrap where no Docker engine runs"
	@echo "make lock                      refresh requirements.lock from the pins in pyproject.toml"
	@echo "make clean                     remove .venv, .venv-chart, the OIDC issuer's node_modules and the caches"

$(INSTALLED): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 is required"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[train,ui,dev]"
	touch $@

install: $(INSTALLED)

models/model.joblib: | $(INSTALLED)
	$(BIN)/dvc repro

train: $(INSTALLED)
	$(BIN)/dvc repro

# Migrates the users database, creates the first admin from ADMIN_USERNAME/ADMIN_PASSWORD when
# there is no user yet, then serves (WORKERS=n for more processes).
run: $(INSTALLED) models/model.joblib
	@echo "Model:   models/model.joblib (metadata in models/model.json)"
	@echo "MLflow:  runs in mlruns/mlflow.db; browse them with 'make mlflow-ui'"
	@echo "API:     http://$(HOST):$(PORT)/docs (users: $(BIN)/python -m app.cli users --help)"
	$(BIN)/python -m app.serve --host $(HOST) --port $(PORT)

# The web UI: a Streamlit app that calls the API over HTTP (API_URL, default http://127.0.0.1:8000;
# start the API with `make run` in another terminal).
ui: $(INSTALLED)
	$(BIN)/streamlit run app/ui/streamlit_app.py --server.address $(HOST) --server.port $(UI_PORT) \
		--server.headless true --browser.gatherUsageStats false --client.toolbarMode viewer

# The real Prometheus and Alertmanager (Debian packages): promtool, amtool and both servers for the tests.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
.PHONY: obs-tools
obs-tools:
	@command -v promtool >/dev/null && command -v amtool >/dev/null && command -v prometheus-alertmanager >/dev/null || { \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			--no-install-recommends prometheus prometheus-alertmanager >/dev/null; }

# Debian's nginx: make stack's load balancer in front of the API replicas (it runs its own config from
# .stack/; the package's service on port 80, if Debian starts one, is not used).
.PHONY: stack-tools
stack-tools:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			--no-install-recommends nginx >/dev/null; }

# Debian's Chromium for the UI's end-to-end test (Playwright drives it; it downloads no browser).
.PHONY: ui-tools
ui-tools:
	@command -v chromium >/dev/null || { \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			--no-install-recommends chromium >/dev/null; }

# The Helm chart's security scan (tests/deploy/test_helm.py). checkov pins dozens of packages at versions
# of its own, so it gets a venv of its own, from deploy/helm/checkov.lock, rebuilt only when that changes.
# Its .gitignore keeps git and ruff out of it (Python 3.11's venv does not write one).
CHART_VENV := .venv-chart
CHART_TOOLS := $(CHART_VENV)/.installed
$(CHART_TOOLS): deploy/helm/checkov.lock
	test -x $(CHART_VENV)/bin/python || $(PYTHON) -m venv $(CHART_VENV)
	echo '*' > $(CHART_VENV)/.gitignore
	$(CHART_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHART_VENV)/bin/python -m pip install --quiet --requirement deploy/helm/checkov.lock
	touch $@

.PHONY: chart-tools
chart-tools: $(CHART_TOOLS)

# A real OpenID Connect issuer for tests/api/test_oidc.py: panva's oidc-provider from npm, at the
# version tests/support/oidc/package-lock.json pins, installed again only when that changes.
OIDC_DIR := tests/support/oidc
OIDC_TOOLS := $(OIDC_DIR)/node_modules/.installed
$(OIDC_TOOLS): $(OIDC_DIR)/package-lock.json
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		$(SUDO) apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
	cd $(OIDC_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

.PHONY: oidc-tools
oidc-tools: $(OIDC_TOOLS)

# A container engine for the image and its tests: docker where one runs, else Debian's podman set up
# for this kind of host (tools/containers/engine.sh). `make image` builds IMAGE:serving (the API
# replicas) and IMAGE:full (trainer, worker, MLflow, UI) on the Dockerfile's base, or PYTHON_IMAGE's.
IMAGE ?= mlops-api-predictor
.PHONY: container-tools image
container-tools:
	@$(SUDO) tools/containers/engine.sh

image: container-tools
	PYTHON_IMAGE="$(PYTHON_IMAGE)" tools/containers/build.sh $(IMAGE)

# Lint first, so a ruff or mypy error fails CI before the suite runs. Then the whole suite over
# TEST_WORKERS processes (tests/support/scheduling.py: a file per unit, the longest first), with
# every tool installed: --fail-on-skip turns any skipped test into a failure.
TEST_WORKERS ?= auto
test: $(INSTALLED) obs-tools stack-tools ui-tools chart-tools oidc-tools container-tools
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --fail-on-skip \
		--durations=10 $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

mlflow-ui: $(INSTALLED)
	mkdir -p mlruns
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 \
		--backend-store-uri sqlite:///mlruns/mlflow.db --default-artifact-root ./mlruns/artifacts

# Load benchmark (bench/run.py): trains, serves with ours, mlflow and BentoML (its own venv in
# artifacts/bench/venv-bentoml, installed on first use) and a bare FastAPI ceiling, drives them with
# wrk on 127.0.0.1. BENCH_DURATION=5 shortens each run, BENCH_QUICK=1 runs 3 s each, BENCH_PEERS
# picks the peers (default mlflow,bentoml), BENCH_CEILING=0 skips the ceiling; BENCH_ARGS passes other flags.
bench: $(INSTALLED)
	@command -v wrk >/dev/null || apt-get install -y wrk || { apt-get update && apt-get install -y wrk; }
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Refresh requirements.lock from a clean install of the pins in pyproject.toml.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip && .venv-lock/bin/pip install --quiet ".[train,ui,dev]"
	.venv-lock/bin/pip freeze --exclude mlops-api-predictor > requirements.lock && rm -rf .venv-lock

clean:
	rm -rf $(VENV) $(CHART_VENV) $(OIDC_DIR)/node_modules .pytest_cache .ruff_cache

# The DVC remote: bucket and endpoint from DVC_REMOTE_URL / DVC_S3_ENDPOINT_URL (see .env.example).
.PHONY: push pull
push: $(INSTALLED)
	$(BIN)/python -m app.pipeline.remote
	$(BIN)/dvc push

pull: $(INSTALLED)
	$(BIN)/python -m app.pipeline.remote
	$(BIN)/dvc pull

# The docker-compose topology without Docker (tools/devstack): state, logs and configs in .stack/.
# Ports: STACK_S3_PORT, STACK_MLFLOW_PORT, STACK_API_PORT (nginx), STACK_API_REPLICA_PORTS (8001,8002),
# STACK_PROMETHEUS_PORT, STACK_ALERTMANAGER_PORT.
.PHONY: stack stack-down stack-status
stack: $(INSTALLED) obs-tools stack-tools
	$(BIN)/python -m tools.devstack up

# Stops whatever `make stack` started, even after a failed start, and restores .dvc/config.local.
stack-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m tools.devstack down; else echo "no .venv: nothing was started"; fi

stack-status:
	$(BIN)/python -m tools.devstack status
