"""Quantization: accuracy on the shipped models and kernel speed, in one run.

    python -m bench.quantization            # needs Debian's fortunes package (make model-data)
    python -m bench.quantization --kernel idot --skip-speed   # accuracy with that kernel forced

Accuracy (default-lm on its validation split, fortune-classifier on its test split):
perplexity and greedy next-token agreement with fp32 for int8, int4 at each group size,
and int4 without zero points (symmetric, q - 8 times a scale: the form llama.cpp's Q4_0
uses), which shows whether the zero points pay for their 16 bits a group. With
`--kernel NAME` every quantized product that kernel takes runs on it at every row count
(the server runs it for up to 64 rows where the startup choice picks it): the accuracy
of a kernel that rounds more than the weights (idot quantizes the activations).

Speed: the products of the 134M Llama-style layout (768 -> 3072, cold: 12 different
weights, as a decode step streams them) at 1, 16 and 32 rows, each kernel available here
against the plain bf16 / fp32 product; GB/s counts the quantized bytes a product reads.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F

from app.checkpoint import CheckpointError, load_model
from app.modeling import quantized_linear
from app.modeling.quant_kernels import candidates, offer_integer_kernels, supported
from app.modeling.quantized_linear import KernelPlan, QuantizedLinear
from app.modeling.quantized_model import block_products, quantized_layers
from app.tokenizer import Tokenizer
from app.train.data import pack_tokens, read_documents, read_labelled
from app.train.evaluate import nll_and_argmax, predict_labels
from bench.machine import cpu_info, cpu_line, median_seconds, wait_idle

ROOT = Path(__file__).resolve().parents[1]


def symmetric_int4(model: torch.nn.Module, group: int) -> None:
    """Replace each block product's float weight by its symmetric int4 round trip."""
    for parent, name in block_products(model):
        layer = getattr(parent, name)
        w = layer.weight.detach().float()
        n, k = w.shape
        g = w.view(n, k // group, group)
        scale = (g.abs().amax(-1, keepdim=True) / 7.0).clamp(min=1e-8).half().float()
        q = torch.round(g / scale).clamp(-8, 7)
        layer.weight.copy_((q * scale).view(n, k))


def lm_figures(model: torch.nn.Module, rows: torch.Tensor) -> tuple[float, torch.Tensor]:
    nll, argmax = nll_and_argmax(model, rows)
    return math.exp(nll), argmax


@contextmanager
def every_row_count() -> Iterator[None]:
    """Layers run their planned kernel at every row count (the server's layers run
    dequant above 64 rows), so a forced kernel sees the evaluation's long sequences."""
    with mock.patch.object(quantized_linear, "row_class", lambda x: "few"):
        yield


def force_kernel(model: Any, kernel: str | None) -> Any:
    """Put every quantized product of `model` that `kernel` takes on it; the rest keep
    dequant (counted in the table's note)."""
    if kernel is None:
        return model
    for layer in quantized_layers(model):
        if supported(kernel, layer.shape(torch.float32)):
            layer.use_kernels(KernelPlan(kernel, kernel), torch.float32)
    return model


def forced_note(model: Any, kernel: str | None) -> str:
    if kernel is None:
        return ""
    layers = quantized_layers(model)
    on = sum(1 for m in layers if m.kernels.one == kernel)
    return f" ({on}/{len(layers)} products on {kernel})"


def accuracy(data: Path, kernel: str | None = None) -> list[str]:
    lm_dir = ROOT / "models" / "default-lm"
    tokenizer = Tokenizer.from_dir(lm_dir)
    docs = read_documents([data / "lm" / "val.jsonl"])
    base = load_model(lm_dir, dtype="float32", device="cpu")
    rows = pack_tokens((tokenizer.encode(d, add_special_tokens=False) for d in docs),
                       tokenizer.eos_ids[0], base.config.max_model_len)
    base_ppl, base_argmax = lm_figures(base.model, rows)
    lines = ["| default-lm | bits a block weight | perplexity | vs fp32 | greedy agreement |",
             "|---|---|---|---|---|",
             f"| fp32 | 32 | {base_ppl:.2f} | 1.0000x | 100 % |"]
    variants: list[tuple[str, Callable[[], Any], float]] = [
        ("int8", lambda: force_kernel(load_model(lm_dir, "float32", "cpu", "int8").model,
                                      kernel), 8 + 32 / 256)]
    for group in (32, 64, 128):
        def int4(g: int = group) -> Any:
            return force_kernel(load_model(lm_dir, "float32", "cpu", "int4", g).model, kernel)
        variants.append((f"int4, groups of {group}", int4, 4 + 32 / group))
    for group in (32, 64) if kernel is None else ():  # float weights: no kernel to force
        def sym(g: int = group) -> Any:
            model = load_model(lm_dir, "float32", "cpu").model
            symmetric_int4(model, g)
            return model
        variants.append((f"int4 symmetric (no zero point), groups of {group}", sym,
                         4 + 16 / group))
    for name, make, bits in variants:
        try:
            model = make()
        except CheckpointError as exc:  # a group size the model's widths do not divide
            lines.append(f"| {name} | {bits:.2f} | n/a: {str(exc).split(': ', 1)[-1]} | | |")
            continue
        with every_row_count():
            ppl, argmax = lm_figures(model, rows)
        agree = float((argmax == base_argmax).float().mean())
        lines.append(f"| {name}{forced_note(model, kernel)} | {bits:.2f} | {ppl:.2f} | "
                     f"{ppl / base_ppl:.4f}x | {agree:.2%} |")
    lines.append(f"\n({rows.numel() - rows.shape[0]} validation tokens; the LM head int8 in "
                 "every quantized row.)\n")
    clf_dir = ROOT / "models" / "fortune-classifier"
    clf_tok = Tokenizer.from_dir(clf_dir)
    labelled = read_labelled(data / "classifier" / "test.jsonl")
    pad = clf_tok.pad_id if clf_tok.pad_id is not None else clf_tok.eos_ids[0]
    ids = [clf_tok.encode(r.text)[-128:] or [clf_tok.eos_ids[0]] for r in labelled]
    lines += ["| fortune-classifier | test accuracy |", "|---|---|"]
    for method in ("none", "int8", "int4"):
        loaded = load_model(clf_dir, "float32", "cpu", method)
        force_kernel(loaded.model, kernel)
        index = {label: i for i, label in enumerate(loaded.config.id2label)}
        gold = [index[r.label] for r in labelled]
        with every_row_count():
            predicted = predict_labels(loaded.model, ids, pad)
        acc = sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)
        lines.append(f"| {'fp32' if method == 'none' else method} | {acc:.2%} "
                     f"({len(gold)} rows) |")
    return lines


