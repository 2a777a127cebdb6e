# The two commands of the README: `make study` (the notebook pipeline on the embedded synthetic
# cells, profile demo) and `make test`. Both create .venv from pyproject.toml when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROFILE ?= demo
KERNEL_NAME := improve-study
LAB_PORT ?= 8888
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED = 1

.PHONY: study test smoke venv lab sweep report workshop wheelhouse lock strip clean-runs

# PIP_ARGS: e.g. "--no-index --find-links wheelhouse" on a classroom machine without network.
# requirements.lock pins every package to the versions the tests last passed with (pip constraints).
# EXTRAS: the optional extras of pyproject.toml installed too: the trackers of notebook 04's REPORT_TO whose curves
# the tests read back, and Playwright for the report site's browser check (EXTRAS=tensorboard,mlflow,browser,wandb
# adds W&B, unpinned; EXTRAS= installs none).
EXTRAS ?= tensorboard,mlflow,browser
PROJECT := .$(if $(EXTRAS),[$(EXTRAS)])
$(STAMP): pyproject.toml requirements.lock Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(PIP_ARGS) -c requirements.lock -e "$(PROJECT)"
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL_NAME) --display-name "Python 3 ($(KERNEL_NAME))" >/dev/null
	touch $(STAMP)

venv: $(STAMP)

study: $(STAMP)
	$(PY) -m improve_lib run --profile $(PROFILE) $(ARGS)

# The suite on TEST_WORKERS pytest-xdist processes (most tests wait on notebook kernels starting and importing,
# one core each; 2 suits CI's 2 cores); TEST_WORKERS=0 runs it in one process. Each worker makes its own
# shared smoke run (tests/conftest.py): xdist 3.8's --dist loadgroup does not group under pytest 9.2.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest tests -n $(TEST_WORKERS) $(PYTEST_ARGS)

smoke: $(STAMP)
	$(PY) -m improve_lib run --profile smoke --run-dir runs/smoke --force $(ARGS)

# JupyterLab on the project's kernel ("improve-study"), opened on the first notebook with the
# notebooks folder in the file browser. LAB_ARGS: e.g. "--no-browser" on a remote machine. As root
# (a container) it adds --allow-root, which Jupyter otherwise requires.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=$(CURDIR)/notebooks --port $(LAB_PORT) $(LAB_ARGS) \
		$(if $(filter 0,$(shell id -u)),--allow-root) \
		$(CURDIR)/notebooks/01_explore_data.ipynb

# A preset of params/ablations (PRESET=guidance), or your own grid through ARGS.
sweep: $(STAMP)
	$(PY) -m improve_lib sweep $(if $(PRESET),--preset $(PRESET)) $(ARGS)

# A static web site of a run, sweep or results folder (REPORT=results/ham10000), opened from disk: runs/reports/<name>.
REPORT ?= results/ham10000
report: $(STAMP)
	$(PY) -m improve_lib report $(REPORT) $(ARGS)

# Prepare a classroom machine ahead of time (network needed once, here): environment and kernel,
# an offline check of the whole pipeline (smoke profile) and the demo's data, embeddings and
# prototypes (01-03) with the embedding cache filled. See docs/workshop.md.
workshop: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m improve_lib run --profile smoke --run-dir runs/workshop-check --force --no-progress
	HF_HUB_OFFLINE=1 $(PY) -m improve_lib run --profile demo --run-dir runs/workshop-demo --only 01,02,03 --force
	$(PY) -m improve_lib.runs.workshop check $(if $(OPENCLIP_WEIGHTS),--open-clip $(OPENCLIP_WEIGHTS))

# Wheels of every dependency, for `make venv PIP_ARGS="--no-index --find-links wheelhouse"` offline.
wheelhouse: $(STAMP)
	$(PY) -m pip wheel --quiet --disable-pip-version-check --wheel-dir wheelhouse -c requirements.lock "$(PROJECT)" "setuptools>=68"

# Refresh requirements.lock: a fresh venv resolves pyproject.toml's ranges and EXTRAS (network needed), then pip freeze.
# Run make test afterwards: the lock records what the tests passed with.
LOCK_VENV := .lock-venv
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --disable-pip-version-check $(PIP_ARGS) -e "$(PROJECT)"
	{ sed -n '/^#/p' requirements.lock; $(LOCK_VENV)/bin/pip freeze --all --exclude-editable | grep -v "^pip=="; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock && rm -rf $(LOCK_VENV)

# Strip outputs from the committed notebooks (executed copies live in run folders).
strip: $(STAMP)
	$(PY) -m improve_lib.runs.notebook_tools strip notebooks/*.ipynb

clean-runs:
	rm -rf runs/smoke
