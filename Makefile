# Every target that needs the environment depends on `install`, which builds .venv once
# (again only when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?= ../shared/data
ARGS ?=

.PHONY: install train sweep test lint ui clean distclean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: install  ## one run on digits; e.g. make train ARGS="model=cnn optimizer=sgd"
	$(PY) train.py $(ARGS)

# Until the Optuna sweeper lands: Hydra's basic sweeper over three optimizers.
sweep: install
	$(PY) train.py -m optimizer=sgd,nesterov,adam trainer.max_epochs=15 $(ARGS)
	@echo "Compare the runs: make ui, then http://127.0.0.1:5000 (experiment lit_tune)."
	@echo "Per-run outputs and checkpoints: multirun/ (newest folder)."

test: install
	$(PY) -m pytest -n 2 $(ARGS)

lint: install
	$(VENV)/bin/ruff check src tests train.py
	$(VENV)/bin/ruff format --check src tests train.py
	$(VENV)/bin/mypy

ui: install
	mkdir -p mlruns
	$(PY) -m mlflow ui --host 127.0.0.1 --port 5000 \
		--backend-store-uri sqlite:///mlruns/mlflow.db --default-artifact-root ./mlruns/artifacts

clean:  ## run outputs and caches; keeps the MLflow store and the venv
	rm -rf outputs multirun .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean  ## also the MLflow store and the venv
	find mlruns -mindepth 1 -not -name .gitkeep -delete
	rm -rf $(VENV)
