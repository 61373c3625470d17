"""Zero-shot classification with the shipped default-lm, both methods of /v1/classify, on
the fortune classifier's held-out test rows (the classifier's own labels as candidates):

    python -m bench.zero_shot        # needs Debian's fortunes package (make model-data)

score    each label's likelihood as the continuation " <label>" of the text
generate the label the model writes, greedy, constrained to the labels
Prints accuracy of each (and the fine-tuned classifier head's, for reference) and the
time each took, same run. Texts are cut to their last 400 characters for all three.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

from app.config import Settings
from app.main import create_app
from app.train.data import read_labelled
from bench.machine import cpu_info, cpu_line

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "{text}\n\nThis fortune is about"


async def run(rows: list[tuple[str, str]], labels: list[str]) -> None:
    settings = Settings(model=[f"default-lm={ROOT / 'models' / 'default-lm'}",
                               f"fortune-classifier={ROOT / 'models' / 'fortune-classifier'}"],
                        max_candidate_labels=32, max_inputs=32)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench",
                                     timeout=600) as client:
            while (await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.5)
            print("| method | accuracy | seconds |\n|---|---|---|")
            for name, extra in (("head (fortune-classifier)", {"model": "fortune-classifier"}),
                                ("zero-shot score", {"candidate_labels": labels,
                                                     "method": "score",
                                                     "prompt_template": TEMPLATE}),
                                ("zero-shot generate", {"candidate_labels": labels,
                                                        "method": "generate",
                                                        "prompt_template": TEMPLATE})):
                correct, start = 0, time.perf_counter()
                for i in range(0, len(rows), 8 if "candidate_labels" in extra else 32):
                    chunk = rows[i:i + (8 if "candidate_labels" in extra else 32)]
                    r = await client.post("/v1/classify", json={
                        "text": [t for t, _ in chunk], **extra})
                    if r.status_code != 200:
                        raise SystemExit(f"{name}: {r.status_code} {r.text[:300]}")
                    for result, (_, gold) in zip(r.json()["results"], chunk, strict=True):
                        correct += result["label"] == gold
                print(f"| {name} | {correct / len(rows):.1%} | "
                      f"{time.perf_counter() - start:.0f} |")


def main() -> int:
    cpu = cpu_info()
    print(cpu_line(cpu))
    fortunes = Path("/usr/share/games/fortunes")
    if not fortunes.is_dir():
        print(f"skipped: {fortunes} missing (apt-get install fortunes)")
        return 0
    from app.train.fortunes import prepare

    with tempfile.TemporaryDirectory() as tmp:
        prepare(Path(tmp))
        labelled = read_labelled(Path(tmp) / "classifier" / "test.jsonl")
    labels = sorted({r.label for r in labelled})
    # The last 400 characters of each text (under 200 tokens): every method sees the same
    # input and stays inside the 256-token context with the template around it.
    asyncio.run(run([(r.text[-400:], r.label) for r in labelled], labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
