# Every target creates .venv on first use; see README.md.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Installed on its own, first: pip then takes the local CPU wheel, and nothing later can
# pull an unpinned multi-GB CUDA build. Keep in step with requirements.txt (a test checks).
TORCH  := torch==2.13.0

HOST  ?= 0.0.0.0
PORT  ?= 8000

.PHONY: install install-dev serve test lint typecheck unit clean

$(BIN)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(BIN)/.installed
install-dev: $(BIN)/.installed-dev

serve: $(BIN)/.installed
	$(BIN)/python -m app generate --model models/default-lm --prompt "def main():" --max-tokens 48

lint: $(BIN)/.installed-dev
	$(BIN)/ruff check app tests bench

typecheck: $(BIN)/.installed-dev
	$(BIN)/mypy

unit: $(BIN)/.installed-dev
	$(BIN)/python -m pytest

test: lint typecheck unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
