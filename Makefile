# Every target creates .venv on first use; see README.md.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Installed on its own, first: pip then takes the local CPU wheel, and nothing later can
# pull an unpinned multi-GB CUDA build. Keep in step with requirements.txt (a test checks).
TORCH  := torch==2.13.0

# `LLM_NAME='value' ` when make's variable NAME was given on the command line, else nothing.
from_command_line = $(if $(filter command line,$(origin $(1))),LLM_$(1)='$($(1))' )

.PHONY: install install-dev serve test lint typecheck unit tools lint-deploy soak fuzz bench clean \
	test-slow test-router install-peers bench-peers bench-quant image-tools image-base image \
	image-test image-cuda-check gpu-wheels

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

# The shipped language model and classifier on http://127.0.0.1:8000: the settings' own
# defaults, which every LLM_* variable overrides (LLM_PORT=9000 make serve). No flag is
# passed here, since a flag would shadow the variable. HOST, PORT and MODEL given on make's
# command line (make serve PORT=9000 HOST=0.0.0.0) become LLM_HOST, LLM_PORT, LLM_MODEL; the
# same names in the environment are ignored (PORT is often set there for something else).
serve: $(BIN)/.installed
	$(call from_command_line,HOST)$(call from_command_line,PORT)$(call \
		from_command_line,MODEL)$(BIN)/python -m app serve

lint: $(BIN)/.installed-dev
	$(BIN)/ruff check app tests bench

typecheck: $(BIN)/.installed-dev
	$(BIN)/mypy

# Tools the deployment checks use that are not Python test dependencies: promtool
# (Debian's prometheus package; needs root and apt) and checkov (its own venv, because its
# dependency pins clash with ours); and Debian's fortunes package, the held-out data of
# the shipped models' accuracy tests; and Debian's chromium, the browser that Playwright
# drives in tests/browser (Playwright's own browser download cannot be reached here); g++ for
# torch.compile and the quantized C++ kernels; curl, which the browser tests run.
# A tool that cannot be installed: locally its tests skip with the reason (listed here and
# in pytest's summary); under CI=true this target fails naming it, as those tests would.
# TOOLS_VENV and FORTUNES_DIR are variables so that a test can point them at nothing.
TOOLS_VENV   ?= .venv-tools
FORTUNES_DIR ?= /usr/share/games/fortunes

tools:
	@missing=""; \
	apt_get_install() { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends "$$1" >/dev/null; }; \
	command -v promtool >/dev/null || apt_get_install prometheus || true; \
	command -v promtool >/dev/null || missing="$$missing promtool"; \
	test -x $(TOOLS_VENV)/bin/checkov || ($(PYTHON) -m venv $(TOOLS_VENV) \
		&& $(TOOLS_VENV)/bin/pip install --quiet --disable-pip-version-check checkov==3.3.30) \
		|| true; \
	test -x $(TOOLS_VENV)/bin/checkov || missing="$$missing checkov"; \
	test -d $(FORTUNES_DIR) || apt_get_install fortunes || true; \
	test -d $(FORTUNES_DIR) || missing="$$missing fortunes"; \
	command -v chromium >/dev/null || apt_get_install chromium || true; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v g++ >/dev/null || apt_get_install g++ || true; \
	command -v g++ >/dev/null || missing="$$missing g++"; \
	command -v curl >/dev/null || apt_get_install curl || true; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(printf %s "$${CI:-}" | tr A-Z a-z)" = true ]; then \
			echo "error: make tools could not install:$$missing (CI=true: a missing tool" \
				"fails the run)" >&2; \
			exit 1; \
		fi; \
		echo "unavailable:$$missing: the tests that need them will be skipped"; \
	fi

# Tests marked slow (timing and memory thresholds) run in `make test-slow`, not here.
unit: $(BIN)/.installed-dev
	$(BIN)/python -m pytest -m "not slow and not gpu"

test-slow: $(BIN)/.installed-dev
	$(BIN)/python -m pytest -m slow

# Wheels the lent GPU machine lacks (its image has Python 3.12 with a CUDA torch, numpy,
# transformers, httpx, jinja2, pytest, ...; no network), for bench/gpu_check.sh, at the
# versions this venv runs: about 8 MB, so the repository (55 MB) and .whl fit the device
# tool's 64 MiB. Carry .whl with the device tool (`echo /.whl/ >> .git/info/exclude`).
GPU_WHEEL_PLATFORMS := manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_28_x86_64 \
	manylinux_2_31_x86_64
gpu-wheels: $(BIN)/.installed-dev
	$(BIN)/python -m pip freeze | grep -i -E '^(fastapi|fastapi[-_]offline|starlette|uvicorn|pydantic|pydantic[-_]core|pydantic[-_]settings|python-dotenv|annotated-types|annotated-doc|typing[-_]inspection|llguidance|pyzmq)==' \
		> /tmp/gpu-requirements.txt
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp $(foreach p,$(GPU_WHEEL_PLATFORMS),--platform $(p)) --dest .whl \
		-r /tmp/gpu-requirements.txt

