"""Tokenizer: the `tokenizers` library's tokenizer.json, plus special tokens, streaming-safe
incremental detokenization and chat templates from tokenizer_config.json.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from tokenizers import Tokenizer as HFTokenizer

from app.chat.jinja import compile_template, template_variables

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# Used when a checkpoint has no chat template: one "role: content" paragraph per message,
# then "assistant:" to cue the reply. Plain text, so it works with any vocabulary.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


class TokenizerError(Exception):
    """Missing or unreadable tokenizer files, or a chat template that fails to render."""


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json writes special tokens as "..." or {"content": "...", ...}
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


@dataclass
class Tokenizer:
    backend: HFTokenizer
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    chat_template: str | None = None
    add_bos_token: bool = False
    # Extra end-of-sequence ids (generation_config.json / config.json may list several).
    extra_eos_ids: tuple[int, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_dir(
        cls, directory: str | Path, eos_token_ids: Sequence[int] = ()
    ) -> Tokenizer:
        path = Path(directory)
        file = path / TOKENIZER_FILE
        if not file.exists():
            raise TokenizerError(f"{TOKENIZER_FILE} not found in {path}")
        try:
            backend = HFTokenizer.from_file(str(file))
        except Exception as exc:
            raise TokenizerError(f"{file}: unreadable tokenizer ({exc})") from exc
        cfg: dict[str, Any] = {}
        cfg_file = path / TOKENIZER_CONFIG_FILE
        if cfg_file.exists():
            try:
                cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise TokenizerError(f"{cfg_file}: not valid JSON ({exc})") from exc
        template = cfg.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        jinja_file = path / "chat_template.jinja"
        if template is None and jinja_file.exists():
            template = jinja_file.read_text(encoding="utf-8")
        return cls(
            backend=backend,
            bos_token=_token_text(cfg.get("bos_token")),
            eos_token=_token_text(cfg.get("eos_token")),
            pad_token=_token_text(cfg.get("pad_token")),
            chat_template=template if isinstance(template, str) else None,
            add_bos_token=bool(cfg.get("add_bos_token", False)),
            extra_eos_ids=tuple(eos_token_ids),
            config=cfg,
        )

    def save(self, directory: str | Path) -> None:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(out / TOKENIZER_FILE))
        cfg = dict(self.config)
        cfg.update(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": self.bos_token,
                "eos_token": self.eos_token,
                "pad_token": self.pad_token,
                "add_bos_token": self.add_bos_token,
                "model_max_length": cfg.get("model_max_length", 1_000_000),
            }
        )
        if self.chat_template is not None:
            cfg["chat_template"] = self.chat_template
        (out / TOKENIZER_CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    # ------------------------------------------------------------------ special tokens

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        return self.token_to_id(self.bos_token)

    @property
    def pad_id(self) -> int | None:
        return self.token_to_id(self.pad_token)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        ids = list(self.extra_eos_ids)
        own = self.token_to_id(self.eos_token)
        if own is not None and own not in ids:
            ids.insert(0, own)
        return tuple(ids)

    @property
    def vocab_size(self) -> int:
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    # ------------------------------------------------------------------ text <-> ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # e.g. a lone surrogate from JSON "\\ud800"
            raise TokenizerError(f"text is not valid Unicode at position {exc.start}: "
                                 f"{exc.reason}") from exc
        ids: list[int] = self.backend.encode(text, add_special_tokens=False).ids
        bos = self.bos_id
        # Templates that already start with the BOS text must not get a second one.
        if (add_special_tokens and self.add_bos_token and bos is not None
                and (not ids or ids[0] != bos)):
            ids = [bos, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def id_to_token(self, token_id: int) -> str | None:
        token = self.backend.id_to_token(token_id)
        return None if token is None else str(token)

    # ------------------------------------------------------------------ chat

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[dict[str, Any]] | None = None,
        documents: Sequence[dict[str, Any]] | None = None,
        **template_kwargs: Any,
    ) -> str:
        """Render messages to the prompt text as `transformers`' apply_chat_template does:
        keys whose value is None are dropped from each message, a message's reasoning is
        also given under `reasoning_content` and `thinking`, and the template sees
        `messages`, `tools` (JSON-schema dicts), `documents`, `add_generation_prompt`, the
        tokenizer's named special tokens and then `template_kwargs` (chat_template_kwargs
        such as enable_thinking; they win over special tokens of the same name)."""
        template = self.chat_template or FALLBACK_CHAT_TEMPLATE
        context = {**self.special_tokens_map(), **template_kwargs}
        try:
            return compile_template(template).render(
                messages=[_template_message(m) for m in messages],
                tools=list(tools) if tools is not None else None,
                documents=list(documents) if documents is not None else None,
                add_generation_prompt=add_generation_prompt,
                **context,
            )
        except TemplateError as exc:
            raise TokenizerError(f"chat template failed: {exc}") from exc

    def special_tokens_map(self) -> dict[str, str]:
        """The named special tokens that are set, as transformers hands them to templates."""
        named = {name: _token_text(self.config.get(name)) for name in SPECIAL_TOKEN_NAMES}
        named.update(bos_token=self.bos_token, eos_token=self.eos_token,
                     pad_token=self.pad_token)
        return {name: value for name, value in named.items() if value is not None}

    def template_knows(self, variable: str) -> bool:
        """Whether the chat template reads `variable` (e.g. `tools`)."""
        return variable in template_variables(self.chat_template or FALLBACK_CHAT_TEMPLATE)


# transformers' SPECIAL_TOKENS_ATTRIBUTES: the special tokens a template may name
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")
# transformers passes a message's reasoning under each of these names
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


def _template_message(message: dict[str, Any]) -> dict[str, Any]:
    # OpenAI clients send `content: null`, `tool_calls: null`; templates handle a missing key
    out = {key: value for key, value in message.items() if value is not None}
    reasoning = next((out[key] for key in _REASONING_KEYS if key in out), None)
    if reasoning is not None:
        out = {"thinking": reasoning, **out, "reasoning_content": reasoning}
    return out


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas, never splitting a character.

    Byte-level BPE tokens can end in the middle of a UTF-8 sequence; decoding such a prefix
    gives U+FFFD. We hold text back until the tail decodes cleanly, and decode only a short
    window of recent tokens so the cost per token stays constant.

    Not tokenizers.decoders.DecodeStream (vLLM v1's choice; tried, tokenizers 0.23): it
    has no flush, so bytes still pending when a stream ends inside a character are lost
    and a completion's text stops being the join of its tokens' texts
    (tests/api/test_completion_scoring.py::test_echo_with_logprobs_scores_token_id_prompts),
    and after a prompt that ends inside a character its first chunk repeats the prompt's
    text (tests/test_tokenizer.py::test_a_prompt_ending_mid_character_never_leaks_into_the_output).
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int] = (),
                 skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = list(prompt_ids[-6:])
        # ids[prefix:read] is already emitted context; ids[read:] is pending.
        self.prefix = 0
        self.read = len(self.ids)

    def push(self, token_ids: Sequence[int]) -> str:
        """Add new token ids; return the text that is now safe to emit (maybe '')."""
        self.ids.extend(token_ids)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix:self.read], self.skip_special_tokens)
        after = decode(self.ids[self.prefix:], self.skip_special_tokens)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            delta = after[len(before):]
            self.prefix, self.read = self.read, len(self.ids)
            return delta
        return ""

    def flush(self) -> str:
        """The rest of the text at the end of the stream, replacement characters included."""
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix:self.read], self.skip_special_tokens)
        after = decode(self.ids[self.prefix:], self.skip_special_tokens)
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):] if after.startswith(before) else ""
