"""lm-evaluation-harness against a real `python -m app serve` (its `local-completions`
model, with the checkpoint's tokenizer and again with the server's tokenizer endpoints),
and the same tasks through lm-eval's own `hf` backend on the same checkpoint: the same
accuracy, the same generations, the same perplexity within 0.1 %.

The tasks and their data live beside this file (no hub downloads): a multiple-choice task
(loglikelihood), a generate_until task and a loglikelihood_rolling (perplexity) task.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.live import LiveServer

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
CHECKPOINT = ROOT / "models" / "default-lm"
TASKS = ["fortune_mc", "fortune_gen", "fortune_ppl"]
# The server's context is 256 tokens, and a scored window also asks for one new token.
MAX_LENGTH = 255


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory: pytest.TempPathFactory) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    for template in HERE.glob("*.yaml.in"):
        text = template.read_text().replace("DATA", str(HERE))
        (folder / template.name.removesuffix(".in")).write_text(text)
    return TaskManager(include_path=str(folder))


def evaluate(task_manager: Any, model: str, model_args: str) -> dict[str, Any]:
    import lm_eval

    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=TASKS,
                                  task_manager=task_manager, log_samples=True, batch_size=1,
                                  device="cpu")
    assert out is not None
    return out


def figures(out: dict[str, Any]) -> dict[str, float]:
    r = out["results"]
    return {"acc": r["fortune_mc"]["acc,none"],
            "exact_match": r["fortune_gen"]["exact_match,none"],
            "word_perplexity": r["fortune_ppl"]["word_perplexity,none"],
            "byte_perplexity": r["fortune_ppl"]["byte_perplexity,none"]}


def generations(out: dict[str, Any]) -> list[str]:
    return [s["resps"][0][0] for s in out["samples"]["fortune_gen"]]


@pytest.fixture(scope="module")
def hf_reference(task_manager: Any) -> dict[str, Any]:
    return evaluate(task_manager, "hf", f"pretrained={CHECKPOINT},dtype=float32,"
                                        f"max_length={MAX_LENGTH}")


@pytest.mark.parametrize("backend", ["huggingface", "remote"])
def test_local_completions_agrees_with_the_hf_backend(task_manager: Any,
                                                      hf_reference: dict[str, Any],
                                                      backend: str) -> None:
    with LiveServer("--model", f"default-lm={CHECKPOINT}", "--compile", "off",
                    "--prepack", "off") as server:
        tokenizer = f",tokenizer={CHECKPOINT}" if backend == "huggingface" else ""
        ours = evaluate(task_manager, "local-completions",
                        f"model=default-lm,base_url={server.url}/v1/completions,"
                        f"tokenizer_backend={backend}{tokenizer},num_concurrent=1,"
                        f"max_retries=1,max_length={MAX_LENGTH},tokenized_requests=True")
    theirs = figures(hf_reference)
    got = figures(ours)
    print(f"lm-eval ({backend} tokenizer) ours: {got}\nlm-eval hf backend: {theirs}")
    assert got["acc"] == theirs["acc"]
    assert got["exact_match"] == theirs["exact_match"]
    assert generations(ours) == generations(hf_reference)
    for key in ("word_perplexity", "byte_perplexity"):
        assert abs(got[key] / theirs[key] - 1) < 1e-3, key