# A stock vllm-router in front of three replicas under a longer load (make test runs 36
# requests through the kill-and-restart test; this runs 400).
test-router: $(BIN)/.installed-dev
	LLM_ROUTER_TEST_REQUESTS=400 $(BIN)/python -m pytest tests/clients/test_vllm_router.py

# Deployment checks alone: hadolint, kustomize + kubernetes-validate, CRD schemas
# (ServiceMonitor, InferencePool, HTTPRoute) and the GIE overlay's wiring, checkov, compose,
# promtool, and the image smoke test.
lint-deploy: $(BIN)/.installed-dev tools
	$(BIN)/python -m pytest tests/deploy

test: lint typecheck tools unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# ---------------------------------------------------------------- container image
# docs/DEPLOYMENT.md: commands, figures, and what CI proves. `make image` builds the
# Dockerfile with `docker build` where a Docker daemon answers, else with buildah (no daemon);
# on buildah the base is made from Debian packages (`make image-base`) unless PYTHON_IMAGE
# names another. This machine's pip certificates and wheel directory are passed as build
# inputs (a secret, a build context), never copied into the image; empty: not passed.
IMAGE         ?= llm-inference
VERSION       := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
BASE_IMAGE    ?= localhost/llm-inference-base:bookworm
DEBIAN_MIRROR ?= http://deb.debian.org/debian
IMAGE_CA      ?= $(firstword $(wildcard $(PIP_CERT) $(SSL_CERT_FILE) /etc/ssl/certs/ca-certificates.crt))
IMAGE_WHEELS  ?= $(firstword $(wildcard $(PIP_FIND_LINKS) $(shell $(PYTHON) -m pip config get \
	global.find-links 2>/dev/null)))
# Where a Docker daemon answers, docker builds and nothing else is needed. Recursive (=):
# asked only by the image targets, never by every make run.
HAVE_DOCKER    = $(shell docker info >/dev/null 2>&1 && echo yes)
PYTHON_IMAGE  ?= $(if $(HAVE_DOCKER),,$(BASE_IMAGE))

# buildah (runs the image in image-test; builds it where no Docker daemon answers) and
# debootstrap (makes the base then): Debian packages, installed when root and apt allow.
# Without them the image cannot be built or run, so a missing one fails, CI or not.
image-tools:
	@missing=""; \
	for tool in buildah $(if $(HAVE_DOCKER),,debootstrap); do \
		command -v $$tool >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
			&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $$tool >/dev/null; } || true; \
		command -v $$tool >/dev/null || missing="$$missing $$tool"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "error: make image-tools could not install:$$missing (Debian packages;" \
			"apt-get install them as root)" >&2; \
		exit 1; \
	fi

# Debian bookworm + python3 (3.11) with venv, pip and headers as a local image (about a
# minute; kept in buildah's storage and skipped when present: `buildah rmi $(BASE_IMAGE)`
# remakes it).
image-base: image-tools
	deploy/image/base.sh $(BASE_IMAGE) $(DEBIAN_MIRROR)

# $(IMAGE):$(VERSION) and $(IMAGE):latest. More builder arguments: IMAGE_BUILD_ARGS.
image: image-tools
	$(if $(filter $(BASE_IMAGE),$(PYTHON_IMAGE)),@$(MAKE) --no-print-directory image-base)
	PYTHON_IMAGE='$(PYTHON_IMAGE)' IMAGE_CA='$(IMAGE_CA)' IMAGE_WHEELS='$(IMAGE_WHEELS)' \
		deploy/image/build.sh $(IMAGE) $(VERSION)

# Runs the built image as its CMD and checks it (tests/image/check_image.py); builds it
# first when $(IMAGE):$(VERSION) is missing (`make image` rebuilds it after changes).
# It runs the image with buildah (a docker build is copied into buildah's storage first).
image-test: $(BIN)/.installed-dev image-tools
	@if [ -n "$(HAVE_DOCKER)" ]; then docker image inspect $(IMAGE):$(VERSION) >/dev/null 2>&1; \
	else buildah inspect --type image $(IMAGE):$(VERSION) >/dev/null 2>&1; fi \
		|| $(MAKE) --no-print-directory image
	$(if $(HAVE_DOCKER),buildah pull --quiet docker-daemon:$(IMAGE):$(VERSION) >/dev/null)
	$(BIN)/python -m tests.image.check_image $(IMAGE):$(VERSION)

# The CUDA variant without downloading it: which torch wheel the build would install from
# TORCH_INDEX_URL (a CUDA wheel index), resolved for the image's Python and platform.
image-cuda-check: $(BIN)/.installed-dev
	@test -n "$(TORCH_INDEX_URL)" || { echo "error: give TORCH_INDEX_URL=<CUDA wheel index>" >&2; exit 1; }
	$(BIN)/python -m tests.image.cuda_wheel --index-url '$(TORCH_INDEX_URL)'

