"""A streamed chat completion from an OpenAI-compatible API (OpenAI, vLLM, Ollama, llama.cpp).

    upstream = Upstream(url="http://127.0.0.1:11434/v1", model="llama3.2")
    async for delta in stream_chat(upstream, [ChatMessage(role="user", content="Hi")]):
        print(delta.text, end="")

`POST <url>/chat/completions` with `stream: true` answers Server-Sent Events: one JSON
chunk per event, `choices[0].delta.content` holding the next piece of text, and
`data: [DONE]` at the end. Whatever ends the answer before `[DONE]` raises
`UpstreamError`: an error status, an error chunk, a connection that drops or stays
silent for `timeout` seconds, or a chunk that is not a chat completion chunk.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from service.client.publisher import checked_url, describe
from service.client.sse_parser import SSEParser

__all__ = ["ChatMessage", "Delta", "Upstream", "UpstreamError", "stream_chat"]

DONE = "[DONE]"
"""The data of the event that ends a complete answer."""
_QUOTED_CHARS = 300
"""Most characters of an upstream's error text or bad chunk quoted in an `UpstreamError`."""


class Upstream(BaseModel):
    """Where answers come from, e.g. `Upstream(url="https://api.openai.com/v1",
    model="gpt-4o-mini", api_key="sk-…")`."""

    model_config = ConfigDict(frozen=True)

    url: str = Field(description="Base URL, /v1 included, as OpenAI's own clients take it.")
    model: str
    api_key: SecretStr | None = Field(default=None, description="Sent as Authorization: Bearer.")
    timeout: float = Field(
        default=60.0,
        gt=0,
        description="Longest wait, in seconds, to connect, for the answer to start, or "
        "between two chunks.",
    )

    @field_validator("url")
    @classmethod
    def _an_http_url(cls, url: str) -> str:
        return checked_url(url)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class Delta:
    """The next piece of the answer; the last one may carry only the finish reason."""

    text: str
    finish_reason: str | None = None
    """Why the model stopped: `stop`, `length` (out of tokens), `content_filter`…"""


class UpstreamError(Exception):
    """The answer ended before `[DONE]`; `status` is the HTTP status of an error answer."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class _Error(BaseModel):
    message: str = ""


class _ErrorAnswer(BaseModel):
    """An error answer's body: OpenAI's `{"error": {"message"}}`, Ollama's `{"error": "…"}`,
    or older vLLM's `{"object": "error", "message"}`."""

    error: _Error | str | None = None
    message: str | None = None

    def text(self) -> str:
        if isinstance(self.error, _Error):
            return self.error.message
        return self.error or self.message or ""


class _ChunkDelta(BaseModel):
    content: str | None = None


class _Choice(BaseModel):
    delta: _ChunkDelta = Field(default_factory=_ChunkDelta)
    finish_reason: str | None = None


class _Chunk(_ErrorAnswer):
    """One event's data; usage-only chunks have no choices, error chunks an `error`."""

    choices: list[_Choice] = Field(default_factory=list)


async def stream_chat(upstream: Upstream, messages: Sequence[ChatMessage]) -> AsyncGenerator[Delta]:
    """The answer to `messages`, delta by delta as it arrives, until `[DONE]`."""
    body = {
        "model": upstream.model,
        "messages": [message.model_dump() for message in messages],
        "stream": True,
    }
    headers = {"Accept": "text/event-stream"}
    if upstream.api_key is not None:
        headers["Authorization"] = f"Bearer {upstream.api_key.get_secret_value()}"
    url = upstream.url.rstrip("/") + "/chat/completions"
    try:
        async with (
            httpx.AsyncClient(timeout=upstream.timeout) as http,
            http.stream("POST", url, json=body, headers=headers) as response,
        ):
            if not response.is_success:
                await response.aread()
                raise UpstreamError(
                    f"upstream answered {response.status_code}: {_error_text(response)}",
                    response.status_code,
                )
            async for delta in _deltas(response):
                yield delta
    except httpx.HTTPError as exc:
        what = describe(exc) if isinstance(exc, httpx.TransportError) else str(exc)
        raise UpstreamError(f"upstream: {what}") from exc


async def _deltas(response: httpx.Response) -> AsyncIterator[Delta]:
    parser = SSEParser()
    async for data in response.aiter_bytes():
        for event in parser.feed(data):
            if event.data == DONE:
                return
            try:
                chunk = _Chunk.model_validate_json(event.data)
            except ValidationError:
                raise UpstreamError(
                    f"upstream sent a chunk that is not a chat completion chunk: "
                    f"{event.data[:_QUOTED_CHARS]}"
                ) from None
            if chunk.error is not None:
                raise UpstreamError(f"upstream error: {chunk.text()[:_QUOTED_CHARS]}")
            if chunk.choices:
                choice = chunk.choices[0]
                if choice.delta.content or choice.finish_reason:
                    yield Delta(choice.delta.content or "", choice.finish_reason)
    raise UpstreamError(f"upstream: the stream ended before {DONE}")


def _error_text(response: httpx.Response) -> str:
    try:
        text = _ErrorAnswer.model_validate_json(response.content).text()
    except ValidationError:
        text = response.text.strip()
    return text[:_QUOTED_CHARS] or response.reason_phrase
