#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (the device tool's `run`), which has
# Python 3.12 with a CUDA PyTorch and no network: it installs the project's other runtime
# and test packages from wheels carried in .whl/ (make gpu-wheels makes them here), then
#   1. the CUDA fidelity tests (tests/gpu: engine against transformers on the GPU, bf16,
#      a real server picking the GPU),
#   2. the engine benchmark on the GPU (bench.engine_pair, fp32 and bf16),
# writing everything to $OUT (or /tmp/gpu-check). Usage, from the repository root there:
#   bash bench/gpu_check.sh
set -uo pipefail
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
# The device's own torch stays: a venv that sees the system packages, ours added on top.
python3 -m venv --system-site-packages /tmp/gpu-venv
py=/tmp/gpu-venv/bin/python
if [ -d .whl ]; then
  $py -m pip install --quiet --no-index --no-deps --find-links .whl .whl/*.whl
fi
$py -m pip install --quiet --no-index --no-deps --no-build-isolation -e . || true
$py -c "import fastapi, llguidance, pydantic_settings, uvicorn" || {
  echo "missing packages: run make gpu-wheels here and carry .whl"; exit 2; }
status=0
LLM_COMPILE=off $py -m pytest -m gpu tests/gpu -p no:cacheprovider -q \
  --junitxml="$out/gpu_tests.xml" || status=1
for dtype in float32 bfloat16; do
  $py -m bench.engine_pair "$dtype" none --device cuda > "$out/engine_$dtype.json" || status=1
  cat "$out/engine_$dtype.json"
done
exit $status
