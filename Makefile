# vision-opd: the two Quick start commands of the README live here.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test train-tiny clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

setup: $(BIN)/python
	# torch pinned: 2.13.0 is the CPU build (an open range can pull a multi-GB CUDA build)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"

demo: setup
	$(BIN)/vision-opd demo

test: setup
	$(BIN)/python -m pytest --durations=10

clean:
	rm -rf runs data/synth .pytest_cache
