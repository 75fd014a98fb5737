# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= runs/demo
DEMO_ARGS ?=
# A second environment with the lowest versions pyproject.toml allows (its lower bounds are these pins;
# tests/test_models.py checks that they agree). torch comes from the same wheel as in $(VENV).
LOWEST_VENV := .venv-lowest
LOWEST_BIN := $(LOWEST_VENV)/bin
LOWEST_STAMP := $(LOWEST_VENV)/.installed-stamp
LOWEST_PINS := "numpy==1.26.*" "transformers==4.46.*" "tokenizers==0.20.*" "pyarrow==14.*" "webdataset==0.2.86"

.PHONY: demo test test-lowest install install-lowest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

$(LOWEST_BIN)/python:
	$(PYTHON) -m venv $(LOWEST_VENV)

$(LOWEST_STAMP): pyproject.toml Makefile | $(LOWEST_BIN)/python
	$(LOWEST_BIN)/pip install --quiet torch==2.13.0
	$(LOWEST_BIN)/pip install --quiet -e ".[test]" $(LOWEST_PINS)
	touch $(LOWEST_STAMP)

install-lowest: $(LOWEST_STAMP)

demo: install
	$(BIN)/cocu demo --out $(DEMO_OUT) $(DEMO_ARGS)

# The suite, then the tests marked `lowest` (data, curation, training, evaluation) under the lowest versions.
test: install install-lowest
	bash scripts/ensure_chromium.sh
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory test-lowest

test-lowest: install-lowest
	$(LOWEST_BIN)/python -m pytest -q -m lowest

clean:
	rm -rf $(VENV) $(LOWEST_VENV) runs
