# Every target that needs the environment depends on `install`, which builds .venv once
# (again only when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?= ../shared/data
ARGS ?=
MLRUNS ?= mlruns
PORT ?= 5000
DASHBOARD_PORT ?= 8080
SERVER_PORT ?= 5001
BACKEND ?= sqlite:///$(MLRUNS)/server.db
# sudo for apt (make test's browser, make postgres) when we are not root.
SUDO := $(if $(filter 0,$(shell id -u)),,$(shell command -v sudo))

.PHONY: install dev browser train sweep sweep-mnist where best eval predict serve bench bench-search test test-fast lint ui dashboard tensorboard server postgres postgres-stop clean distclean

install: $(STAMP)

# The sweeper (plugins/hydra_lit_tune_sweeper) in the same command as lit_tune, which needs it:
# pip takes it from here, never from the index. Python packages only: nothing from apt.
SWEEPER := plugins/hydra_lit_tune_sweeper
NEW_VENV = test -x $(PY) || ($(PYTHON) -m venv $(VENV) && $(PY) -m pip install --quiet --upgrade pip)
$(STAMP): pyproject.toml $(SWEEPER)/pyproject.toml
	$(NEW_VENV)
	$(PY) -m pip install --quiet -e './$(SWEEPER)[lightning]' -e .
	touch $(STAMP)

# What the tests and linters need on top: the dev extra (pytest, ruff, mypy, the Ray and SLURM
# launchers, PostgreSQL's binaries as a wheel for the throwaway test cluster, Playwright).
DEV_STAMP := $(VENV)/.dev-installed
dev: $(DEV_STAMP)
# On a fresh clone one pip command for both (resolved once, each editable built once).
$(DEV_STAMP): pyproject.toml $(SWEEPER)/pyproject.toml
	$(NEW_VENV)
	$(PY) -m pip install --quiet -e './$(SWEEPER)[lightning]' -e '.[dev]'
	touch $(STAMP) $(DEV_STAMP)

# The browser test (tests/test_ui.py) drives Debian's Chromium: Playwright downloads no browser.
# Only `make test` asks for it.
browser:
	command -v chromium >/dev/null || ! command -v apt-get >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium)

train: install  ## one run on digits; e.g. make train ARGS="model=cnn optimizer=sgd"
	$(PY) train.py $(ARGS)

# The default search (conf/hparams_search/mlp.yaml): TPE with successive-halving pruning on digits.
sweep: install
	$(PY) train.py -m hparams_search=mlp hydra.sweeper.n_trials=12 $(ARGS)
	@$(MAKE) --no-print-directory where

sweep-mnist: install  ## the same on MNIST; DATA_DIR holds MNIST/raw
	$(PY) train.py -m hparams_search=mlp data=mnist data.data_dir=$(DATA_DIR) \
		trainer.max_epochs=10 hydra.sweeper.n_trials=20 $(ARGS)
	@$(MAKE) --no-print-directory where

where:
	@echo "Results: $$(ls -td multirun/*/*/ | head -1)optimization_results.yaml"
	@echo "Compare the trials: make ui, then http://127.0.0.1:5000 (experiment lit_tune;"
	@echo "the sweep is the parent run, its trials are nested under it)."

