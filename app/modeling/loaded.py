"""A model loaded for serving, with what the engine needs to know about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.modeling.config import ModelConfig
from app.modeling.transformer import Transformer


@dataclass
class LoadedModel:
    path: Path
    config: ModelConfig
    model: Transformer
    dtype: torch.dtype
    device: torch.device
    generation_config: dict[str, Any] = field(default_factory=dict)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """End-of-sequence ids from config.json and generation_config.json together:
        chat models often list their end-of-turn token only in the latter."""
        ids = list(self.config.eos_token_ids)
        value = self.generation_config.get("eos_token_id")
        for token in value if isinstance(value, list) else [value]:
            if isinstance(token, int) and not isinstance(token, bool) and token not in ids:
                ids.append(token)
        return tuple(ids)
