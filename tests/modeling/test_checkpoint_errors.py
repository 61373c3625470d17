"""Bad checkpoints fail at load with a message naming the file and the tensor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.checkpoint import CheckpointError, load_model


@pytest.fixture
def llama_dir(hf_checkpoint, tmp_path: Path) -> Path:
    source, _ = hf_checkpoint("llama_gqa_llama3")
    target = tmp_path / "ckpt"
    shutil.copytree(source, target)
    return target


def edit_config(directory: Path, **changes: object) -> None:
    path = directory / "config.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_missing_config(llama_dir: Path) -> None:
    (llama_dir / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json not found"):
        load_model(llama_dir)


def test_config_not_json(llama_dir: Path) -> None:
    (llama_dir / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_model(llama_dir)


def test_unknown_architecture_names_supported_ones(llama_dir: Path) -> None:
    edit_config(llama_dir, architectures=["FalconForCausalLM"], model_type="falcon")
    with pytest.raises(CheckpointError) as err:
        load_model(llama_dir)
    message = str(err.value)
    assert "'FalconForCausalLM' is not supported" in message
    assert "LlamaForCausalLM" in message and "GPT2LMHeadModel" in message


def test_unsupported_rope_scaling(llama_dir: Path) -> None:
    edit_config(llama_dir, rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                            "rope_theta": 10000.0})
    with pytest.raises(CheckpointError, match="rope scaling type 'yarn' is not supported"):
        load_model(llama_dir)


def test_unsupported_activation(llama_dir: Path) -> None:
    edit_config(llama_dir, hidden_act="mish")
    with pytest.raises(CheckpointError, match="activation 'mish' is not supported"):
        load_model(llama_dir)


def test_missing_weights_file(llama_dir: Path) -> None:
    (llama_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no weights in .*model\.safetensors"):
        load_model(llama_dir)


def test_missing_tensor(llama_dir: Path) -> None:
    file = llama_dir / "model.safetensors"
    tensors = load_file(file)
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, file)
    with pytest.raises(CheckpointError,
                       match=r"tensor 'model\.layers\.1\.self_attn\.k_proj\.weight' is missing"):
        load_model(llama_dir)


def test_wrong_shape(llama_dir: Path) -> None:
    file = llama_dir / "model.safetensors"
    tensors = load_file(file)
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(5, 64)
    save_file(tensors, file)
    with pytest.raises(CheckpointError) as err:
        load_model(llama_dir)
    assert "model.safetensors" in str(err.value)
    assert "'model.layers.0.mlp.up_proj.weight' has shape [5, 64]" in str(err.value)
    assert "[96, 64]" in str(err.value)


def test_truncated_safetensors(llama_dir: Path) -> None:
    file = llama_dir / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors"):
        load_model(llama_dir)


def test_garbage_safetensors(llama_dir: Path) -> None:
    (llama_dir / "model.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_model(llama_dir)


def test_bad_dtype_and_device(llama_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="unknown dtype 'float8'"):
        load_model(llama_dir, dtype="float8", device="cpu")
    with pytest.raises(CheckpointError, match="device"):
        load_model(llama_dir, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="CUDA is not available"):
            load_model(llama_dir, device="cuda")


def test_sharded_and_legacy_checkpoints_load_the_same(hf_checkpoint, tmp_path: Path) -> None:
    _, ref = hf_checkpoint("qwen2")
    sharded = tmp_path / "sharded"
    ref.save_pretrained(sharded, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").exists()
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(sharded / "config.json", legacy / "config.json")
    torch.save(ref.state_dict(), legacy / "pytorch_model.bin")
    ids = torch.arange(20)[None]
    with torch.no_grad():
        expected = ref(ids).logits
        for directory in (sharded, legacy):
            got = load_model(directory, dtype="float32", device="cpu").model.causal_lm_logits(ids)
            assert (got - expected).abs().max().item() <= 1e-4


def test_missing_shard(hf_checkpoint, tmp_path: Path) -> None:
    _, ref = hf_checkpoint("qwen2")
    ref.save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / victim).unlink()
    with pytest.raises(CheckpointError, match=f"weights shard {victim} not found"):
        load_model(tmp_path)


def test_mistral_sliding_window_caps_context(llama_dir: Path) -> None:
    edit_config(llama_dir, architectures=["MistralForCausalLM"], model_type="mistral",
                sliding_window=64)
    loaded = load_model(llama_dir, dtype="float32", device="cpu")
    assert loaded.config.max_model_len == 64


def test_auto_dtype_rule(hf_checkpoint) -> None:
    from app.checkpoint import (
        CPU_BF16_MIN_PARAMETERS,
        cpu_has_bf16,
        estimated_parameters,
        load_config,
        resolve_dtype,
    )

    directory, ref = hf_checkpoint("llama_gqa_llama3")
    cfg = load_config(directory)
    assert estimated_parameters(cfg) == sum(
        p.numel() for n, p in ref.named_parameters() if "norm" not in n)
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu, 1000) == torch.float32
    big = resolve_dtype("auto", cpu, CPU_BF16_MIN_PARAMETERS)
    assert big == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    assert resolve_dtype("float32", cpu, 10**12) == torch.float32


def test_the_engine_imports_no_checkpoint_module() -> None:
    """The engine runs a loaded model (app.modeling.loaded); reading and writing
    checkpoints is the server's and the CLI's business, not the engine's."""
    import subprocess
    import sys

    code = ("import sys, app.engine.engine, app.engine.runner; "
            "print(sorted(m for m in sys.modules if m.startswith('app.checkpoint')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout
