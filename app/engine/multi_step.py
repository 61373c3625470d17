"""Multi-step decoding (SchedulerConfig.num_scheduler_steps; vLLM had it as
--num-scheduler-steps): while every running sequence plainly decodes, one schedule has
the worker run several decode steps, each fed the tokens the one before sampled
(ModelRunner.execute), so the event loop's round trip, the scheduling and the update are
paid once for that many tokens. The later tokens come back as extra tokens, applied one
at a time (app/engine/step_update.py): stop strings, EOS and max_tokens end a sequence
at the exact token, and a sequence that ends inside the steps (or is aborted) has the
rest dropped. A request arriving with a seat free for it, or an abort, cuts the steps
short after the one in progress (Engine._cut_short), so a newcomer's prompt waits one
step, not up to steps - 1 more.

More than one step only where no token of the coming steps can change what they
compute. The scheduler adds what only it knows: every running sequence is in the step,
nothing waits for a free seat, no draft model (which must see every step's tokens; with
n-gram lookup, a step where nothing was guessed qualifies), and the blocks for every
step's slot. Pure Python, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.engine.request import RequestKind, TokenSequence


def decode_steps(want: int, picked: Sequence[tuple[TokenSequence, int, tuple[int, ...]]],
                 max_model_len: int) -> int:
    """At most `want` steps for the scheduled (sequence, new tokens, guesses): 1 unless
    each plainly decodes (one new token and nothing else uncomputed, no guesses, no forks
    to come, a GENERATE without penalties or a grammar, min_tokens met); else as many as
    every sequence's max_tokens and the context (`max_model_len`, 0: none) leave room
    for."""
    if want <= 1 or not picked:
        return 1
    for seq, chunk, draft in picked:
        p = seq.params
        if (chunk != 1 or draft or seq.num_uncomputed != 1 or seq.pending_forks
                or seq.kind is not RequestKind.GENERATE or seq.constrained
                or p.needs_penalties or seq.num_output_tokens < p.min_tokens):
            return 1
        room = min(p.max_tokens - seq.num_output_tokens,
                   (max_model_len or 1 << 30) - len(seq.token_ids))
        want = min(want, room)
        if want <= 1:
            return 1
    return want