# ---------------------------------------------------------------- shipped models
# Re-creates the shipped checkpoints, the speculative draft and the example LoRA adapter
# from scratch (about 70 minutes on 2 cores).
# Data: Debian's fortunes package (BSD licence), see models/*/README.md.
DATA := data/fortunes
LM_TRAIN_FLAGS := --vocab-size 8192 --family llama --hidden 256 --layers 6 --heads 8 \
	--kv-heads 4 --intermediate 704 --context 256 --steps 1200 --batch-size 16 --lr 1e-3 \
	--warmup 100 --eval-every 200 --save-every 200 --precision bf16 --threads 2 --seed 0
# the speculative draft (models/default-lm-draft), distilled from default-lm's own greedy
# continuations of 1,500 training-split openings
DRAFT_TRAIN_FLAGS := --val-fraction 0.05 --teacher models/default-lm --distill-weight 0.5 \
	--family llama --hidden 128 --layers 2 --heads 4 --kv-heads 2 --intermediate 384 \
	--context 256 --steps 250 --batch-size 12 --lr 3e-3 --warmup 20 --eval-every 125 \
	--save-every 125 --precision bf16 --threads 2 --seed 0
CLF_TRAIN_FLAGS := --steps 500 --batch-size 32 --lr 2e-4 --warmup 30 --eval-every 100 \
	--max-length 128 --precision bf16 --threads 2 --seed 0
LORA_TRAIN_FLAGS := --rank 8 --alpha 16 --dropout 0.05 --steps 40 --batch-size 16 --lr 2e-3 \
	--warmup 5 --eval-every 20 --precision bf16 --threads 2 --seed 0
LORA_DESCRIPTION := Specialises default-lm, which was trained on fortune cookies only, in Python \
	source code: the \`json\`, \`email\`, \`http\`, \`urllib\` and \`logging\` packages of the \
	CPython 3.11 standard library (PSF licence; already on any machine that runs this project, \
	so nothing is downloaded), one document per file. Held out: the \`concurrent\` package. \
	General text: the held-out fortunes (\`data/fortunes/lm/val.jsonl\`, from \`python -m app \
	data fortunes\`), which neither the base nor the adapter was trained on.

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
	stdlib=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])') && \
	$(BIN)/python -m app train lora $$stdlib/json $$stdlib/email $$stdlib/http \
		$$stdlib/urllib $$stdlib/logging --val $$stdlib/concurrent \
		--general $(DATA)/lm/val.jsonl --base models/default-lm \
		--out models/default-lm-lora-python $(LORA_TRAIN_FLAGS) \
		--description "$(LORA_DESCRIPTION)"
	$(BIN)/python -m bench.greedy_corpus $(DATA)/lm/train.jsonl --out $(DATA)/lm/greedy.jsonl \
		--prompts 1500 --tokens 112
	$(BIN)/python -m app train lm $(DATA)/lm/greedy.jsonl --out models/default-lm-draft \
		$(DRAFT_TRAIN_FLAGS)

# ---------------------------------------------------------------- long suites, benchmarks
# ~10 minutes of mixed load with disconnects; writes docs/soak.json.
soak: $(BIN)/.installed-dev
	SOAK_SECONDS=$${SOAK_SECONDS:-600} SOAK_REPORT=docs/soak.json \
		$(BIN)/python -m pytest tests/reliability/test_soak.py -q

# Thousands of schemathesis examples per operation.
fuzz: $(BIN)/.installed-dev
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-1000} \
		$(BIN)/python -m pytest tests/api/test_live_server.py -q -k schemathesis

# Engine benchmark against transformers (about 25 minutes); table in docs/PERFORMANCE.md.
bench: $(BIN)/.installed-dev
	$(BIN)/python -m bench.engine

# llama.cpp for bench-peers (optional): llama-cpp-python built from source for this CPU
# (6-25 min on 2 cores), then llama.cpp's own server, llama-server, from the source vendored
# in that package's sdist, into .peers/ (about 25 min more on 2 cores; skipped when built).
# Its build is tried on q8_0 / q4_0 weights and made again without AMX where it dies with
# SIGILL (VMs that report AMX but refuse its tiles); LLAMA_NO_AMX=1 skips the native try.
install-peers: $(BIN)/.installed-dev
	CMAKE_ARGS="-DGGML_NATIVE=ON" MAKEFLAGS=-j$$(nproc) CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/pip install --quiet -r requirements-peers.txt
	bash bench/build_llama_server.sh .peers/llama-server $(BIN)/python

# Ours against transformers (eager, compiled) and llama.cpp (if installed) in one run, on
# this machine (about 80 minutes on 2 cores), then our server against llama-server through
# HTTP at 1, 8 and 32 concurrent requests (bench.server_peer, where make install-peers built
# it: about 20 min more); JSON in docs/, tables in docs/PERFORMANCE.md.
bench-peers: $(BIN)/.installed-dev
	$(BIN)/python -m bench.peers

# Quantization: accuracy on the shipped models (needs Debian's fortunes) and kernel speed;
# the end-to-end figures against llama.cpp q8_0 / q4_0: python -m bench.peers --quantized.
bench-quant: $(BIN)/.installed-dev
	$(BIN)/python -m bench.quantization
