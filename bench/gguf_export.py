"""Write a Llama-family Hugging Face checkpoint to GGUF with the `gguf` package, so
llama.cpp runs the very weights our engine and `transformers` run (no network, no
llama.cpp convert script). Tensor names and the q/k row permutation follow llama.cpp's
converter for LlamaForCausalLM; the vocabulary is a placeholder of the right size
(llama.cpp is driven with token ids, so text never matters)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # transformers' rotate-half layout -> GGML's interleaved rotary layout
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape)


def export_llama(checkpoint: Path, out: Path, kind: str) -> Path:
    """checkpoint (HF LlamaForCausalLM directory) -> out/model-<kind>.gguf; kind: f32 | bf16
    | q8_0 | q4_0 (the output matrix Q8_0)."""
    import gguf
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype="float32")
    cfg = model.config
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    names = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    per_layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                 "post_attention_layernorm": "ffn_norm"}
    for i in range(cfg.num_hidden_layers):
        for ours, theirs in per_layer.items():
            names[f"model.layers.{i}.{ours}.weight"] = f"blk.{i}.{theirs}.weight"
    qtypes = {"f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
              "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
              "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
              "q4_0": (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0)}
    qtype, ftype = qtypes[kind]
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    tokens += [f"\u2581t{i}".encode() for i in range(cfg.vocab_size - len(tokens))]
    types = ([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
             + [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * (cfg.vocab_size - 259))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"model-{kind}.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"{checkpoint.name} ({kind})")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_rope_dimension_count(cfg.hidden_size // heads)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(getattr(cfg, "rope_theta", None) or 10000.0)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(ftype)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * cfg.vocab_size)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    for ours, theirs in names.items():
        array = state[ours]
        if ours.endswith("q_proj.weight"):
            array = _permute(array, heads)
        elif ours.endswith("k_proj.weight"):
            array = _permute(array, kv_heads)
        tensor_type = qtype
        if kind == "q4_0" and theirs == "output.weight":
            # As llama.cpp's own Q4 files (and our int4) do: the output matrix stays at
            # higher precision (llama-quantize picks Q6_K; the gguf package writes Q8_0).
            tensor_type = gguf.GGMLQuantizationType.Q8_0
        if array.ndim == 1 or tensor_type == gguf.GGMLQuantizationType.F32:  # norms: f32
            writer.add_tensor(theirs, np.ascontiguousarray(array, dtype=np.float32))
        else:
            writer.add_tensor(theirs, gguf.quants.quantize(array, tensor_type),
                              raw_dtype=tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
