"""A freshly initialised model, for training from scratch."""

from __future__ import annotations

import torch

from app.modeling.config import ModelConfig
from app.modeling.transformer import Transformer


def build_model(cfg: ModelConfig, seed: int | None = None) -> Transformer:
    """A freshly initialised model for training (float32, CPU)."""
    model = Transformer(cfg)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    model.init_weights(generator)
    model.init_rope(torch.device("cpu"))
    return model
