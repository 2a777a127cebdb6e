# The two commands of the README: `make study` (the notebook pipeline on the embedded synthetic
# cells, profile demo) and `make test`. Both create .venv from pyproject.toml when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROFILE ?= demo
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED = 1

.PHONY: study test smoke venv lab strip clean-runs

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (improve-study)" >/dev/null
	touch $(STAMP)

venv: $(STAMP)

study: $(STAMP)
	$(PY) -m improve_lib run --profile $(PROFILE) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest tests $(PYTEST_ARGS)

smoke: $(STAMP)
	$(PY) -m improve_lib run --profile smoke --run-dir runs/smoke --force $(ARGS)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks

# Strip outputs from the committed notebooks (executed copies live in run folders).
strip: $(STAMP)
	$(PY) -m improve_lib.notebook_tools strip notebooks/*.ipynb

clean-runs:
	rm -rf runs/smoke
