"""The OpenAI-compatible routes: /v1/completions and /v1/chat/completions.

Each choice is its own engine request: a request with P prompts and n samples opens
P * n streams, choice `index = prompt_index * n + sample_index`, sample i seeded
`seed + i` (`params_for_sample`). Prompts and chat messages go to the model as token ids
(`ModelTable.prompt_kwargs`); a chat's image_url parts are fetched and decoded here
(deployments.images) and go with them, processed. Streamed answers are server-sent
events ending with `data: [DONE]`; with stream_options.include_usage a last chunk
carries the usage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response, StreamingResponse

from deployments.generation import GeneratedToken, GenerationChunk
from deployments.handles import (
    ModelTable,
    OnSampleDone,
    SampleStream,
    api_error_or_internal,
    merge,
    open_all,
)
from deployments.images import ImageSource
from deployments.protocol import (
    SSE_DONE,
    ApiError,
    ChatChoice,
    ChatChoiceLogprobs,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatResponseMessage,
    ChatTokenLogprob,
    ChatTopLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamChunk,
    Usage,
    new_id,
    openai_error_body,
    params_for_sample,
    sse_event,
)
from deployments.protocol.shared import ResponseModel

SSE_MEDIA_TYPE = "text/event-stream"


@dataclass
class _Choice:
    """What one choice has produced so far."""

    text: list[str] = field(default_factory=list)
    tokens: list[GeneratedToken] = field(default_factory=list)
    last: GenerationChunk | None = None

    def add(self, chunk: GenerationChunk) -> None:
        self.text.append(chunk.text)
        self.tokens.extend(chunk.tokens)
        self.last = chunk


async def completions(
    table: ModelTable, model: str, request: CompletionRequest, on_done: OnSampleDone
) -> Response:
    info = await table.info(model)
    params = request.to_sampling_params(default_max_tokens=info.max_model_len)
    prompts = request.prompts
    for index, prompt in enumerate(prompts):
        if not prompt:
            param = "prompt" if len(prompts) == 1 else f"prompt.{index}"
            raise ApiError(400, "prompt must not be empty", param)
    inputs = [await table.prompt_kwargs(model, p) for p in prompts]
    streams = _open_streams(table, model, inputs, request.n, params, on_done)
    await open_all(streams)
    response_id = new_id("cmpl")
    if request.stream:
        events = _completion_events(streams, model, response_id, request)
        return StreamingResponse(events, media_type=SSE_MEDIA_TYPE)
    choices = await _collect(streams)
    return _json(
        CompletionResponse(
            id=response_id,
            model=model,
            choices=[
                CompletionChoice(
                    index=index,
                    text="".join(choice.text),
                    logprobs=_completion_logprobs(choice.tokens, 0, request.logprobs),
                    finish_reason=choice.last.finish_reason,
                )
                for index, choice in sorted(choices.items())
            ],
            usage=_usage(choices, request.n),
        )
    )


async def chat_completions(
    table: ModelTable, model: str, request: ChatCompletionRequest, on_done: OnSampleDone
) -> Response:
    info = await table.info(model)
    params = request.to_sampling_params(default_max_tokens=info.max_model_len)
    sources = [ImageSource(url, field) for field, url in request.image_urls()]
    images = await table.images(model, sources)
    inputs = [await table.prompt_kwargs(model, messages=request.conversation(), images=images)]
    streams = _open_streams(table, model, inputs, request.n, params, on_done)
    await open_all(streams)
    response_id = new_id("chatcmpl")
    if request.stream:
        events = _chat_events(streams, model, response_id, request)
        return StreamingResponse(events, media_type=SSE_MEDIA_TYPE)
    choices = await _collect(streams)
    return _json(
        ChatCompletionResponse(
            id=response_id,
            model=model,
            choices=[
                ChatChoice(
                    index=index,
                    message=ChatResponseMessage(content="".join(choice.text)),
                    logprobs=_chat_logprobs(choice.tokens) if request.logprobs else None,
                    finish_reason=choice.last.finish_reason,
                )
                for index, choice in sorted(choices.items())
            ],
            usage=_usage(choices, request.n),
        )
    )


def _open_streams(
    table: ModelTable,
    model: str,
    inputs: list[dict[str, Any]],
    n: int,
    params,
    on_done: OnSampleDone,
) -> list[SampleStream]:
    request_id = new_id("req")
    streams = []
    for prompt_index, kwargs in enumerate(inputs):
        for sample_index in range(n):
            index = prompt_index * n + sample_index
            streams.append(
                table.sample_stream(
                    model,
                    index,
                    on_done,
                    params=params_for_sample(params, sample_index),
                    request_id=f"{request_id}-{index}",
                    **kwargs,
                )
            )
    return streams


async def _collect(streams: list[SampleStream]) -> dict[int, _Choice]:
    choices = {stream.index: _Choice() for stream in streams}
    async for index, chunk in merge(streams):
        choices[index].add(chunk)
    return choices


def _usage(choices: dict[int, _Choice], n: int) -> Usage:
    """Prompt tokens count once per prompt (its n samples share it); completion tokens
    count every choice."""
    firsts = [choice.last for index, choice in choices.items() if index % n == 0]
    return Usage.of(
        sum(last.num_prompt_tokens for last in firsts),
        sum(choice.last.num_generated_tokens for choice in choices.values()),
        sum(last.num_cached_tokens for last in firsts),
    )


def _completion_logprobs(
    tokens: list[GeneratedToken], text_offset: int, num_top: int | None
) -> CompletionLogprobs | None:
    if num_top is None:
        return None
    offsets = []
    for token in tokens:
        offsets.append(text_offset)
        text_offset += len(token.text)
    return CompletionLogprobs(
        tokens=[t.text for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[{top.text: top.logprob for top in t.top} for t in tokens],
        text_offset=offsets,
    )


def _chat_logprobs(tokens: list[GeneratedToken]) -> ChatChoiceLogprobs:
    return ChatChoiceLogprobs(
        content=[
            ChatTokenLogprob(
                token=t.text,
                logprob=t.logprob,
                bytes=list(t.text.encode("utf-8")),
                top_logprobs=[ChatTopLogprob.of(top.text, top.logprob) for top in t.top],
            )
            for t in tokens
        ]
    )


async def _completion_events(
    streams: list[SampleStream], model: str, response_id: str, request: CompletionRequest
) -> AsyncIterator[str]:
    choices = {stream.index: _Choice() for stream in streams}
    offsets = dict.fromkeys(choices, 0)

    def event(index: int, chunk: GenerationChunk) -> CompletionStreamChunk:
        logprobs = _completion_logprobs(list(chunk.tokens), offsets[index], request.logprobs)
        if logprobs is not None:
            offsets[index] += sum(len(t.text) for t in chunk.tokens)
        choice = CompletionChoice(
            index=index, text=chunk.text, logprobs=logprobs, finish_reason=chunk.finish_reason
        )
        return CompletionStreamChunk(id=response_id, model=model, choices=[choice])

    def usage_event(usage: Usage) -> CompletionStreamChunk:
        return CompletionStreamChunk(id=response_id, model=model, choices=[], usage=usage)

    usage = usage_event if request.include_usage else None
    async for line in _sse(streams, choices, event, usage, request.n, request.logprobs):
        yield line


async def _chat_events(
    streams: list[SampleStream], model: str, response_id: str, request: ChatCompletionRequest
) -> AsyncIterator[str]:
    choices = {stream.index: _Choice() for stream in streams}
    announced: set[int] = set()  # choices whose first chunk (with the role) was sent

    def event(index: int, chunk: GenerationChunk) -> ChatCompletionChunk:
        role = None if index in announced else "assistant"
        announced.add(index)
        delta = ChatDelta(role=role, content=chunk.text)
        logprobs = _chat_logprobs(list(chunk.tokens)) if request.logprobs else None
        choice = ChatChunkChoice(
            index=index, delta=delta, logprobs=logprobs, finish_reason=chunk.finish_reason
        )
        return ChatCompletionChunk(id=response_id, model=model, choices=[choice])

    def usage_event(usage: Usage) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=response_id, model=model, choices=[], usage=usage)

    usage = usage_event if request.include_usage else None
    logprobs = 0 if request.logprobs else None
    async for line in _sse(streams, choices, event, usage, request.n, logprobs):
        yield line


async def _sse(
    streams: list[SampleStream],
    choices: dict[int, _Choice],
    event: Callable[[int, GenerationChunk], ResponseModel],
    usage_event: Callable[[Usage], ResponseModel] | None,
    n: int,
    logprobs: int | None,
) -> AsyncIterator[str]:
    """Server-sent events of the merged streams, then the usage event if asked for. An
    error mid-stream becomes an error event (the status line is long gone)."""
    try:
        async for index, chunk in merge(streams):
            choices[index].add(chunk)
            if chunk.text or chunk.is_finished or (logprobs is not None and chunk.tokens):
                yield sse_event(event(index, chunk))
        if usage_event is not None:
            yield sse_event(usage_event(_usage(choices, n)))
    except Exception as exc:
        yield sse_event(openai_error_body(api_error_or_internal(exc)))
    yield SSE_DONE


def _json(body: ResponseModel) -> Response:
    return Response(body.to_json(), media_type="application/json")