def speed() -> list[str]:
    torch.manual_seed(0)
    weights = [torch.randn(3072, 768) * 0.02 for _ in range(12)]
    layers = {"int8": [QuantizedLinear.from_weight(w, None, "int8") for w in weights],
              "int4": [QuantizedLinear.from_weight(w, None, "int4", 64) for w in weights]}
    # The kernels offered for these shapes with bf16 activations (every one is also
    # offered for fp32); a kernel refused for a shape prints "n/a".
    names = {m: candidates(qs[0].shape(torch.bfloat16)) for m, qs in layers.items()}
    lines = ["| rows | activations | plain product ms | " + " | ".join(
        f"{m} {k} ms (GB/s)" for m in layers for k in names[m]) + " |",
        "|---|---|---|" + "---|" * sum(len(n) for n in names.values())]
    with torch.inference_mode():
        for dtype in (torch.bfloat16, torch.float32):
            plain = [w.to(dtype) for w in weights]
            for rows in (1, 16, 32):
                wait_idle()
                x = torch.randn(rows, 768, dtype=dtype)
                base = median_seconds(lambda: [F.linear(x, w) for w in plain], 9) / 12  # noqa: B023
                cells = []
                for method, qs in layers.items():
                    nbytes = sum(t.nbytes for t in qs[0].buffers())
                    for name in names[method]:
                        if name not in candidates(qs[0].shape(dtype)):
                            cells.append("n/a")
                            continue
                        for m in qs:
                            m.use_kernels(KernelPlan(name, name), dtype)
                        t = median_seconds(lambda: [m(x) for m in qs], 9) / 12  # noqa: B023
                        cells.append(f"{t * 1e3:.3f} ({nbytes / t / 1e9:.1f})")
                lines.append(f"| {rows} | {str(dtype).removeprefix('torch.')} | "
                             f"{base * 1e3:.3f} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--kernel", default=None,
                        help="force this kernel (e.g. idot) in the accuracy part")
    args = parser.parse_args()
    offer_integer_kernels(True)  # the kernel table lists idot beside the others
    cpu = cpu_info()
    print(f"{cpu_line(cpu)}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    if not args.skip_speed:
        print("\n".join(speed()))
    if not args.skip_accuracy:
        fortunes = Path("/usr/share/games/fortunes")
        if not fortunes.is_dir():
            print(f"accuracy skipped: {fortunes} missing (apt-get install fortunes)")
            return 0
        from app.train.fortunes import prepare

        with tempfile.TemporaryDirectory() as tmp:
            prepare(Path(tmp))
            print("\n".join(accuracy(Path(tmp), args.kernel)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
