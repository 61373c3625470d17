#!/usr/bin/env bash
# Build llama.cpp's own HTTP server (llama-server) for bench.server_peer, for this CPU, from
# the llama.cpp source vendored in the llama-cpp-python sdist of requirements-peers.txt (a
# registry package: no other download). About 25 minutes on 2 cores; nothing to do when the
# binary is already there. Prints the binary's path (bench/llama_server.py finds it there).
#   bench/build_llama_server.sh [DIR] [PYTHON]    (default DIR: .peers/llama-server)
# AMX: on VMs whose CPU reports AMX but whose hypervisor refuses its tiles, the native
# build dies with SIGILL on q8_0 / q4_0 weights. The native build is therefore tried on
# such weights (python -m bench.llama_server_probe) and, on SIGILL, built again without AMX
# (AVX-512, VNNI and BF16 kept) into build-noamx/. LLAMA_NO_AMX=1 goes there directly.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$root/.peers/llama-server}"
mkdir -p "$dir" && dir="$(cd "$dir" && pwd)"  # absolute: the steps below change folder
py="${2:-$root/.venv/bin/python}"
version="$(sed -n 's/^llama-cpp-python==//p' "$root/requirements-peers.txt")"
src="$dir/src/vendor/llama.cpp"
native="$src/build/bin/llama-server"
noamx="$src/build-noamx/bin/llama-server"

fetch_source() {
  [ -f "$dir/sdist.ok" ] && return
  mkdir -p "$dir" && rm -rf "$dir/src" "$dir"/llama_cpp_python-*.tar.gz
  "$py" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$dir" >&2
  mkdir "$dir/src"
  tar xzf "$dir"/llama_cpp_python-*.tar.gz -C "$dir/src" --strip-components=1
  touch "$dir/sdist.ok"
}

build() {  # build(FOLDER, CMAKE ISA FLAGS...)
  local out="$1"; shift
  (cd "$src" && cmake -B "$out" "$@" -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF \
     -DLLAMA_OPENSSL=OFF -DCMAKE_BUILD_TYPE=Release >&2 \
   && cmake --build "$out" --target llama-server -j"$(nproc)" >&2)
}

build_noamx() {
  [ -x "$noamx" ] || build build-noamx -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON \
    -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON \
    -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
}

probe() {  # exit status of bench.llama_server_probe: 0 runs, 3 SIGILL, else failed
  (cd "$root" && PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$py" -m bench.llama_server_probe "$1" "$dir/probe")
}

# An earlier run already found the native build dying (or LLAMA_NO_AMX asked for this).
if [ -x "$noamx" ] || [ -n "${LLAMA_NO_AMX:-}" ]; then
  [ -x "$noamx" ] || { fetch_source; build_noamx; }
  echo "$noamx"; exit 0
fi
[ -x "$native" ] || { fetch_source; build build -DGGML_NATIVE=ON; }
status=0; probe "$native" || status=$?
if [ "$status" = 0 ]; then echo "$native"; exit 0; fi
if [ "$status" != 3 ]; then
  echo "llama-server does not run here (probe exit $status): see the lines above" >&2; exit 1
fi
echo "the native llama-server died with SIGILL on quantized weights (AMX refused by this" \
     "VM?): building it again without AMX" >&2
fetch_source; build_noamx
probe "$noamx" || { echo "the AMX-free llama-server does not run either" >&2; exit 1; }
echo "$noamx"
