# The whole set-up: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-all demo lint clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, from the pinned CPU wheel, so nothing else can pull a CUDA build.
$(STAMP): $(BIN)/python setup.py
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest --run-slow

demo: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH bash scripts/demo.sh

lint: $(STAMP)
	$(BIN)/ruff check .

clean-demo:
	rm -rf demo_output
