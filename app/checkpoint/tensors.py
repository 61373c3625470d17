"""Which file of a checkpoint holds each tensor (one safetensors file, shards, or a
legacy PyTorch file), with lazy memory-mapped reads."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from app.checkpoint.files import (
    SAFETENSORS_FILE,
    SAFETENSORS_INDEX,
    TORCH_BIN_FILE,
    CheckpointError,
    read_json,
)
from app.modeling.weights import BODY_PREFIXES


class TensorIndex:
    """Which file holds each tensor, with lazy memory-mapped reads."""

    def __init__(self, directory: Path, stack: ExitStack) -> None:
        self.directory = directory
        self.where: dict[str, Path] = {}
        self._handles: dict[Path, Any] = {}
        self._torch_state: dict[str, Tensor] = {}
        index = directory / SAFETENSORS_INDEX
        single = directory / SAFETENSORS_FILE
        legacy = directory / TORCH_BIN_FILE
        if single.exists():
            self._open_safetensors(single, stack)
        elif index.exists():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: has no 'weight_map' object")
            for shard in sorted(set(weight_map.values())):
                self._open_safetensors(directory / shard, stack)
        elif legacy.exists():
            try:
                state = torch.load(legacy, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:
                raise CheckpointError(f"{legacy}: unreadable PyTorch weights file ({exc})") from exc
            if not isinstance(state, dict):
                raise CheckpointError(f"{legacy}: expected a state dict")
            self._torch_state = state
            self.where = {name: legacy for name in state}
        else:
            raise CheckpointError(
                f"no weights in {directory}: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} "
                f"or {TORCH_BIN_FILE}"
            )

    def _open_safetensors(self, file: Path, stack: ExitStack) -> None:
        if not file.exists():
            raise CheckpointError(f"weights shard {file.name} not found in {file.parent}")
        try:
            handle = stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
        except Exception as exc:
            raise CheckpointError(
                f"{file}: not a readable safetensors file (truncated or corrupt?): {exc}"
            ) from exc
        self._handles[file] = handle
        for name in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
            self.where[name] = file

    def resolve(self, name: str) -> str | None:
        """The stored name of `name`, allowing a bare-body export without the prefix."""
        if name in self.where:
            return name
        for prefix in BODY_PREFIXES:
            if name.startswith(prefix) and name[len(prefix):] in self.where:
                return name[len(prefix):]
        return None

    def shape(self, stored: str) -> tuple[int, ...]:
        file = self.where[stored]
        if file in self._handles:
            return tuple(self._handles[file].get_slice(stored).get_shape())
        return tuple(self._torch_state[stored].shape)

    def read(self, stored: str) -> Tensor:
        file = self.where[stored]
        try:
            if file in self._handles:
                return self._handles[file].get_tensor(stored)
            return self._torch_state[stored]
        except Exception as exc:
            raise CheckpointError(f"{file}: cannot read tensor {stored!r} ({exc})") from exc
