# syntax=docker/dockerfile:1
# A CPU image needs the CPU torch wheel: on a plain package index torch==2.13.0 for Linux
# is the CUDA build (GBs of NVIDIA libraries). Give it as a wheel directory (below) or an
# index:
#   docker build --build-arg TORCH_INDEX_URL=<CPU wheel index> -t llm-inference:0.1.0 .
# CUDA image: a CUDA torch wheel index; its wheels bundle the CUDA runtime, so the same
# slim Python base serves both.
#   docker build --build-arg TORCH_INDEX_URL=<CUDA 12.x wheel index> -t llm-inference:cuda .
# Inputs of machines behind an inspecting proxy or with a local wheel mirror, never baked
# into a layer (`make image` passes this machine's, docs/DEPLOYMENT.md):
#   --secret id=ca,src=<CA bundle, PEM>       the certificates pip trusts in the build
#   --build-context wheels=<directory>        wheels pip looks at before the index
# PYTHON_IMAGE may name a local base: `make image-base` makes one from Debian packages.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# No wheel directory given: this empty stage is the one mounted.
FROM scratch AS wheels

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
# Package indexes are build arguments: the repository names no registry host.
ARG TORCH_INDEX_URL=""
ARG PIP_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_INDEX_URL=${PIP_INDEX_URL}
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The same requirements.txt the Makefile installs: one list of dependencies.
COPY requirements.txt ./
# With TORCH_INDEX_URL torch comes from that index alone: a CPU wheel in the wheel
# directory would outrank a CUDA one whose version has no local label.
RUN --mount=type=secret,id=ca \
    --mount=type=bind,from=wheels,target=/wheels \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"; \
    else \
        pip install --find-links /wheels "torch==${TORCH_VERSION}"; \
    fi \
    && PIP_FIND_LINKS=/wheels pip install -r requirements.txt
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --no-deps --no-build-isolation . \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="llm-inference" \
      org.opencontainers.image.description="LLM inference: predict, generate, classify, OpenAI-compatible API, Prometheus metrics"
# A C++ compiler, for --compile auto (torch.compile builds CPU kernels at startup: about
# 2x faster decoding, see docs/PERFORMANCE.md) and the quantized kernels. Without one the
# server runs eager, and quantized products dequantize in PyTorch.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++=4:12.2.0-3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
# The quantized-matmul kernels (--quantization), built for this build machine's CPU kind
# beside the package; a CPU of another kind builds its own at first use into $HOME/.cache
# (/tmp here), which takes 20-60 s (see app/kernels/build.py).
RUN /opt/venv/bin/python -m app.kernels.build --prebuilt \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +
# The shipped default models; mount others and point LLM_MODEL at them.
COPY models/default-lm /models/default-lm
COPY models/fortune-classifier /models/fortune-classifier
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    LLM_HOST=0.0.0.0 \
    LLM_PORT=8000 \
    LLM_MODEL=default-lm=/models/default-lm,fortune-classifier=/models/fortune-classifier
# The only writable path: /tmp (a tmpfs when the root filesystem is read-only).
VOLUME ["/tmp"]
USER 10001:10001
EXPOSE 8000
# Startup includes compiling and warming up each model (tens of seconds on 2 cores). The
# port is the server's own setting, so LLM_PORT=9000 moves the probe with it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/readyz' % os.environ.get('LLM_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(url, timeout=2).status == 200 else 1)"]
# Exec form: python is PID 1 and receives SIGTERM itself (graceful drain).
CMD ["python", "-m", "app", "serve"]
