"""Tokenizer wrapper: special tokens, incremental detokenization, chat templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.tokenizer import (
    FALLBACK_CHAT_TEMPLATE,
    IncrementalDetokenizer,
    Tokenizer,
    TokenizerError,
)
from app.train.bpe import CHAT_TEMPLATE, EOS_TOKEN

TEXTS = [
    "Hello, world! 東京 café 🦊🚀 naïve",
    "def f(x):\n    return x * 2  # ünïcödé",
    "😀😃😄😁 multi-byte run: ΑΒΓΔ ЖЗИЙ",
]


def test_round_trip_and_special_tokens(tokenizer: Tokenizer, tmp_path: Path) -> None:
    for text in TEXTS:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    tokenizer.save(tmp_path)
    again = Tokenizer.from_dir(tmp_path, eos_token_ids=[7])
    assert again.eos_token == EOS_TOKEN
    assert again.eos_ids[0] == tokenizer.token_to_id(EOS_TOKEN)
    assert 7 in again.eos_ids
    assert again.pad_id == tokenizer.pad_id is not None
    assert again.encode(TEXTS[0]) == tokenizer.encode(TEXTS[0])
    # special tokens are skipped on decode unless asked for
    ids = [*tokenizer.encode("hi"), tokenizer.eos_ids[0]]
    assert tokenizer.decode(ids) == "hi"
    assert tokenizer.decode(ids, skip_special_tokens=False) == "hi" + EOS_TOKEN


def test_special_tokens_as_dicts_and_bos(tokenizer: Tokenizer, tmp_path: Path) -> None:
    tokenizer.save(tmp_path)
    cfg_file = tmp_path / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["bos_token"] = {"content": EOS_TOKEN, "special": True}
    cfg["add_bos_token"] = True
    cfg_file.write_text(json.dumps(cfg))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.bos_token == EOS_TOKEN
    ids = tok.encode("hello")
    assert ids[0] == tok.bos_id
    assert tok.encode("hello", add_special_tokens=False) == ids[1:]


def test_missing_tokenizer_file(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"tokenizer\.json not found"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(TokenizerError, match="unreadable tokenizer"):
        Tokenizer.from_dir(tmp_path)


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_detokenization_never_splits_characters(
    tokenizer: Tokenizer, text: str
) -> None:
    ids = tokenizer.encode(text)
    prompt = tokenizer.encode("Prompt: ")
    detok = IncrementalDetokenizer(tokenizer, prompt)
    pieces = []
    for token in ids:  # one token at a time, as a stream would deliver them
        piece = detok.push([token])
        assert "\ufffd" not in piece
        pieces.append(piece)
    pieces.append(detok.flush())
    assert "".join(pieces) == text
    # multi-byte characters span several byte-level tokens here, so some pushes emit nothing
    assert any(p == "" for p in pieces[:-1]) or len(ids) == len(text)


def test_chat_template_renders_like_transformers(tokenizer: Tokenizer, tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    tokenizer.save(tmp_path)
    reference = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hi 🦊"},
    ]
    ours = Tokenizer.from_dir(tmp_path)
    assert ours.chat_template == CHAT_TEMPLATE
    expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.apply_chat_template(messages) == expected
    assert ours.apply_chat_template(messages, add_generation_prompt=False) == (
        reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    )


def test_fallback_template_and_sandbox(tokenizer: Tokenizer) -> None:
    plain = Tokenizer(backend=tokenizer.backend)
    assert plain.chat_template is None
    text = plain.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "user: hi\n\nassistant:"
    assert FALLBACK_CHAT_TEMPLATE  # documented in the README
    hostile = Tokenizer(backend=tokenizer.backend,
                        chat_template="{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(TokenizerError):
        hostile.apply_chat_template([{"role": "user", "content": "x"}])
    failing = Tokenizer(backend=tokenizer.backend,
                        chat_template="{{ raise_exception('roles must alternate') }}")
    with pytest.raises(TokenizerError, match="roles must alternate"):
        failing.apply_chat_template([{"role": "user", "content": "x"}])


def test_a_prompt_ending_mid_character_never_leaks_into_the_output(
    tokenizer: Tokenizer,
) -> None:
    """Cut the token stream of one text at every place, also inside a multi-byte
    character: the generated side's text is a suffix of the whole text holding nothing
    the prompt decodes to (a character begun in the prompt is the prompt's), and it
    runs to the end."""
    ids = tokenizer.encode("Prompt: 東京 done")
    whole = tokenizer.decode(ids)
    split = [i for i in range(1, len(ids)) if tokenizer.decode(ids[:i]).endswith("\ufffd")]
    assert split  # the text does split a character between tokens here
    for cut in range(1, len(ids)):
        detok = IncrementalDetokenizer(tokenizer, ids[:cut])
        out = "".join(detok.push([token]) for token in ids[cut:]) + detok.flush()
        prompt_text = tokenizer.decode(ids[:cut])
        if not prompt_text.endswith("\ufffd"):  # cut between characters
            assert out == whole[len(prompt_text):], (cut, out)
            continue
        prompt_text = prompt_text.rstrip("\ufffd")
        assert whole.endswith(out) and out.endswith(" done"), (cut, out)
        assert len(out) <= len(whole) - len(prompt_text), (cut, prompt_text, out)
