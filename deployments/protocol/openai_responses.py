"""OpenAI-compatible response bodies and stream chunks, shaped as the official `openai`
client parses them (openai.types.Completion, chat.ChatCompletion, chat.ChatCompletionChunk,
Model). Send them with `.to_json()`, which leaves unset optional fields out.

Streaming: completions chunks have the same shape as the full response (OpenAI's design);
every chunk of one answer repeats the same `id` and `created`. With
stream_options.include_usage the last chunk has `choices=[]` and `usage` set.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import Field

from deployments.protocol.shared import ResponseModel

FinishReason = Literal["stop", "length"]


def new_id(prefix: str) -> str:
    """A fresh response id such as ``cmpl-1f0c...``."""
    return f"{prefix}-{uuid.uuid4().hex}"


def _now_s() -> int:
    return int(time.time())


class PromptTokensDetails(ResponseModel):
    cached_tokens: int  # prompt tokens served from the prefix cache


class Usage(ResponseModel):
    """Token counts for a whole request (all choices)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None

    @classmethod
    def of(
        cls,
        num_prompt_tokens: int,
        num_completion_tokens: int,
        num_cached_tokens: int | None = None,
    ) -> Usage:
        details = None
        if num_cached_tokens is not None:
            details = PromptTokensDetails(cached_tokens=num_cached_tokens)
        return cls(
            prompt_tokens=num_prompt_tokens,
            completion_tokens=num_completion_tokens,
            total_tokens=num_prompt_tokens + num_completion_tokens,
            prompt_tokens_details=details,
        )


class CompletionLogprobs(ResponseModel):
    """Per-token logprobs of a completions choice; the lists run in parallel."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None = None  # token text -> logprob, per position
    text_offset: list[int]  # offset of each token in the choice's text


class CompletionChoice(ResponseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None  # None until the choice's last chunk


class CompletionResponse(ResponseModel):
    """A /v1/completions answer."""

    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now_s)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionStreamChunk(CompletionResponse):
    """One server-sent event of a streamed /v1/completions answer (same shape)."""


class ChatTopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None  # UTF-8 bytes of token

    @classmethod
    def of(cls, token: str, logprob: float) -> ChatTopLogprob:
        return cls(token=token, logprob=logprob, bytes=list(token.encode("utf-8")))


class ChatTokenLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[ChatTopLogprob] = Field(default_factory=list)


class ChatChoiceLogprobs(ResponseModel):
    content: list[ChatTokenLogprob] | None = None


class ChatResponseMessage(ResponseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(ResponseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletionResponse(ResponseModel):
    """A /v1/chat/completions answer."""

    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now_s)
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ChatDelta(ResponseModel):
    role: Literal["assistant"] | None = None  # set on each choice's first chunk
    content: str | None = None


class ChatChunkChoice(ResponseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(ResponseModel):
    """One server-sent event of a streamed /v1/chat/completions answer."""

    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=_now_s)
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(ResponseModel):
    """One entry of /v1/models."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now_s)
    owned_by: str = "gaudi-serve"
    max_model_len: int | None = None  # extension (vLLM): the context length
    vocab_size: int | None = None  # extension: token ids a prompt may hold (0..vocab_size-1)
    # extension (OpenRouter's name): what a prompt may hold, ["text"] or ["text", "image"]
    input_modalities: list[str] | None = None


class ModelList(ResponseModel):
    """The /v1/models answer."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
