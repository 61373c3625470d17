"""ModelRunner: turns a SchedulerOutput into tensors, runs one batched forward over the
paged KV cache, samples, and returns only what postprocessing needs (token ids,
log-probabilities, distributions, class scores). Runs in the engine's worker thread and
reads only the step's snapshots and the SamplingPlan, never live request state.

All sequences of a step share one flat batch (B=1, T=total new tokens): prefill chunks
and single decode tokens side by side, each with its own positions and block table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psutil
import torch
from torch import Tensor

from app.engine.lora_slots import AdapterSlots
from app.engine.request import RequestKind
from app.engine.runner_output import RunnerOutput
from app.engine.runner_warmup import warm_up
from app.engine.sampling_plan import Draw, SamplingPlan
from app.engine.scheduler import ScheduledSeq, SchedulerOutput
from app.modeling.attention import DecodeFn, PagedAttention, PagedKVCache, build_paged_batch
from app.modeling.compile import CompileError, compile_model
from app.modeling.config import Task
from app.modeling.decode_step import (
    CompiledStep,
    DecodeRows,
    decode_rows,
    run_decode_step,
)
from app.modeling.few_rows import choose_few_rows, drop_few_rows, use_few_rows
from app.modeling.heads import label_scores
from app.modeling.kernel_choice import choose_kernels
from app.modeling.loaded import LoadedModel
from app.modeling.lora import LoraStep
from app.modeling.packed import choose_packing, pack_model, unpack_model
from app.modeling.quantized_model import describe as describe_quantization
from app.modeling.quantized_model import quantized_layers
from app.modeling.transformer import EAGER
from app.sampling import (
    allowed_tokens,
    next_token_distribution,
    prompt_logprobs,
    prompt_top_logprobs,
    sample_batch,
)
from app.sampling_params import Sampled
from app.spec_verify import verify_draft
from app.structured import Matcher

log = logging.getLogger(__name__)


def kv_cache_blocks(loaded: LoadedModel, block_size: int, max_tokens: int,
                    memory_fraction: float) -> int:
    """Blocks for `max_tokens` tokens, capped by a fraction of the device's free memory."""
    cfg = loaded.config
    per_block = PagedKVCache.bytes_per_block(cfg.num_layers, block_size, cfg.num_kv_heads,
                                             cfg.head_dim, loaded.dtype)
    wanted = -(-max_tokens // block_size)
    if loaded.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(loaded.device)
    else:
        free = psutil.virtual_memory().available
    cap = int(free * memory_fraction) // per_block
    if cap < wanted:
        log.warning("KV cache capped at %d blocks (%.0f MiB) by available memory; "
                    "wanted %d", cap, cap * per_block / 2**20, wanted)
    return max(1, min(wanted, cap))


class ModelRunner:
    def __init__(self, loaded: LoadedModel, num_blocks: int, block_size: int,
                 compile_mode: str = "off", prepack: str = "off", *, max_loras: int = 0,
                 max_lora_rank: int = 16) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.config = loaded.config
        self.device = loaded.device
        self.num_blocks, self.block_size = num_blocks, block_size
        self._cache: PagedKVCache | None = None
        self.compile_mode = compile_mode
        self.compile_reason = "off (not prepared)"
        self.prepack = prepack
        self.pack_reason = "not packed (not prepared)"
        self.quantization = describe_quantization(self.model)
        self.decode: DecodeFn | None = None
        self.step: CompiledStep | None = None  # a decode step as one graph, when compiled
        self.one_row_gemv = False  # its one-row form (measured in prepare)
        # LoRA adapters (app.engine.lora_slots); max_loras 0: none, nothing on the hot path
        self.adapters = AdapterSlots(self.model, max_loras, max_lora_rank)

    @property
    def cache(self) -> PagedKVCache:
        if self._cache is None:
            raise RuntimeError("ModelRunner.prepare() has not run")
        return self._cache

    def prepare(self) -> None:
        """Allocate the KV cache, compile (per --compile) and trace every graph once,
        before the first request, so no request pays for compiling. Runs on the compute
        thread, like every step (see app.engine.compute)."""
        started = time.monotonic()
        cfg = self.config
        self.adapters.allocate()
        self._cache = PagedKVCache(cfg.num_layers, self.num_blocks, self.block_size,
                                   cfg.num_kv_heads, cfg.head_dim, self.loaded.dtype,
                                   self.device)
        log.info("KV cache: %d blocks of %d tokens, %.1f MiB", self.num_blocks,
                 self.block_size, self._cache.nbytes / 2**20)
        layers = quantized_layers(self.model)
        if layers:
            measured = (choose_kernels(layers, self.loaded.dtype)
                        if self.device.type == "cpu" else "dequantize + BLAS off the CPU")
            self.quantization = f"{describe_quantization(self.model)}; kernels: {measured}"
            self.pack_reason = "not packed (weights quantized)"
            log.info("quantization: %s", self.quantization)
        elif self.prepack == "off":
            self.pack_reason = "not packed (--prepack off)"
        else:
            pack, self.pack_reason = choose_packing(self.model, self.device,
                                                    measure=self.prepack == "auto")
            if pack:
                pack_model(self.model)
            rows, few = choose_few_rows(self.model, self.device)
            if rows.blocks or rows.head:
                use_few_rows(self.model, rows.blocks, rows.head)
            self.pack_reason += f"; products of a few rows: {few}"
        log.info("weights: %s", self.pack_reason)
        compiled = compile_model(self.model, self.device, self.compile_mode)
        self.compile_reason = compiled.reason
        if compiled.ops.compiled:
            self.model.ops, self.decode = compiled.ops, compiled.decode
            self.step = compiled.step
            try:
                warm_up(self)
            except Exception as exc:
                self.model.ops, self.decode, self.step = EAGER, None, None
                if self.compile_mode == "on":
                    raise CompileError(f"--compile on, but tracing failed: {exc}") from exc
                self.compile_reason = f"off: tracing failed ({type(exc).__name__}: {exc})"
                log.warning("compiling failed; running eager", exc_info=exc)
        log.info("compile: %s (%.1f s)", self.compile_reason, time.monotonic() - started)

    def release(self) -> None:
        """Drop what prepare() added outside the model's own tensors (packed weights)."""
        drop_few_rows(self.model)
        unpack_model(self.model)
        if self.step is not None:  # its direct calls read modules that are gone now
            self.step.graph.forget()

    def execute(self, out: SchedulerOutput, plan: SamplingPlan, *,
                slots: list[int] | None = None,
                cut_short: Callable[[], bool] | None = None) -> RunnerOutput:
        """One batched forward over the step's snapshots, then sampling (in this worker
        thread, off the event loop). The step's adapters are made resident first;
        `slots` (the warm-up's) names each item's adapter slot directly instead.
        Multi-step decoding (ScheduledSeq.steps > 1, the same for every item): up to that
        many decode steps, each fed the tokens the one before sampled, with the same draws
        (each sequence's generator and grammar go on from draw to draw, as they would
        over separate steps); the later steps' tokens are the result's extra tokens.
        `cut_short()` true before a later step: stop there (a request is waiting to join;
        the update takes however many tokens came, and the slots left unused stay in the
        sequences' tables for their next steps)."""
        result = self._execute(out, plan, slots)
        items = out.scheduled
        sampled = result.sampled
        for step in range(1, items[0].steps if items else 1):
            if cut_short is not None and cut_short():
                break
            fed = {d.seq_id: s.token_id for d, s in zip(plan.draws, sampled, strict=True)}
            sampled = self._execute(SchedulerOutput(tuple(
                item._replace(token_ids=(fed[item.seq_id],), start=item.start + step)
                for item in items)), plan, slots).sampled
            for d, s in zip(plan.draws, sampled, strict=True):
                result.extra_tokens.setdefault(d.seq_id, []).append(s)
        return result

    @torch.inference_mode()
    def _execute(self, out: SchedulerOutput, plan: SamplingPlan,
                 slots: list[int] | None = None) -> RunnerOutput:
        items = out.scheduled
        lora = None
        if self.adapters.max_loras:
            if slots is None:
                slots = self.adapters.activate([item.adapter for item in items])
            lora = self.adapters.step(slots, [item.num_new_tokens for item in items],
                                      compiled=self.model.ops.compiled)
        elif any(item.adapter is not None for item in items):
            raise RuntimeError("a sequence names an adapter but LoRA is off (max_loras 0)")
        ids: list[int] = []
        positions: list[int] = []
        for item in items:
            ids.extend(item.token_ids)
            positions.extend(range(item.start, item.start + item.num_new_tokens))
        query_lens = [i.num_new_tokens for i in items]
        context_lens = [i.start + i.num_new_tokens for i in items]
        tables = [list(i.block_table) for i in items]
        if self.step is not None and self._decode_rows_only(items):
            rows = decode_rows(query_lens, context_lens, tables, self.block_size, self.device,
                               any_lengths=self.step.kernel_attention)
            if rows is not None:
                return self._execute_step(items, ids, positions, rows, plan, lora)
        batch = build_paged_batch(query_lens, context_lens, tables, self.block_size,
                                  self.device)
        input_ids = torch.tensor(ids, device=self.device)[None]
        pos = torch.tensor(positions, device=self.device)[None]
        hidden = self.model(input_ids, pos, PagedAttention(self.cache, batch, self.decode),
                            lora)[0]

        result = RunnerOutput()
        offsets = [0]
        for item in items:
            offsets.append(offsets[-1] + item.num_new_tokens)
        for k, item in enumerate(items):
            if item.kind is RequestKind.EMBED:
                rows = hidden[offsets[k]:offsets[k + 1]].float()
                result.embeddings[item.seq_id] = (rows.sum(0).cpu().tolist(),
                                                  rows[-1].cpu().tolist())
        last_rows = [(item, offsets[k + 1] - 1) for k, item in enumerate(items)
                     if item.completes_prefill and item.kind is not RequestKind.EMBED]
        if self.config.task is Task.SEQUENCE_CLASSIFICATION:
            self._classify(hidden, last_rows, result)
            return result
        wanted = [(item, row) for item, row in last_rows if item.kind is not RequestKind.SCORE]
        if wanted:
            # a sequence with guesses needs the rows of its last token and of each guess
            picked: list[int] = []
            first_rows: dict[int, int] = {}
            for item, row in wanted:
                first_rows[item.seq_id] = len(picked)
                picked.extend(range(row - len(item.draft), row + 1))
            index = torch.tensor(picked, device=self.device)
            logits = self.model.logits(hidden[index]).float().cpu()  # (rows, V)
            self._sample(logits, first_rows, plan, result, self.loaded.eos_token_ids)
        for k, item in enumerate(items):
            if item.kind is RequestKind.SCORE:
                self._score(hidden[offsets[k]:offsets[k + 1]], item, result)
        return result

    def _decode_rows_only(self, items: tuple[ScheduledSeq, ...]) -> bool:
        """Whether every new token of the step is a row whose logits are sampled (a decode,
        or a verification's last token and guesses): the one-graph step's case."""
        return self.config.task is Task.CAUSAL_LM and all(
            item.kind in (RequestKind.GENERATE, RequestKind.PREDICT)
            and item.completes_prefill and item.num_new_tokens == 1 + len(item.draft)
            for item in items)

    def _execute_step(self, items: tuple[ScheduledSeq, ...], ids: list[int],
                      positions: list[int], rows: DecodeRows, plan: SamplingPlan,
                      lora: LoraStep | None) -> RunnerOutput:
        """A step of decode rows through the one compiled graph (app.modeling.decode_step);
        the same logits rows, in the same order, as the piecewise path's."""
        if self.step is None:
            raise RuntimeError("no compiled decode step")
        if self.model.pos_embed is None and self.model.inv_freq is None:
            self.model.init_rope(self.device)
        logits = run_decode_step(
            self.step, self.model, torch.tensor(ids, device=self.device),
            torch.tensor(positions, device=self.device), self.cache, rows,
            self.one_row_gemv, lora)
        first_rows: dict[int, int] = {}
        offset = 0
        for item in items:
            first_rows[item.seq_id] = offset
            offset += item.num_new_tokens
        result = RunnerOutput()
        self._sample(logits.float().cpu(), first_rows, plan, result, self.loaded.eos_token_ids)
        return result

    @staticmethod
    def _sample(logits: Tensor, rows: dict[int, int], plan: SamplingPlan,
                result: RunnerOutput, eos_ids: tuple[int, ...]) -> None:
        draws = [d for d in plan.draws if d.seq_id in rows]
        if len(draws) != len(plan.draws):
            raise RuntimeError("a draw names a sequence without logits in this step")
        if any(d.draft for d in draws):
            ModelRunner._sample_speculative(logits, rows, draws, result, eos_ids)
        elif draws:
            vocab = logits.shape[-1]
            masks = [None if d.matcher is None else allowed_tokens(d.matcher, vocab, eos_ids)
                     for d in draws]
            result.sampled = sample_batch(logits, [d.row for d in draws],
                                          [rows[d.seq_id] for d in draws], masks)
            for d, sampled in zip(draws, result.sampled, strict=True):
                if d.matcher is not None:
                    d.matcher.consume_token(sampled.token_id)
        for seq_id, (temperature, k) in plan.distributions.items():
            result.distributions[seq_id] = next_token_distribution(
                logits[rows[seq_id]], temperature, k)

    @staticmethod
    def _sample_speculative(logits: Tensor, rows: dict[int, int], draws: list[Draw],
                            result: RunnerOutput, eos_ids: tuple[int, ...]) -> None:
        """A step where some sequences bring guesses: those keep what verification keeps
        (app/spec_verify.py, under their grammar's masks), the others draw one token as
        usual;
        result.sampled stays one entry per draw, its first token, and
        result.extra_tokens has the rest."""
        plain = [i for i, d in enumerate(draws) if not d.draft]
        sampled: list[Sampled | None] = [None] * len(draws)
        if plain:
            vocab = logits.shape[-1]
            matchers = [draws[i].matcher for i in plain]
            masks = [None if m is None else allowed_tokens(m, vocab, eos_ids)
                     for m in matchers]
            out = sample_batch(logits, [draws[i].row for i in plain],
                               [rows[draws[i].seq_id] for i in plain], masks)
            for i, one in zip(plain, out, strict=True):
                sampled[i] = one
                matcher = draws[i].matcher
                if matcher is not None:
                    matcher.consume_token(one.token_id)
        for i, d in enumerate(draws):
            if not d.draft:
                continue
            first = rows[d.seq_id]
            draft: list[int] = list(d.draft)
            allowed: list[Tensor] | None = None
            if d.matcher is not None:
                draft, allowed = ModelRunner._grammar_masks(d.matcher, draft,
                                                            logits.shape[-1], eos_ids)
            kept = verify_draft(logits[first:first + len(draft) + 1], d.row, draft, allowed)
            if d.matcher is not None:
                d.matcher.consume_tokens([s.token_id for s in kept])
            sampled[i] = kept[0]
            result.extra_tokens[d.seq_id] = kept[1:]
            result.drafts[d.seq_id] = (len(d.draft), len(kept) - 1)
        result.sampled = [s for s in sampled if s is not None]

    @staticmethod
    def _grammar_masks(matcher: Matcher, draft: list[int], vocab: int,
                       eos_ids: tuple[int, ...]) -> tuple[list[int], list[Tensor]]:
        """The guesses the grammar accepts (a prefix of them: the rest could never be
        kept), and the tokens it allows at each position after the last token and after
        each accepted guess: computed by consuming the guesses, then rolled back, so the
        matcher is left as it was."""
        draft = draft[:matcher.validate_tokens(draft)]
        masks = [allowed_tokens(matcher, vocab, eos_ids)]
        for token in draft:
            matcher.consume_token(token)
            masks.append(allowed_tokens(matcher, vocab, eos_ids))
        if draft:
            matcher.rollback(len(draft))
        return draft, masks

    def _classify(self, hidden: Tensor, last_rows: list[tuple[ScheduledSeq, int]],
                  result: RunnerOutput) -> None:
        if not last_rows:
            return
        index = torch.tensor([row for _, row in last_rows], device=self.device)
        pooled = hidden[index]
        logits = self.model.classify(pooled)
        for k, (item, _) in enumerate(last_rows):
            head = self.adapters.head(item.adapter)
            if head is not None:  # a SEQ_CLS adapter's own head (PEFT modules_to_save)
                logits[k] = pooled[k] @ head.t()
        scores = label_scores(logits, self.config.problem_type)
        for (item, _), row in zip(last_rows, scores.cpu().tolist(), strict=True):
            result.class_scores[item.seq_id] = row

    def _score(self, hidden: Tensor, item: ScheduledSeq, result: RunnerOutput) -> None:
        # Position p predicts token p + 1; keep the predictions of target tokens only.
        window = (*item.token_ids, *(() if item.next_token is None else (item.next_token,)))
        end = item.start + len(window)  # exclusive: positions known in this window
        first = max(item.start, (item.score_from or 1) - 1)
        last = min(item.start + item.num_new_tokens, end - 1)  # exclusive
        if first >= last:
            return
        rows = hidden[first - item.start:last - item.start]
        targets = torch.tensor(window[first + 1 - item.start:last + 1 - item.start],
                               device=self.device)
        logits = self.model.logits(rows)
        if item.score_top:  # one softmax for both: each row's first entry is its target
            top = prompt_top_logprobs(logits, targets, item.score_top)
            result.score_top[item.seq_id] = dict(enumerate(top, start=first + 1))
            values = [entries[0][1] for entries in top]
        else:
            values = prompt_logprobs(logits, targets).cpu().tolist()
        result.score_logprobs[item.seq_id] = dict(enumerate(values, start=first + 1))
