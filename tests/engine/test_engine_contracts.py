"""The engine's contracts: sequence cap with forks, min_tokens over stop strings, EOS ids
from generation_config.json, classification pooling, bounded output queues, sampling in
the worker, shutdown with a step in flight."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import torch

from app.checkpoint import load_model
from app.engine.engine import Engine
from app.engine.errors import EngineStopped
from app.engine.request import RequestKind
from app.engine.stats import StepStats
from app.sampling_params import SamplingParams
from app.tokenizer import Tokenizer
from tests.engine.conftest import make_engine, run
from tests.engine.test_engine import prompts
from tests.waiting import until

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


def test_forks_and_preempted_children_respect_max_num_seqs(with_engine: Any) -> None:
    """n=4 with max_num_seqs=4: the request holds all four seats from admission, other
    requests wait for free seats, and a preempted child comes back needing one seat."""

    async def body(engine: Engine) -> None:
        vocab = engine.model_config.vocab_size
        running_seen: list[int] = []

        def watch(stats: StepStats) -> None:
            running_seen.append(len(engine.scheduler.running))

        engine.step_observers.append(watch)
        wide = prompts(vocab, [14], seed=3)[0]
        params = SamplingParams(max_tokens=20, temperature=1.0, seed=11, n=4, ignore_eos=True)
        alone = await engine.generate(wide, params)
        others = prompts(vocab, [6, 9, 5], seed=4)
        results = await asyncio.gather(
            engine.generate(wide, params),
            *(engine.generate(p, SamplingParams(max_tokens=15, temperature=0.0,
                                                ignore_eos=True)) for p in others))
        assert engine.scheduler.num_preemptions > 0  # the cache is too small for all
        assert max(running_seen) <= 4, running_seen
        assert [c.token_ids for c in results[0].completions] == [
            c.token_ids for c in alone.completions]
        assert all(c.finish_reason == "length" for r in results for c in r.completions)

    # 24 blocks of 4 tokens: four completions of 34 tokens need 36 blocks.
    with_engine("llama_gqa_llama3", body, num_kv_blocks=24, max_num_seqs=4,
                max_num_batched_tokens=8, watermark=0.0)


def test_min_tokens_holds_off_stop_strings(with_engine: Any, tokenizer: Tokenizer) -> None:
    async def body(engine: Engine) -> None:
        p = prompts(engine.model_config.vocab_size, [5])[0]
        ids = (await engine.generate(p, GREEDY)).completions[0].token_ids
        stop = next(t for t in (tokenizer.decode([i]) for i in ids[1:4]) if t.strip())
        early = await engine.generate(p, SamplingParams(**{**GREEDY.__dict__,
                                                          "stop": (stop,)}))
        assert len(early.completions[0].token_ids) <= 4
        held = await engine.generate(p, SamplingParams(**{**GREEDY.__dict__, "stop": (stop,),
                                                         "min_tokens": 8}))
        assert len(held.completions[0].token_ids) >= 8

    with_engine("llama_gqa_llama3", body)


def test_eos_listed_only_in_generation_config_ends_generation(
        hf_checkpoint: Any, tokenizer: Tokenizer, tmp_path: Path) -> None:
    source, _ = hf_checkpoint("llama_gqa_llama3")
    directory = tmp_path / "chat"
    shutil.copytree(source, directory)
    loaded = load_model(source, dtype="float32", device="cpu")

    async def greedy_ids(engine: Engine) -> list[int]:
        await engine.start()
        try:
            p = prompts(engine.model_config.vocab_size, [5])[0]
            out = await engine.generate(p, SamplingParams(max_tokens=12, temperature=0.0))
            return out.completions[0].token_ids
        finally:
            await engine.shutdown()

    ids = run(greedy_ids(make_engine(loaded, tokenizer)))
    end_of_turn = ids[3]
    (directory / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [tokenizer.eos_ids[0], end_of_turn]}))
    chat = load_model(directory, dtype="float32", device="cpu")
    assert end_of_turn in chat.eos_token_ids and end_of_turn not in chat.config.eos_token_ids
    stopped = run(greedy_ids(make_engine(chat, Tokenizer.from_dir(directory))))
    assert stopped == ids[:ids.index(end_of_turn) + 1]


def test_classification_pools_the_last_non_pad_token(with_engine: Any, hf_checkpoint: Any,
                                                      tokenizer: Tokenizer) -> None:
    _, ref = hf_checkpoint("gpt2_cls")
    pad = tokenizer.pad_id
    assert pad is not None

    async def body(engine: Engine) -> None:
        text = prompts(engine.model_config.vocab_size, [7])[0]
        padded = [*text, pad, pad]
        out = await engine.generate(padded, SamplingParams(max_tokens=1),
                                    kind=RequestKind.CLASSIFY)
        with torch.no_grad():
            expected = torch.softmax(ref(torch.tensor([padded])).logits[0], -1)
            unpadded = torch.softmax(ref(torch.tensor([text])).logits[0], -1)
        assert torch.allclose(expected, unpadded, atol=1e-6)  # transformers skips the pads
        assert out.class_scores is not None
        assert torch.allclose(torch.tensor(out.class_scores), expected, atol=1e-5)
        assert out.usage.prompt_tokens == len(padded)

    with_engine("gpt2_cls", body)


def test_a_slow_reader_gets_merged_outputs_not_a_growing_queue(with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        p = prompts(engine.model_config.vocab_size, [5])[0]
        expected = (await engine.generate(p, SamplingParams(max_tokens=40, temperature=0.0,
                                                            ignore_eos=True))).completions[0]
        stream = engine.submit(p, SamplingParams(max_tokens=40, temperature=0.0,
                                                 ignore_eos=True, logprobs=True))
        await until(lambda: engine.num_requests == 0, "the request to finish unread")
        outputs = await stream.collect()
        assert len(outputs) == 1 and outputs[0].finished
        done = outputs[0].completions[0]
        assert done.token_ids == expected.token_ids and done.text == expected.text
        assert done.logprobs is not None and len(done.logprobs) == 40

    with_engine("llama_gqa_llama3", body)


def test_sampling_runs_in_the_worker_thread(with_engine: Any, monkeypatch: Any) -> None:
    import app.engine.runner as runner

    threads: set[str] = set()
    real = runner.sample_batch

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.add(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "sample_batch", spy)

    async def body(engine: Engine) -> None:
        p = prompts(engine.model_config.vocab_size, [5])[0]
        await engine.generate(p, SamplingParams(max_tokens=4, temperature=0.7, seed=1))

    with_engine("llama_gqa_llama3", body)
    assert threads and all(name.startswith("engine-") for name in threads), threads


def test_shutdown_waits_for_the_step_in_flight_without_blocking_the_loop(
        with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        entered, release = threading.Event(), threading.Event()

        def hold(out: Any) -> None:
            entered.set()
            release.wait(30)

        engine.fault_hook = hold
        p = prompts(engine.model_config.vocab_size, [5])[0]
        stream = engine.submit(p, GREEDY)
        await until(entered.is_set, "the step to start")
        stopping = asyncio.ensure_future(engine.shutdown())
        ticks = 0
        for _ in range(20):  # the loop keeps running while shutdown waits for the step
            await asyncio.sleep(0)
            ticks += 1
        assert ticks == 20 and not stopping.done()
        # Nothing was touched while the step runs: the request is still in flight.
        assert engine.num_requests == 1 and engine.blocks.num_used > 0
        release.set()
        await stopping
        assert engine.num_requests == 0 and engine.blocks.num_used == 0
        try:
            await stream.collect()
            raise AssertionError("the request should end with EngineStopped")
        except EngineStopped:
            pass

    with_engine("llama_gqa_llama3", body)
