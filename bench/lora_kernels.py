"""How to apply several LoRA adapters in one batch on a CPU: the alternatives that
app.modeling.lora chose between, timed on the products of a whole model (every layer's
qkv, o, up and down), against the base products themselves: eager, and the two forms
the compiled graphs could take (`--compiled` adds them; the first calls compile).

    python -m bench.lora_kernels [--rounds 7] [--compiled]

  single   one adapter's slot (k = 1 views): x A^T, then B (what batch-1 runs)
  masked   every slot at once: x A_all^T, masked per token to its slot, then B_all
  gather   each token's own A and B gathered (T, r, in) / (T, out, r), two bmm
  loop     per adapter: index_select its rows, two products, index_add back
  segments each adapter's rows side by side (the runner would order them): two products
           per adapter on row slices
  grouped  each adapter's rows gathered into (slots, most rows, in): two bmm, index_add
           (what app.modeling.lora serves for several adapters in eager graphs)
  grouped_compiled  the same, compiled with the row count symbolic (served until
           2026-12-07)
  token_compiled    each token through its own slot's A and Bt, per projection block,
           compiled (app.modeling.lora.token_delta: what compiled graphs serve now)
The compiled forms run with every base product in one graph (as served, where inductor
fuses the delta into the step) and are given as time over that graph without deltas;
the eager forms as the deltas' time over the eager base products.
Rows: 1 (batch-1 decode), 32 (a decode batch over 4 adapters), 256 (a prompt chunk).
Shapes: the shipped default-lm (fp32: how it is served) and a Llama-style 134M (bf16).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch

from app.modeling.lora import grouped_delta, lora_delta, masked_delta, token_delta
from bench.machine import cpu_info, median_seconds

SHAPES = {  # name: (hidden, q, kv, intermediate, layers, dtype)
    "default-lm": (256, 256, 128, 704, 6, torch.float32),
    "llama-134M": (768, 768, 768, 2048, 12, torch.bfloat16),
}
SLOTS, RANK = 4, 16


def module_shapes(h: int, q: int, kv: int, inner: int) -> list[tuple[int, int, int]]:
    """(in, out, parts) of qkv, o, gate|up, down."""
    return [(h, q + 2 * kv, 3), (q, h, 1), (h, 2 * inner, 2), (inner, h, 1)]


def run(shape: str, rows: int, rounds: int, compiled: bool = False) -> dict[str, float]:
    h, q, kv, inner, layers, dtype = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    mods = []
    outs = {3: (q, kv, kv), 2: (inner, inner), 1: None}
    for _ in range(layers):
        for fan_in, out, parts in module_shapes(h, q, kv, inner):
            cap = parts * RANK
            mods.append((torch.randn(out, fan_in, generator=g).to(dtype),
                         (torch.randn(SLOTS * cap, fan_in, generator=g) * 0.01).to(dtype),
                         (torch.randn(out, SLOTS * cap, generator=g) * 0.01).to(dtype), cap,
                         torch.randn(1, rows, fan_in, generator=g).to(dtype),
                         outs[parts] or (out,)))
    transposed = [b.t().contiguous() for _, _, b, _, _, _ in mods]  # Bt (SLOTS * cap, out)
    slot = torch.arange(rows) % SLOTS if rows > 1 else torch.zeros(1, dtype=torch.long)
    onehot = (slot[:, None] == torch.arange(SLOTS))[None].to(dtype)
    ones = torch.ones(1, rows, 1, dtype=dtype)
    groups = [(s, (slot == s).nonzero()[:, 0]) for s in range(SLOTS) if (slot == s).any()]

    def base() -> None:
        for w, _, _, _, x, _ in mods:
            torch.matmul(x, w.t())

    def single() -> None:
        for (_, a, _, cap, x, _), bt in zip(mods, transposed, strict=True):
            lora_delta(x, a[:cap], bt[:cap], ones)

    def masked() -> None:
        for (_, a, _, _, x, _), bt in zip(mods, transposed, strict=True):
            masked_delta(x, a, bt, onehot)

    def gather() -> None:
        for _, a, b, cap, x, _ in mods:
            a3 = a.view(SLOTS, cap, -1)[slot]  # (T, R, in)
            b3 = b.view(b.shape[0], SLOTS, cap).permute(1, 0, 2)[slot]  # (T, out, R)
            hh = torch.bmm(a3, x[0, :, :, None])
            torch.bmm(b3, hh)

    # grouped (what is served): app.modeling.lora.grouped_delta on per-slot buffers
    counts = torch.bincount(slot, minlength=SLOTS)
    index = torch.full((SLOTS, int(counts.max())), rows, dtype=torch.long)
    for s in range(SLOTS):
        members = (slot == s).nonzero()[:, 0]
        index[s, :len(members)] = members
    per_slot = [(a.view(SLOTS, cap, -1), bt.view(SLOTS, cap, -1), x, parts)
                 for (_, a, _, cap, x, parts), bt in zip(mods, transposed, strict=True)]

    def padded() -> None:
        for a3, bt3, x, _ in per_slot:
            grouped_delta(x, a3, bt3, index)

    # compiled: every module's base product and its delta in one graph, as in a served
    # step (fused there, so timed together here), against the base products compiled
    token_slots = slot[None]
    mask = torch.ones(1, rows, 1, dtype=dtype)
    weights = [w for w, *_ in mods]

    def model_products(form: str) -> list[torch.Tensor]:
        ys = []
        for w, (a3, bt3, x, parts) in zip(weights, per_slot, strict=True):
            y = torch.matmul(x, w.t())
            if form == "grouped":
                y = y + grouped_delta(x, a3, bt3, index)
            elif form == "token":
                y = y + token_delta(x, a3, bt3, mask, token_slots, parts, rows == 1)
            ys.append(y)
        return ys  # returned, so the graph computes them all

    step = torch.compile(model_products, dynamic=True)

    # segments: each adapter's rows side by side (the runner would order them), two
    # products per adapter on row slices
    bounds = [(s, int((slot < s).sum()), int((slot <= s).sum())) for s in range(SLOTS)]

    def segmented() -> None:
        for _, a, b, cap, x, _ in mods:
            flat = x[0]
            out = flat.new_zeros(rows, b.shape[0])
            for s, start, end in bounds:
                if end > start:
                    h = flat[start:end] @ a[s * cap:(s + 1) * cap].t()
                    out[start:end] = h @ b[:, s * cap:(s + 1) * cap].t()

    def grouped() -> None:
        for _, a, b, cap, x, _ in mods:
            y = x.new_zeros(rows, b.shape[0])
            for s, idx in groups:
                xs = x[0].index_select(0, idx)
                d = (xs @ a[s * cap:(s + 1) * cap].t()) @ b[:, s * cap:(s + 1) * cap].t()
                y.index_add_(0, idx, d)

    fns: dict[str, Callable[[], object]] = {
        "base": base, "single": single, "masked": masked, "loop": grouped,
        "segments": segmented, "grouped": padded}
    if rows <= 32:  # seconds a call above
        fns["gather"] = gather
    if compiled:
        fns["base_compiled"] = lambda: step("base")
        fns["grouped_compiled"] = lambda: step("grouped")
        fns["token_compiled"] = lambda: step("token")
    best = dict.fromkeys(fns, float("inf"))
    with torch.inference_mode():
        for fn in fns.values():
            fn()  # warm-up
        # Interleaved rounds, the fastest of each: on a shared machine the minimum is
        # the figure least touched by other load.
        for _ in range(rounds):
            for name, fn in fns.items():
                best[name] = min(best[name], median_seconds(fn, 1, 0))
    return {k: round(v * 1e3, 3) for k, v in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--rows", type=int, nargs="*", default=[1, 32, 256])
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compiled", action="store_true",
                        help="also time the compiled forms (grouped, per token)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = cpu_info()
    print(json.dumps({"cpu": info["model"], "isa": info["isa"], "threads":
                      torch.get_num_threads(), "slots": SLOTS, "rank": RANK}))
    for shape in args.shapes:
        for rows in args.rows:
            t = run(shape, rows, args.rounds, args.compiled)
            extra = {k: f"+{t[k] / t['base'] * 100:.0f}%" for k in t
                     if not k.startswith("base") and not k.endswith("_compiled")}
            extra.update({k: f"+{(t[k] / t['base_compiled'] - 1) * 100:.0f}%" for k in t
                          if k.endswith("_compiled") and k != "base_compiled"})
            print(json.dumps({"shape": shape, "rows": rows, "ms": t,
                              "over_base": extra}))


if __name__ == "__main__":
    main()
