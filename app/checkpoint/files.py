"""The files of a checkpoint directory, its error type, and reading its JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.modeling.config import ConfigError, ModelConfig, config_from_hf

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN_FILE = "pytorch_model.bin"
GENERATION_CONFIG_FILE = "generation_config.json"


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded; the message names the file and tensor."""


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path.name} not found in {path.parent}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def load_config(path: Path) -> ModelConfig:
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    raw = read_json(path / CONFIG_FILE)
    try:
        return config_from_hf(raw)
    except ConfigError as exc:
        raise CheckpointError(f"{path / CONFIG_FILE}: {exc}") from exc
