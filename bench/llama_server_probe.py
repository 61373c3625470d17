"""Does a llama-server binary run quantized weights on this machine? Used by
bench/build_llama_server.sh after a native build: on VMs whose CPU reports AMX but whose
hypervisor refuses its tiles, llama.cpp's AMX path dies with SIGILL on q8_0 / q4_0
weights (even after the kernel granted tile permission), and the script then builds it
again without AMX.

    python -m bench.llama_server_probe BINARY [GGUF_DIR]
        # exit 0: runs; 3: SIGILL; 1: other failure

It writes a small random Llama as q8_0 and q4_0 GGUF, starts the server on each (its
warm-up run on), and asks it for a few tokens.
"""

from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path

import httpx

from bench.llama_server import LlamaServer

OK, FAILED, SIGILL = 0, 1, 3


def classify(returncode: int | None) -> int:
    """The probe's exit status from the server process's: still running (None) is OK; a
    SIGILL (negative signal number from Popen, or a shell's 128 + 4) asks for the
    AMX-free build; anything else is a failure a rebuild would not cure."""
    if returncode is None:
        return OK
    if returncode in (-signal.SIGILL, 128 + signal.SIGILL):
        return SIGILL
    return FAILED


def tiny_llama(directory: Path) -> Path:
    """Random weights of a size whose matrices take llama.cpp's quantized (and, where
    the CPU has it, AMX) paths: every dimension a multiple of 256."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=512,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(config).eval().save_pretrained(directory)
    return directory


def probe_one(binary: Path, gguf: Path) -> tuple[int, str]:
    server = LlamaServer(binary, gguf, 2, 1, 256, ready_timeout=120)
    try:
        with server as live:
            r = httpx.post(live.url + "/completion", json={
                "prompt": list(range(10, 42)), "n_predict": 4, "ignore_eos": True,
                "temperature": 0}, timeout=120)
            r.raise_for_status()
    except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
        code = server.proc.poll() if server.proc else None
        status = classify(code)
        return (status if status != OK else FAILED), f"{type(exc).__name__}: {exc}"
    return OK, "ok"


KINDS = ("q8_0", "q4_0")


def probe_models(directory: Path) -> list[Path]:
    """The probe's GGUF files in `directory`, written there the first time (the build
    script keeps them beside the build, so a second probe needs neither torch nor time)."""
    paths = [directory / f"model-{kind}.gguf" for kind in KINDS]
    if not all(p.is_file() for p in paths):
        from bench.gguf_export import export_llama

        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = tiny_llama(Path(tmp) / "tiny-llama")
            paths = [export_llama(checkpoint, directory, kind) for kind in KINDS]
    return paths


def main() -> None:
    binary = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tmp)
        for gguf in probe_models(models):
            status, detail = probe_one(binary, gguf)
            print(f"llama-server on {gguf.name}: {detail}", file=sys.stderr)
            if status != OK:
                sys.exit(status)


if __name__ == "__main__":
    main()
