"""The official openai client's response_format against a real server of the shipped
default-lm: chat and completions, streamed and not, json_schema and json_object."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.live import LiveServer

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = {"type": "object",
          "properties": {"joke": {"type": "string", "maxLength": 40},
                         "funny": {"type": "boolean"}},
          "required": ["joke", "funny"], "additionalProperties": False}
FORMAT: Any = {"type": "json_schema",
               "json_schema": {"name": "joke", "schema": SCHEMA, "strict": True}}


@pytest.fixture(scope="module")
def client() -> Any:
    from openai import OpenAI

    with LiveServer("--model", f"default-lm={ROOT / 'models' / 'default-lm'}",
                    "--compile", "off", "--prepack", "off") as live:
        yield OpenAI(base_url=live.url + "/v1", api_key="unused")


def test_chat_response_format(client: Any) -> None:
    messages = [{"role": "user", "content": "Tell me a joke as JSON"}]
    done = client.chat.completions.create(model="default-lm", messages=messages,
                                          response_format=FORMAT, max_tokens=120,
                                          temperature=1.0, seed=3)
    jsonschema.validate(json.loads(done.choices[0].message.content), SCHEMA)
    chunks = client.chat.completions.create(model="default-lm", messages=messages,
                                            response_format=FORMAT, max_tokens=120,
                                            temperature=1.0, seed=3, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == done.choices[0].message.content  # same seed, same constraint
    anything = client.chat.completions.create(model="default-lm", messages=messages,
                                              response_format={"type": "json_object"},
                                              max_tokens=120, temperature=1.0, seed=1)
    assert isinstance(json.loads(anything.choices[0].message.content), dict)


def test_completions_response_format(client: Any) -> None:
    done = client.completions.create(model="default-lm", prompt="A joke:", max_tokens=120,
                                     temperature=1.0, seed=5,
                                     extra_body={"response_format": FORMAT})
    jsonschema.validate(json.loads(done.choices[0].text), SCHEMA)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="default-lm", prompt="A joke:", max_tokens=120, temperature=1.0, seed=5,
        stream=True, extra_body={"response_format": FORMAT}) if c.choices)
    assert streamed == done.choices[0].text
    regex = client.completions.create(model="default-lm", prompt="Year:", max_tokens=8,
                                      extra_body={"structured_outputs": {"regex": r"\d{4}"}})
    assert len(regex.choices[0].text) == 4 and regex.choices[0].text.isdigit()
