"""AdapterSlots: the LoRA adapters known to one served model and the at most max_loras
resident in its fixed-shape slot buffers (the math and the layout: app.modeling.lora).
Least recently used resident adapters not needed by the step are evicted first."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

from app.modeling.lora import MODULES, AdapterError, LoraAdapter, LoraStep, fused_sizes
from app.modeling.transformer import Transformer

PER_TOKEN_KEPT = 256  # compiled-form inputs kept for reuse (the step's slots and lengths)


class AdapterSlots:
    """The adapters known to one model, and the at most `max_loras` resident in its slots.
    Runs on the compute thread (app.engine.compute), like every step."""

    def __init__(self, model: Transformer, max_loras: int, max_rank: int) -> None:
        if max_loras < 0 or max_rank < 1:
            raise ValueError("max_loras must be >= 0 and max_rank >= 1")
        self.model = model
        self.config = model.config
        self.max_loras, self.max_rank = max_loras, max_rank
        self._known: dict[str, LoraAdapter] = {}
        # SEQ_CLS adapters' own classification heads, in the model's dtype and device
        self._heads: dict[str, Tensor] = {}
        self._slots: OrderedDict[str, int] = OrderedDict()  # resident, least recent first
        sizes = fused_sizes(self.config)
        # rank capacity per module: max_rank for each projection it fuses
        self.capacity = {m: max_rank * len(sizes[m][0]) for m in MODULES}
        self._a: list[dict[str, Tensor]] = []
        self._b: list[dict[str, Tensor]] = []
        self._stacked: tuple[Tensor, ...] = ()  # every layer's: (L, max_loras, R, in|out)
        self._all_views: tuple[tuple[Tensor, ...], ...] = ()
        self._slot_views: list[tuple[tuple[Tensor, ...], ...]] = []
        # the compiled form's inputs, by (slots, token counts) (see `step`)
        self._per_token: dict[tuple[tuple[int, ...], tuple[int, ...]], LoraStep] = {}

    def allocate(self) -> None:
        """The slot buffers, zeroed: called by the runner's prepare(), on the compute
        thread. Filling them is a parallel op, and on any other thread it would start a
        second OpenMP team on the same cores (app/engine/compute.py; measured: every
        base-model decode step 3.5x slower with the buffers made on the event loop's
        thread)."""
        if self.max_loras == 0 or self._a:
            return
        max_loras = self.max_loras
        sizes = fused_sizes(self.config)
        model = self.model
        weight = model.embed.weight
        dtype, device = weight.dtype, weight.device
        layers = self.config.num_layers
        stacked = []
        for m in MODULES:  # one A and one Bt (B transposed) per module, for every layer
            outs, fan_in = sizes[m]
            cap = self.capacity[m]
            stacked.append(torch.zeros(layers, max_loras, cap, fan_in, dtype=dtype,
                                       device=device))
            stacked.append(torch.zeros(layers, max_loras, cap, sum(outs), dtype=dtype,
                                       device=device))
        self._stacked = tuple(stacked)
        for i in range(layers):
            self._a.append({m: stacked[2 * k][i] for k, m in enumerate(MODULES)})
            self._b.append({m: stacked[2 * k + 1][i] for k, m in enumerate(MODULES)})
        # per layer, (A, Bt) of each module in LayerLora's order: every slot, or one
        self._all_views = tuple(tuple(t for m in MODULES for t in (a[m], b[m]))
                                for a, b in zip(self._a, self._b, strict=True))
        self._slot_views = [tuple(tuple(t[s] for t in layer) for layer in self._all_views)
                            for s in range(max_loras)]

    # ---- the known adapters ----

    def register(self, adapter: LoraAdapter) -> None:
        if self.max_loras == 0:
            raise AdapterError("LoRA adapters are off for this model (--max-loras 0)")
        if adapter.name in self._known:
            raise AdapterError(f"an adapter named {adapter.name!r} is already loaded")
        if adapter.max_part_rank > self.max_rank:
            raise AdapterError(f"adapter {adapter.name!r} has rank {adapter.max_part_rank}, "
                               f"above --max-lora-rank {self.max_rank}")
        if len(adapter.weights) != self.config.num_layers:
            raise AdapterError(f"adapter {adapter.name!r} has {len(adapter.weights)} layers, "
                               f"this model {self.config.num_layers}")
        for layer in adapter.weights:
            for m, (a, _) in layer.items():
                if a.shape[0] > self.capacity[m]:  # the fused parts' ranks together
                    raise AdapterError(f"adapter {adapter.name!r} has rank {a.shape[0]} on "
                                       f"{m}, above what --max-lora-rank {self.max_rank} "
                                       "leaves room for")
        if adapter.score is not None and self.model.score is not None:
            labels = self.model.score.weight.shape[0]
            if adapter.score.shape[0] != labels:
                raise AdapterError(f"adapter {adapter.name!r} has a head of "
                                   f"{adapter.score.shape[0]} labels, this model {labels}")
            self._heads[adapter.name] = adapter.score.to(self.model.score.weight)
        self._known[adapter.name] = adapter

    def unregister(self, name: str) -> None:
        if name not in self._known:
            raise AdapterError(f"no adapter named {name!r} is loaded")
        del self._known[name]
        self._heads.pop(name, None)
        self._slots.pop(name, None)

    def names(self) -> list[str]:
        return list(self._known)

    def get(self, name: str) -> LoraAdapter:
        try:
            return self._known[name]
        except KeyError:
            raise AdapterError(f"no adapter named {name!r} is loaded") from None

    def head(self, name: str | None) -> Tensor | None:
        """The adapter's own classification head (labels, H), if it brought one and the
        model classifies; None: the model's head."""
        return None if name is None else self._heads.get(name)

    def resident(self) -> list[str]:
        """Resident adapters, least recently used first."""
        return list(self._slots)

    # ---- per step ----

    def activate(self, adapters: Sequence[str | None]) -> list[int]:
        """Make the step's adapters resident (evicting the least recently used ones not
        in this step); each entry's slot, -1 for the base model."""
        wanted = list(dict.fromkeys(a for a in adapters if a is not None))
        if not wanted:
            return [-1] * len(adapters)
        if len(wanted) > self.max_loras:
            raise RuntimeError(f"{len(wanted)} adapters in one step, at most "
                               f"{self.max_loras} resident (the scheduler must not do that)")
        self.allocate()  # done by the runner's prepare(); here for slots used without one
        for name in wanted:
            if name in self._slots:
                self._slots.move_to_end(name)
            else:
                self._load(name, set(wanted))
        return [-1 if a is None else self._slots[a] for a in adapters]

    def _load(self, name: str, keep: set[str]) -> None:
        adapter = self.get(name)
        used = set(self._slots.values())
        free = [s for s in range(self.max_loras) if s not in used]
        if free:
            slot = free[0]
        else:
            victim = next(n for n in self._slots if n not in keep)
            slot = self._slots.pop(victim)
        sizes = fused_sizes(self.config)
        for i, layer in enumerate(adapter.weights):
            for m in MODULES:
                a_buf, bt_buf = self._a[i][m][slot], self._b[i][m][slot]
                a_buf.zero_()
                bt_buf.zero_()
                if m not in layer:
                    continue
                # projection p's ranks to rows [p * max_rank, ...): the fixed blocks the
                # fused forms multiply (app.modeling.lora); the adapter packs them tightly
                a, b = layer[m]
                col = row = 0
                for p, (rank, out) in enumerate(zip(adapter.part_ranks[i][m], sizes[m][0],
                                                    strict=True)):
                    at = p * self.max_rank
                    a_buf[at:at + rank].copy_(a[col:col + rank])
                    bt_buf[at:at + rank, row:row + out].copy_(b[row:row + out, col:col + rank].t())
                    col, row = col + rank, row + out
        self._slots[name] = slot

    def step(self, slots: Sequence[int], lengths: Sequence[int], compiled: bool = False
             ) -> LoraStep | None:
        """The LoRA inputs for items with these slots (-1: base) and token counts, in the
        step's order; None when no item has an adapter (the plain forward). Several
        adapters take the per-token form in `compiled` graphs, the grouped one in eager
        (app.modeling.lora says why)."""
        used = sorted({s for s in slots if s >= 0})
        if not used:
            return None
        weight = self.model.embed.weight
        if compiled:
            # decode steps repeat their slots and token counts token after token, and the
            # graph only reads these inputs: built once per (slots, counts), then reused
            key = (tuple(slots), tuple(lengths))
            kept = self._per_token.get(key)
            if kept is None:
                if len(self._per_token) >= PER_TOKEN_KEPT:
                    self._per_token.clear()
                per_token = _each_token(slots, lengths)
                # every layer's buffers as 8 graph inputs, not 8 per layer (each input
                # costs guard checks); base rows read slot 0, the mask zeroes them
                kept = self._per_token[key] = LoraStep(
                    _token_mask(per_token, weight), (), stacked=self._stacked,
                    slots=torch.tensor([[max(s, 0) for s in per_token]], device=weight.device))
            return kept
        if len(used) == 1:
            return LoraStep(_token_mask(_each_token(slots, lengths), weight),
                            self._slot_views[used[0]])
        # per slot, its token rows; padded to the longest with the zero row's index
        rows: list[list[int]] = [[] for _ in range(self.max_loras)]
        offset = 0
        for slot, n in zip(slots, lengths, strict=True):
            if slot >= 0:
                rows[slot].extend(range(offset, offset + n))
            offset += n
        longest = max(len(r) for r in rows)
        index = torch.tensor([r + [offset] * (longest - len(r)) for r in rows],
                             dtype=torch.int64, device=weight.device)
        return LoraStep(index, self._all_views)


def _each_token(slots: Sequence[int], lengths: Sequence[int]) -> list[int]:
    """Each new token's slot, in the step's order."""
    return [s for s, n in zip(slots, lengths, strict=True) for _ in range(n)]


def _token_mask(per_token: list[int], weight: Tensor) -> Tensor:
    """(1, T, 1): 1 for a token with an adapter, 0 for a base-model token. Built from a
    list: a decode step's few rows cost less so than as tensor ops."""
    return torch.tensor([[[1.0] if s >= 0 else [0.0] for s in per_token]],
                        dtype=weight.dtype, device=weight.device)
