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

# ---------------------------------------------------------------- shipped models
# Re-creates both shipped checkpoints from scratch (about 45 minutes on 2 cores).
# Data: Debian's fortunes package (BSD licence), see models/*/README.md.
DATA := data/fortunes
LM_TRAIN_FLAGS := --vocab-size 8192 --family llama --hidden 256 --layers 6 --heads 8 \
	--kv-heads 4 --intermediate 704 --context 256 --steps 1200 --batch-size 16 --lr 1e-3 \
	--warmup 100 --eval-every 200 --save-every 200 --precision bf16 --threads 2 --seed 0
CLF_TRAIN_FLAGS := --steps 500 --batch-size 32 --lr 2e-4 --warmup 30 --eval-every 100 \
	--max-length 128 --precision bf16 --threads 2 --seed 0

.PHONY: models model-data

model-data: $(BIN)/.installed
	@test -d /usr/share/games/fortunes || (apt-get update && apt-get install -y fortunes)
	$(BIN)/python -m app data fortunes --out $(DATA)

models: model-data
	$(BIN)/python -m app train lm $(DATA)/lm/train.jsonl --val $(DATA)/lm/val.jsonl \
		--out models/default-lm $(LM_TRAIN_FLAGS)
	$(BIN)/python -m app train classifier $(DATA)/classifier/train.jsonl \
		--test $(DATA)/classifier/test.jsonl --base models/default-lm \
		--out models/fortune-classifier $(CLF_TRAIN_FLAGS)
