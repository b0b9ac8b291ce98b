"""Text in and out of the engine: encoding, incremental decoding with stop strings, and chat templates.

Decoding is incremental over the whole generated id list: after each token the ids are decoded again and only the
new suffix is sent, so the streamed pieces always add up to ``tokenizer.decode(ids)`` (what ``curmoe generate``
prints). A suffix is held back while it could still become a stop string, or while it ends in U+FFFD (a byte-level
tokenizer's incomplete UTF-8 character).

Chat templates are Jinja templates as Hugging Face tokenizers store them (``chat_template.jinja`` beside
``tokenizer.json``, or the ``chat_template`` key of ``tokenizer_config.json``), rendered in a sandbox with
``messages``, ``add_generation_prompt=True``, ``bos_token`` and ``eos_token``, like
``transformers.PreTrainedTokenizer.apply_chat_template``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from curmoe.common.errors import CheckpointError, InvalidInputError
from curmoe.models.tokenizer import load_tokenizer

__all__ = ["TextCodec", "StreamDecoder", "NoChatTemplateError", "find_chat_template"]


class NoChatTemplateError(InvalidInputError):
    """The tokenizer has no chat template, so chat messages cannot be turned into a prompt."""


def _token_text(v: Any) -> str | None:
    """A tokenizer_config special token: a string or ``{"content": ...}``."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def find_chat_template(tokenizer_path: str | os.PathLike[str]) -> tuple[str | None, dict[str, Any]]:
    """(template source or None, tokenizer_config dict) from the files beside ``tokenizer.json``."""
    folder = Path(tokenizer_path).parent
    cfg: dict[str, Any] = {}
    cfg_file = folder / "tokenizer_config.json"
    if cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{cfg_file} is not valid JSON ({e}); fix or remove it") from e
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8"), cfg
    tpl = cfg.get("chat_template")
    if isinstance(tpl, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
        tpl = named.get("default") or next(iter(named.values()), None)
    return (tpl if isinstance(tpl, str) else None), cfg


class TextCodec:
    """A model's tokenizer plus its chat template (if any)."""

    def __init__(self, tokenizer_path: str | os.PathLike[str], chat_template: str | None = None) -> None:
        self.path = Path(tokenizer_path)
        self.tok = load_tokenizer(self.path)
        found, cfg = find_chat_template(self.path)
        self.chat_template_source = chat_template if chat_template is not None else found
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        self._template: Any = None
        if self.chat_template_source is not None:
            from jinja2 import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise
            try:
                self._template = env.from_string(self.chat_template_source)
            except TemplateError as e:
                raise CheckpointError(f"the chat template of {self.path} does not compile: {e}") from e

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    def end_of_turn_ids(self) -> tuple[int, ...]:
        """The template's end-of-turn token id (tokenizer_config's eos_token), if the vocabulary has it."""
        i = self.tok.token_to_id(self.eos_token) if self.eos_token else None
        return () if i is None else (int(i),)

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids))

    def token_text(self, i: int) -> str:
        """One token as text for logprobs (special tokens kept)."""
        return self.tok.decode([int(i)], skip_special_tokens=False)

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text for chat ``messages`` (role, content) with the generation prompt appended."""
        if self._template is None:
            raise NoChatTemplateError(
                f"the tokenizer {self.path} has no chat template (no chat_template.jinja or tokenizer_config.json "
                "chat_template beside it), so /v1/chat/completions cannot build a prompt; use /v1/completions, or "
                "start the server with --chat-template FILE")
        from jinja2 import TemplateError

        try:
            return self._template.render(messages=messages, add_generation_prompt=True, bos_token=self.bos_token or "",
                                         eos_token=self.eos_token or "")
        except TemplateError as e:
            raise InvalidInputError(f"the chat template refused these messages: {e}") from e


def _raise(message: str) -> None:
    from jinja2 import TemplateError

    raise TemplateError(message)


class StreamDecoder:
    """Turns generated ids into text pieces, cut at the first stop string (which is not part of the text)."""

    def __init__(self, codec: TextCodec, stop: list[str] | None = None, incremental: bool = True) -> None:
        self.codec, self.incremental = codec, incremental or bool(stop)  # else all text comes at flush()
        self.stop = [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self.sent = ""  # text already handed out
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; returns the new text that may be sent now (may be ""). Sets ``stopped`` on a stop string."""
        if self.stopped:
            return ""
        self.ids.append(int(token_id))
        if not self.incremental:
            return ""
        text = self.codec.decode(self.ids)
        # the earliest stop string (one can only be new if it ends in the unsent part)
        found = [p for s in self.stop if (p := text.find(s, max(0, len(self.sent) - len(s) + 1))) >= 0]
        if found:
            self.stopped = True
            return self._emit(text[:min(found)])
        hold = 1 if text.endswith("\ufffd") else 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        return self._emit(text[: len(text) - hold])

    def flush(self) -> str:
        """The held-back rest once generation ended without a stop string."""
        return "" if self.stopped else self._emit(self.codec.decode(self.ids))

    def _emit(self, text: str) -> str:
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        delta = text[len(self.sent):]
        self.sent = text
        return delta
