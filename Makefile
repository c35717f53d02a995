# Two commands from a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing, installs torch==2.13.0 first (so no dependency pulls another
# torch build), then the package, then runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test

.PHONY: demo test install bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $(STAMP)

$(TSTAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[test]"
	touch $(TSTAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/infusion demo --run-dir runs/mnist-demo

test: $(TSTAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	$(VENV)/bin/infusion bench --preset mnist

clean:
	rm -rf $(VENV) build src/*.egg-info
