"""The OpenAI request bodies the server accepts, and its error object.

Types are strict (``"5"`` is not an int, ``1.5`` is not an int): a wrong type is an OpenAI-style 400 naming the
parameter, never a silent coercion. Unknown keys are ignored (clients send fields the server does not use).
Error bodies follow the OpenAI schema ``{"error": {"message", "type", "param", "code"}}``
(https://platform.openai.com/docs/guides/error-codes), so the ``openai`` client raises its usual exceptions.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["APIError", "CompletionRequest", "ChatRequest", "ChatMessage", "parse_body", "error_body"]

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          500: "server_error", 503: "server_error"}


class APIError(Exception):
    """An HTTP error answered with an OpenAI error object."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, code=self.code, param=self.param)


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension: keep generating past the end-of-sequence token (benchmarks)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)


class ContentPart(_Strict):
    type: str
    text: str = ""


class ChatMessage(_Strict):
    model_config = ConfigDict(strict=True, extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def as_template_message(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            content = "".join(p.text for p in content if p.type == "text")
        return {"role": self.role, "content": content or ""}


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


def _is_type_tag(p: object) -> bool:
    return isinstance(p, str) and (p in ("str", "int", "float", "bool", "list", "dict") or "[" in p or "-" in p)


def parse_body(raw: bytes, kind: type[BaseModel]) -> Any:
    """Decode, parse and validate a JSON request body; every failure is a 400 naming the problem."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r}); send "
                            "JSON encoded as UTF-8", code="invalid_body") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise APIError(400, f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}",
                       code="invalid_body")
    try:
        return kind.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err["loc"] if not _is_type_tag(p)]  # drop union member tags ("str", "list[int]")
        param = ".".join(loc) or None
        got = err.get("input")
        shown = json.dumps(got)[:80] if not isinstance(got, dict) else "an object"
        raise APIError(400, f"invalid value for '{param}': {err['msg']} (got {shown})", code="invalid_value",
                       param=param) from None
