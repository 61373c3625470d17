"""What a ModelRunner does once, before the first request, on the compute thread:
trace every graph a step can meet (the warm-up), choose the one-row form of the one-graph
decode step (app.modeling.decode_step), and measure what speculative decoding's
verification step costs against a plain one (for the engine's startup check).

Every step here writes into blocks nothing holds yet: they run before anything is
allocated, and nothing reads what they wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from app.engine.request import RequestKind
from app.engine.sampling_plan import SamplingPlan
from app.engine.scheduler import ScheduledSeq, SchedulerOutput
from app.modeling.attention import PagedKVCache
from app.modeling.attention_kernel import kernel_decode_attention, kernel_serves
from app.modeling.config import Task
from app.modeling.decode_step import CompiledStep, compile_decode_step, faster_one_row_form
from app.modeling.timing import paired_seconds, speedup

if TYPE_CHECKING:
    from app.engine.runner import ModelRunner

# The compiled reductions must beat the attention kernel by this much to be kept: the
# kernel reads each row's own length, so with it decode rows of any lengths share the
# one-graph step (app.modeling.decode_step), a gain the equal-length step timed here does
# not see (mixed-length work on default-lm, AMD EPYC Zen 5: 1.4-1.5x the tokens/s).
REDUCTIONS_MIN_GAIN = 1.05


def measuring_step(cache: PagedKVCache, context: int, draft: tuple[int, ...] = ()
                   ) -> SchedulerOutput:
    """A step of one sequence decoding after `context` cached tokens (with `draft`
    guesses to verify), over whatever blocks: for the startup measurements, which run
    before anything is allocated."""
    bs, blocks = cache.block_size, cache.num_blocks
    table = tuple(b % blocks for b in range(-(-(context + len(draft) + 1) // bs)))
    return SchedulerOutput((ScheduledSeq(
        seq_id=-1, request_id="measure", kind=RequestKind.GENERATE, token_ids=(1, *draft),
        start=context, block_table=table, num_prompt_tokens=context,
        completes_prefill=True, draft=draft),))


def warm_up(runner: ModelRunner) -> None:
    """Steps that meet every graph: several prompt tokens, two decodes, one decode,
    five decodes (each a different token count and LM-head row count). They write
    into free blocks only: nothing is allocated yet, and nothing reads them later."""
    kind = (RequestKind.GENERATE if runner.config.task is Task.CAUSAL_LM
            else RequestKind.CLASSIFY)
    bs, blocks = runner.cache.block_size, runner.cache.num_blocks

    def seq(i: int, start: int, n: int) -> ScheduledSeq:
        table = tuple((2 * i + b) % blocks for b in range(-(-(start + n) // bs)))
        return ScheduledSeq(seq_id=-1 - i, request_id="warm-up", kind=kind,
                            token_ids=tuple(range(1, n + 1)), start=start,
                            block_table=table, num_prompt_tokens=start + n,
                            completes_prefill=True)

    # Prompts of several tokens; then decodes of one and of several sequences, over
    # one block and over several (each a different token count, LM-head row count
    # and attention width).
    steps = [[seq(0, 0, 5), seq(1, 0, 3)], [seq(0, 5, 1), seq(1, 3, 1)], [seq(0, 6, 1)],
             [seq(i, 0, 1) for i in range(2, 7)], [seq(i, 1, 1) for i in range(2, 7)],
             [seq(0, bs + 1, 1)], [seq(i, bs + 1, 1) for i in range(5)],
             [seq(i, 2 * bs + 1, 1) for i in range(5)],
             # decodes of as many rows as each few-rows range holds (2-4, 5-8, more):
             # a graph's row count is symbolic within the kernel's range only
             [seq(i, bs + 1, 1) for i in range(3)], [seq(i, bs + 1, 1) for i in range(10)],
             # more rows than the few-rows kernel takes (app.modeling.few_rows)
             [seq(i, 0, 1) for i in range(2, 12)]]
    # Decode steps run as one graph (app.modeling.decode_step) where they can; the
    # piecewise graphs still serve the steps that cannot (decodes beside a prompt
    # chunk; decodes far apart in length unless the attention is the C++ kernel), so
    # both are traced.
    step, runner.step = runner.step, None
    _warm_up_steps(runner, steps)
    runner.step = step
    if step is not None:
        # attention first: the one-row graphs are then traced once, with the attention
        # kept (each choice traces a graph per candidate; the second pass the rest)
        runner.compile_reason += "; " + _choose_decode_attention(runner, [
            seq(i, 0, 1) for i in range(2, 10)])
        runner.compile_reason += "; " + _choose_one_row_form(runner)
        _warm_up_steps(runner, steps)

def _choose_one_row_form(runner: ModelRunner, context: int = 48) -> str:
    """Time one-row decode steps in both forms (app.modeling.decode_step) and keep
    the faster; a line for the compile reason."""
    one = measuring_step(runner.cache, context)

    def run(gemv: bool) -> None:
        runner.one_row_gemv = gemv
        runner.execute(one, SamplingPlan())

    runner.one_row_gemv, gain = faster_one_row_form(run)
    form = "multiply-and-reduce" if runner.one_row_gemv else "plain products"
    return f"one-row steps as {form} (multiply-and-reduce measured {gain:.2f}x)"

def _choose_decode_attention(runner: ModelRunner, rows: list[ScheduledSeq],
                             context: int = 96) -> str:
    """Time a decode step of `rows` (placed at `context` cached tokens) with attention as
    the compiled reductions and through our C++ kernel (app.modeling.attention_kernel),
    each in its own step graph, and keep the faster for the step and the piecewise
    decode path alike; a line for the compile reason."""
    if not kernel_serves(runner.device, runner.loaded.dtype):
        return "decode attention: compiled reductions (the C++ kernel cannot serve here)"
    bs, blocks = runner.cache.block_size, runner.cache.num_blocks
    width = -(-(context + 1) // bs)  # each row's own blocks, side by side
    at = [item._replace(start=context, block_table=tuple(
        (i * width + b) % blocks for b in range(width))) for i, item in enumerate(rows)]
    out = SchedulerOutput(tuple(at))
    reductions, kernel = runner.step, compile_decode_step(kernel_attention=True)

    def run(step: CompiledStep | None) -> Callable[[], object]:
        def go() -> None:
            runner.step = step
            runner.execute(out, SamplingPlan())
        return go

    gain = speedup(run(reductions), run(kernel), 7)
    chosen = gain * REDUCTIONS_MIN_GAIN >= 1.0
    runner.step = kernel if chosen else reductions
    if chosen:
        runner.decode = kernel_decode_attention
    return (f"decode attention: {'C++ kernel' if chosen else 'compiled reductions'} (the "
            f"kernel measured {gain:.2f}x on a step of {len(rows)} rows)")


def _warm_up_steps(runner: ModelRunner, steps: list[list[ScheduledSeq]]) -> None:
    for scheduled in steps:
        runner.execute(SchedulerOutput(tuple(scheduled)), SamplingPlan())
    if runner.adapters.max_loras == 0:
        return
    # The LoRA graphs (their weights are whatever the slots hold: zeros now): one
    # adapter beside base rows, and several adapters in one step.
    for scheduled in steps:
        one = [0] + [-1] * (len(scheduled) - 1)
        runner.execute(SchedulerOutput(tuple(scheduled)), SamplingPlan(), slots=one)
        if len(scheduled) > 1 and runner.adapters.max_loras > 1:
            several = [i % 2 for i in range(len(scheduled))]
            runner.execute(SchedulerOutput(tuple(scheduled)), SamplingPlan(), slots=several)

def verification_cost(runner: ModelRunner, guesses: int, context: int = 48
                      ) -> tuple[float, float]:
    """Seconds of a batch-1 decode step and of a verification step scoring the last
    token and `guesses` guesses (medians, on this model's own graphs, at a context of
    `context` tokens): what speculative decoding's first guess must pay for. Writes
    into free blocks only, like the warm-up."""
    context = min(context, runner.cache.num_blocks * runner.cache.block_size - guesses - 1)
    plain = measuring_step(runner.cache, context)
    verify = measuring_step(runner.cache, context, tuple(range(2, guesses + 2)))
    return paired_seconds(lambda: runner.execute(plain, SamplingPlan()),
                          lambda: runner.execute(verify, SamplingPlan()), 7)

