"""The draft model of speculative decoding (method draft_model): a small model with the
target's tokenizer, run on the compute thread right after the target's step, that
guesses each speculating sequence's next k tokens greedily. The guesses go back in the
step's RunnerOutput; the next schedule() makes them the sequence's `draft`, which the
target verifies exactly (app/spec_verify.py: greedy guesses are a deterministic
proposal, so rejection sampling keeps sampled output distributed as without them).

Its KV cache has the target's blocks, indexed by the target's block tables, so the
target's block manager does all the bookkeeping (allocation, freeing, preemption, prefix
caching, forks): in every step the draft computes the K/V of exactly the tokens whose
target K/V the step leaves valid (each sequence's new tokens, of a speculating one only
the last token and the kept guesses), so any block the target holds computed, the draft
holds computed too, a prefix-cache hit included. Then, in the same forward, each
guessing sequence's newest token (the one just sampled, not yet computed by the target)
and k - 1 single-token forwards after it give the k guesses. Those last tokens' K/V are
scratch: they are written at positions the sequence has not computed (slots of its own
unshared blocks, or spare blocks past the target's for positions beyond its table), and
rewritten by a later step before anything reads them.

Where the target is compiled, the draft's forwards whose new tokens are all decode rows
(the k - 1 single-token guesses, and a first forward over cached context) run as one
compiled graph each (app.modeling.decode_step), traced in `prepare`; the rest (prompt
chunks) run eager.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from app.engine.runner_output import RunnerOutput
from app.engine.sampling_plan import SamplingPlan
from app.engine.scheduler import SchedulerOutput
from app.modeling.attention import PagedAttention, PagedKVCache, build_paged_batch
from app.modeling.config import Task
from app.modeling.decode_step import (
    CompiledStep,
    compile_decode_step,
    decode_rows,
    faster_one_row_form,
    run_decode_step,
)
from app.modeling.loaded import LoadedModel
from app.modeling.timing import median_seconds
from app.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class DraftMismatch(ValueError):
    """A draft model that cannot guess for this target (refused at startup)."""


@dataclass(frozen=True)
class DraftModel:
    """A loaded draft and its tokenizer, as the engine receives them."""

    loaded: LoadedModel
    tokenizer: Tokenizer


def check_draft(target: LoadedModel, target_tokenizer: Tokenizer, draft: DraftModel,
                max_model_len: int) -> None:
    """DraftMismatch unless the draft reads and writes the target's tokens: same
    vocabulary (token ids and strings), a causal LM, long enough for the target's
    sequences, on the same device."""
    what = f"speculative draft model {draft.loaded.path}"
    if draft.loaded.config.task is not Task.CAUSAL_LM:
        raise DraftMismatch(f"{what} is not a causal language model")
    if draft.loaded.config.vocab_size != target.config.vocab_size:
        raise DraftMismatch(f"{what} has a vocabulary of {draft.loaded.config.vocab_size} "
                            f"tokens, the target {target.config.vocab_size}: the draft "
                            "needs the target's tokenizer")
    mine = draft.tokenizer.backend.get_vocab(with_added_tokens=True)
    theirs = target_tokenizer.backend.get_vocab(with_added_tokens=True)
    if mine != theirs:
        differ = sorted(set(mine.items()) ^ set(theirs.items()))[:3]
        raise DraftMismatch(f"{what} has another tokenizer than the target ({len(mine)} "
                            f"and {len(theirs)} tokens; differing entries include "
                            f"{differ}): the draft needs the target's tokenizer")
    if draft.loaded.config.max_model_len < max_model_len:
        raise DraftMismatch(f"{what} takes {draft.loaded.config.max_model_len} positions, "
                            f"fewer than the target's {max_model_len} (--max-model-len "
                            "can lower the target's)")
    if draft.loaded.device != target.device:
        raise DraftMismatch(f"{what} is on {draft.loaded.device}, the target on "
                            f"{target.device}")


@dataclass
class _Span:
    """One sequence's tokens in a draft forward."""

    seq_id: int
    tokens: list[int]
    start: int  # position of tokens[0]
    table: list[int]
    guesses: int  # how many to guess after the last token (0: only computing K/V)