# Use the winner (README, "Use the winner"). MODEL: models:/<study>@champion, models:/NAME/3,
# runs:/<run id>; eval also takes a checkpoint file. The store is MLRUNS's, unless
# MLFLOW_TRACKING_URI says otherwise.
MODEL ?=
STUDY ?=
INPUT ?=
OUTPUT ?= predictions.csv
SERVE_PORT ?= 5002
TRACKING ?= $(or $(MLFLOW_TRACKING_URI),sqlite:///$(MLRUNS)/mlflow.db)
best: install  ## the best trial of STUDY and the command that retrains it
	$(PY) train.py best $(STUDY) --storage sqlite:///$(MLRUNS)/optuna.db $(ARGS)

eval: install  ## test MODEL again (ARGS: overrides, e.g. data=...), recorded in MLflow
	MLFLOW_TRACKING_URI=$(TRACKING) $(PY) train.py eval $(MODEL) $(ARGS)

predict: install  ## MODEL's predictions for INPUT (.csv, .npy, a folder of images) to OUTPUT
	MLFLOW_TRACKING_URI=$(TRACKING) $(PY) train.py predict $(MODEL) $(INPUT) -o $(OUTPUT) $(ARGS)

# MLflow's scoring server on this machine's environment (no conda or virtualenv to fetch),
# on 127.0.0.1 unless HOST says otherwise: POST /invocations {"inputs": [...]}.
serve: install
	PATH=$(abspath $(VENV))/bin:$$PATH MLFLOW_TRACKING_URI=$(TRACKING) $(VENV)/bin/mlflow models serve \
		-m '$(MODEL)' --env-manager local --host $(HOST) --port $(SERVE_PORT)

# The pruning benchmark takes 10-15 minutes a seed on a 2-core CPU; a seed already measured with
# the same settings is read back from bench/results/, so an interrupted `make bench` resumes.
SEEDS ?= 0 1 2 3 4 5
bench: install  ## benchmarks (not tests); DATA_DIR holds MNIST/raw
	$(PY) bench/speed.py --data-dir $(DATA_DIR)
	$(PY) bench/pruning.py --data-dir $(DATA_DIR) --trials 40 --epochs 15 --train-fraction 0.25 \
		--seeds $(SEEDS) --variant hydra/sweeper/pruner=successive_halving

# Random, TPE, TPE + successive halving and GP on the same budget: best val/acc against wall time
# and epochs (docs/img/search-*.png). About 15 (digits) and 20 (MNIST) minutes a seed on a
# 2-core CPU; resumes like `bench`.
bench-search: install  ## search quality of the samplers; DATA_DIR holds MNIST/raw
	$(PY) bench/search.py --trials 40 --epochs 20 --seeds $(SEEDS)
	$(PY) bench/search.py --dataset mnist --data-dir $(DATA_DIR) --trials 40 --epochs 15 \
		--train-fraction 0.25 --seeds $(SEEDS)

test: dev browser
	$(PY) -m pytest -n 2 $(ARGS)

# The in-process unit tests: no training run, no subprocess (no `slow`, no `cli` marker).
test-fast: dev
	$(PY) -m pytest -n 2 -m "not slow and not cli" $(ARGS)

lint: dev
	$(VENV)/bin/ruff check src $(SWEEPER) tests bench train.py examples
	$(VENV)/bin/ruff format --check src $(SWEEPER) tests bench train.py examples
	$(VENV)/bin/mypy

ui: install  ## the store under MLRUNS on 127.0.0.1:PORT
	mkdir -p $(MLRUNS)
	$(PY) -m mlflow ui --host 127.0.0.1 --port $(PORT) \
		--backend-store-uri sqlite:///$(MLRUNS)/mlflow.db --default-artifact-root $(MLRUNS)/artifacts

dashboard: install  ## optuna-dashboard on the studies in $(MLRUNS)/optuna.db, on 127.0.0.1 only
	$(VENV)/bin/optuna-dashboard --host 127.0.0.1 --port $(DASHBOARD_PORT) \
		sqlite:///$(MLRUNS)/optuna.db

# TensorBoard over the runs that had logger=[mlflow,tensorboard] (or logger=tensorboard): each
# writes to its output dir, under tensorboard/. LOGDIR: another folder (one sweep's, say).
LOGDIR ?= multirun,outputs
TB_PORT ?= 6006
tensorboard: install  ## on HOST:TB_PORT (127.0.0.1:6006)
	$(VENV)/bin/tensorboard --logdir_spec $(LOGDIR) --host $(HOST) --port $(TB_PORT)

# A tracking server for trials on several machines: they log over HTTP with
# MLFLOW_TRACKING_URI=http://HOST:$(SERVER_PORT); artifacts go through it to $(MLRUNS)/server-artifacts.
# BACKEND=postgresql://... for a database server; HOST=0.0.0.0 to listen beyond this machine.
HOST ?= 127.0.0.1
server: install
	mkdir -p $(MLRUNS)
	$(PY) -m mlflow server --host $(HOST) --port $(SERVER_PORT) \
		--backend-store-uri $(BACKEND) --artifacts-destination $(MLRUNS)/server-artifacts

# A local PostgreSQL for studies (and a tracking server's runs) that several sweeps share:
# Debian's package, listening on 127.0.0.1 only; a role owning PG_DATABASES. Idempotent.
PG_PORT ?= 5432
PG_USER ?= lit_tune
PG_PASSWORD ?= lit_tune
PG_DATABASES ?= optuna mlflow
export PG_PORT PG_USER PG_PASSWORD PG_DATABASES  # to the script, quotes and all
postgres:  ## prints the URLs to use
	$(SUDO) env PG_PORT="$$PG_PORT" PG_USER="$$PG_USER" PG_PASSWORD="$$PG_PASSWORD" \
		PG_DATABASES="$$PG_DATABASES" scripts/postgres.sh start

postgres-stop:
	$(SUDO) scripts/postgres.sh stop

clean:  ## run outputs and caches; keeps the MLflow store and the venv
	rm -rf outputs multirun .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean  ## also the MLflow store and the venv
	find mlruns -mindepth 1 -not -name .gitkeep -delete
	rm -rf $(VENV)
