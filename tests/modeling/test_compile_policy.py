"""--compile: off stays eager, auto falls back to eager with the reason where compiling is
impossible, on refuses to start there; GPUs stay eager under auto."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

import app.modeling.compile as compile_module
from app.checkpoint import load_model
from app.modeling.compile import CompileError, compile_model


def test_compile_modes_and_fallback(hf_checkpoint: Any, monkeypatch: Any) -> None:
    directory, _ = hf_checkpoint("llama_gqa_llama3")
    model = load_model(directory, dtype="float32", device="cpu").model
    cpu = torch.device("cpu")
    off = compile_model(model, cpu, "off")
    assert not off.ops.compiled and off.decode is None and "off" in off.reason
    cuda = compile_model(model, torch.device("cuda"), "auto")
    assert not cuda.ops.compiled and "CPUs only" in cuda.reason
    monkeypatch.setattr(compile_module, "compiler_problem", lambda: "no C++ compiler found")
    fallback = compile_model(model, cpu, "auto")
    assert not fallback.ops.compiled and "no C++ compiler found" in fallback.reason
    with pytest.raises(CompileError, match=re.escape("no C++ compiler found")):
        compile_model(model, cpu, "on")
    with pytest.raises(ValueError, match="compile mode"):
        compile_model(model, cpu, "sometimes")