class DraftRunner:
    def __init__(self, draft: DraftModel, num_blocks: int, block_size: int, k: int,
                 max_guessing: int, max_model_len: int) -> None:
        self.loaded = draft.loaded
        self.model = draft.loaded.model
        self.device = draft.loaded.device
        self.num_blocks, self.block_size = num_blocks, block_size
        self.k = k
        self.max_guessing = max_guessing  # sequences guessed for in one step, at most
        self.max_model_len = max_model_len
        # spare blocks past the target's: each guessing sequence's scratch positions
        # beyond its table (k positions span at most k // block_size + 2 blocks)
        self.spare_per_seq = k // block_size + 2
        self._cache: PagedKVCache | None = None
        self.graph: CompiledStep | None = None  # decode forwards as one compiled graph
        self.one_row_gemv = False  # the graph's one-row form (measured in prepare)
        # what the draft costs (bench/speculative.py reads them): its steps, forwards, time
        self.steps, self.forwards, self.seconds = 0, 0, 0.0

    @property
    def cache(self) -> PagedKVCache:
        if self._cache is None:
            raise RuntimeError("DraftRunner.prepare() has not run")
        return self._cache

    def prepare(self, compiled: bool = False) -> None:
        """Allocate the KV cache; with `compiled` (the target's decode step compiled),
        compile the draft's decode forwards too and trace their graphs now."""
        cfg = self.loaded.config
        spare = self.max_guessing * self.spare_per_seq
        self._cache = PagedKVCache(cfg.num_layers, self.num_blocks + spare, self.block_size,
                                   cfg.num_kv_heads, cfg.head_dim, self.loaded.dtype,
                                   self.device)
        log.info("draft model %s: KV cache of %d + %d spare blocks, %.1f MiB", self.loaded.path,
                 self.num_blocks, spare, self._cache.nbytes / 2**20)
        if compiled and self.device.type == "cpu":
            self.graph = compile_decode_step()
            self._choose_one_row_form()
            self._warm_up()

    @torch.inference_mode()
    def _choose_one_row_form(self, context: int = 48) -> None:
        bs = self.block_size
        table = [b % self.num_blocks for b in range(-(-(context + 1) // bs))]
        span = _Span(-1, [1], context, table, 0)

        def run(gemv: bool) -> None:
            self.one_row_gemv = gemv
            self._forward([span], [span])

        self.one_row_gemv, gain = faster_one_row_form(run)
        log.info("draft model: one-row forwards as %s (multiply-and-reduce measured %.2fx)",
                 "multiply-and-reduce" if self.one_row_gemv else "plain products", gain)

    @torch.inference_mode()
    def _warm_up(self) -> None:
        """Trace the decode graphs (one row and several, over one block and several)
        on blocks nothing holds yet: prepare runs before the first request."""
        bs, blocks = self.block_size, self.num_blocks
        for rows, context in ((1, 3), (1, bs + 3), (3, 3), (3, bs + 3)):
            spans = [_Span(-1 - i, [1], context, [(2 * i + b) % blocks
                                                  for b in range(-(-(context + 1) // bs))], 0)
                     for i in range(rows)]
            self._forward(spans, spans)
        self.forwards = 0

    @torch.inference_mode()
    def forward_cost(self, context: int = 48) -> float:
        """Seconds of one single-token draft forward over a cached context (median), what
        each of a step's guesses costs: for the engine's startup check."""
        bs = self.block_size
        table = [b % self.num_blocks for b in range(-(-(context + 1) // bs))]
        span = _Span(-1, [1], context, table, 0)
        seconds = median_seconds(lambda: self._forward([span], [span]), 7)
        self.forwards = 0  # counts the serving forwards only
        return seconds

    @torch.inference_mode()
    def step(self, out: SchedulerOutput, plan: SamplingPlan, result: RunnerOutput) -> None:
        """After the target's step: compute the draft's K/V of what the step kept, and
        put the guesses of each sequence that asked for them in result.guesses."""
        started = time.perf_counter()
        try:
            self._step(out, plan, result)
        finally:
            self.steps += 1
            self.seconds += time.perf_counter() - started

    def _step(self, out: SchedulerOutput, plan: SamplingPlan, result: RunnerOutput) -> None:
        spans = self._spans(out, plan, result)
        if not spans:
            return
        guessing = [s for s in spans if s.guesses > 0]
        last = self._forward(spans, guessing)
        guesses: dict[int, list[int]] = {s.seq_id: [t] for s, t in zip(guessing, last,
                                                                        strict=True)}
        for i in range(1, self.k):
            more = [s for s in guessing if s.guesses > i]
            if not more:
                break
            step = [_Span(s.seq_id, [guesses[s.seq_id][-1]], s.start + len(s.tokens) + i - 1,
                          s.table, s.guesses) for s in more]
            for s, token in zip(more, self._forward(step, step), strict=True):
                guesses[s.seq_id].append(token)
        for s in guessing:
            result.guesses[s.seq_id] = (s.start + len(s.tokens), tuple(guesses[s.seq_id]))

    def _spans(self, out: SchedulerOutput, plan: SamplingPlan, result: RunnerOutput
               ) -> list[_Span]:
        # each sequence's tokens new in this step (sampled, then the kept guesses' and the
        # target's own); a sequence drawing for several completions (n > 1) is ambiguous
        # and never asks for guesses
        new: dict[int, list[int] | None] = {}
        for draw, sampled in zip(plan.draws, result.sampled, strict=True):
            extra = [s.token_id for s in result.extra_tokens.get(draw.seq_id, ())]
            new[draw.seq_id] = None if draw.seq_id in new else [sampled.token_id, *extra]
        spans: list[_Span] = []
        spare = self.num_blocks  # the next unused spare block
        guessing = 0
        for item in out.scheduled:
            computed = item.num_new_tokens - len(item.draft)  # the target's K/V kept
            if item.draft:
                computed += result.drafts.get(item.seq_id, (0, 0))[1]
            tokens = list(item.token_ids[:computed])
            table = list(item.block_table)
            fresh = new.get(item.seq_id)
            newest = item.start + computed  # position of the newest (sampled) token
            guesses = min(self.k, self.max_model_len - newest)
            if item.guess_next and fresh and guesses > 0 and guessing < self.max_guessing:
                guessing += 1
                tokens.append(fresh[-1])
                # positions fed: through newest + guesses - 1; past the table, spare blocks
                needed = -(-(newest + guesses) // self.block_size)
                while len(table) < needed:
                    table.append(spare)
                    spare += 1
            else:
                guesses = 0
            spans.append(_Span(item.seq_id, tokens, item.start, table, guesses))
        return spans

    def _forward(self, spans: list[_Span], wanted: list[_Span]) -> list[int]:
        """One batched draft forward over `spans`; the argmax after the last token of
        each span in `wanted` (a subset, in order)."""
        self.forwards += 1
        ids: list[int] = []
        positions: list[int] = []
        for s in spans:
            ids.extend(s.tokens)
            positions.extend(range(s.start, s.start + len(s.tokens)))
        ends: dict[int, int] = {}
        offset = 0
        for s in spans:
            offset += len(s.tokens)
            ends[s.seq_id] = offset - 1
        index = torch.tensor([ends[s.seq_id] for s in wanted], dtype=torch.long,
                             device=self.device)
        query_lens = [len(s.tokens) for s in spans]
        context_lens = [s.start + len(s.tokens) for s in spans]
        tables = [s.table for s in spans]
        rows = None if self.graph is None else decode_rows(
            query_lens, context_lens, tables, self.block_size, self.device,
            any_lengths=self.graph.kernel_attention)
        if self.graph is not None and rows is not None:
            logits: Tensor = run_decode_step(
                self.graph, self.model, torch.tensor(ids, device=self.device),
                torch.tensor(positions, device=self.device), self.cache, rows,
                self.one_row_gemv)[index]  # (spans computing K/V only: no rows wanted)
            return [int(t) for t in logits.argmax(-1).tolist()]
        batch = build_paged_batch(query_lens, context_lens, tables, self.block_size,
                                  self.device)
        input_ids = torch.tensor(ids, device=self.device)[None]
        pos = torch.tensor(positions, device=self.device)[None]
        hidden = self.model(input_ids, pos, PagedAttention(self.cache, batch))[0]
        if not wanted:
            return []
        logits = self.model.logits(hidden[index])
        return [int(t) for t in logits.argmax(-1).tolist()]
