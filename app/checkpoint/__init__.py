"""Load and save Hugging Face layout checkpoints.

A checkpoint is a directory: config.json, weights (model.safetensors, a sharded
model.safetensors.index.json, or a legacy pytorch_model.bin), and optionally
generation_config.json and the tokenizer files (see app.tokenizer). Every failure
becomes a CheckpointError that names the file and, where it applies, the tensor.

  files.py      file names, CheckpointError, reading JSON and config.json
  device.py     device and dtype resolution (`auto`)
  tensors.py    which file holds each tensor, memory-mapped reads
  hf.py         Hugging Face layout: read into our fused parameters, save back
  quantized.py  checkpoints written by `python -m app quantize`
  load.py       load_model: the above in order, for serving
  build.py      a fresh model for training
"""

from app.checkpoint.build import build_model
from app.checkpoint.device import (
    CPU_BF16_MIN_PARAMETERS,
    DTYPES,
    cpu_has_bf16,
    estimated_parameters,
    resolve_device,
    resolve_dtype,
)
from app.checkpoint.files import CheckpointError, load_config, read_json
from app.checkpoint.hf import save_model
from app.checkpoint.load import load_model
from app.checkpoint.quantized import save_quantized
from app.modeling.loaded import LoadedModel

__all__ = [
    "CPU_BF16_MIN_PARAMETERS",
    "DTYPES",
    "CheckpointError",
    "LoadedModel",
    "build_model",
    "cpu_has_bf16",
    "estimated_parameters",
    "load_config",
    "load_model",
    "read_json",
    "resolve_device",
    "resolve_dtype",
    "save_model",
    "save_quantized",
]
