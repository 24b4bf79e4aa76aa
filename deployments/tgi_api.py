"""The Text Generation Inference (TGI) compatible routes: /generate, /generate_stream,
`/` (what the `text_generation` client posts to: `stream` picks the answer's form, and a
non-streamed answer is a one-element list) and /info.

TGI requests name no model: they go to the app's default model (the first in the config)
unless the query string picks another (`/generate?model=NAME`). Markdown images in
`inputs` (`![](url)`, deployments.protocol.tgi) are fetched and decoded here
(deployments.images) and stand as the model's image placeholder in the prompt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.responses import Response, StreamingResponse

from deployments.generation import GeneratedToken, GenerationChunk, ModelInfo
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
    Details,
    GenerateRequest,
    GenerateResponse,
    Info,
    StreamDetails,
    StreamResponse,
    Token,
    new_id,
    sse_event,
    tgi_error_body,
    to_tgi_finish_reason,
)

SSE_MEDIA_TYPE = "text/event-stream"
VERSION = "gaudi-serve-0.1.0"
TEXT_PIPELINE_TAG = "text-generation"
IMAGE_PIPELINE_TAG = "image-text-to-text"


async def generate(
    table: ModelTable,
    model: str,
    request: GenerateRequest,
    on_done: OnSampleDone,
    *,
    as_list: bool = False,
) -> Response:
    """The /generate answer; `as_list` wraps it in a one-element list (TGI's `/`)."""
    stream = await _open(table, model, request, on_done)
    tokens: list[GeneratedToken] = []
    text: list[str] = []
    last = None
    async for _, chunk in merge([stream]):
        tokens.extend(chunk.tokens)
        text.append(chunk.text)
        last = chunk
    params = request.parameters
    details = None
    if params.details:
        details = Details(
            finish_reason=_finish_reason(last),
            generated_tokens=last.num_generated_tokens,
            seed=params.seed,
            tokens=[_token(t, t.text) for t in tokens],
            top_tokens=[[_top_token(top) for top in t.top] for t in tokens]
            if params.top_n_tokens
            else None,
        )
    body = GenerateResponse(generated_text=_full_text(request, "".join(text)), details=details)
    json = body.to_json()
    return Response(f"[{json}]" if as_list else json, media_type="application/json")


async def generate_stream(
    table: ModelTable, model: str, request: GenerateRequest, on_done: OnSampleDone
) -> Response:
    """The /generate_stream answer: one event per token; the last carries generated_text
    (and details when asked for)."""
    stream = await _open(table, model, request, on_done)
    return StreamingResponse(_events(stream, request), media_type=SSE_MEDIA_TYPE)


async def _open(
    table: ModelTable, model: str, request: GenerateRequest, on_done: OnSampleDone
) -> SampleStream:
    sources = [ImageSource(url, field) for field, url in request.image_urls()]
    images = await table.images(model, sources)
    inputs = request.inputs
    if images:
        inputs = request.prompt_with((await table.info(model)).image_placeholder)
    truncate = request.parameters.truncate
    prompt = await table.prompt_kwargs(model, inputs, truncate=truncate, images=images)
    stream = table.sample_stream(
        model, 0, on_done, params=request.to_sampling_params(), request_id=new_id("tgi"), **prompt
    )
    await open_all([stream])
    return stream


async def _events(stream: SampleStream, request: GenerateRequest) -> AsyncIterator[str]:
    params = request.parameters
    text: list[str] = []
    try:
        async for _, chunk in merge([stream]):
            text.append(chunk.text)
            for position, token in enumerate(chunk.tokens):
                is_last = position == len(chunk.tokens) - 1
                # The stream's text goes on the chunk's last token, so the tokens' texts
                # always add up to generated_text.
                event = StreamResponse(
                    token=_token(token, chunk.text if is_last else ""),
                    top_tokens=[_top_token(t) for t in token.top] if params.top_n_tokens else None,
                )
                if is_last and chunk.is_finished:
                    event = _finish_event(event, chunk, request, "".join(text))
                yield sse_event(event)
    except Exception as exc:
        yield sse_event(tgi_error_body(api_error_or_internal(exc)))


def _finish_event(
    event: StreamResponse, last: GenerationChunk, request: GenerateRequest, text: str
) -> StreamResponse:
    details = None
    if request.parameters.details:
        details = StreamDetails(
            finish_reason=_finish_reason(last),
            generated_tokens=last.num_generated_tokens,
            seed=request.parameters.seed,
        )
    return StreamResponse(
        token=event.token,
        top_tokens=event.top_tokens,
        generated_text=_full_text(request, text),
        details=details,
    )


def info(model: ModelInfo, max_concurrent_requests: int) -> Info:
    """The /info answer for one model; a model that takes images has the Hugging Face Hub's
    pipeline tag of vision-language models, "image-text-to-text"."""
    return Info(
        model_id=model.name,
        model_pipeline_tag=IMAGE_PIPELINE_TAG if model.takes_images else TEXT_PIPELINE_TAG,
        model_dtype=model.dtype,
        model_device_type=model.device,
        max_concurrent_requests=max_concurrent_requests,
        max_input_tokens=model.max_prompt_tokens,
        max_total_tokens=model.max_model_len,
        version=VERSION,
    )


def _full_text(request: GenerateRequest, text: str) -> str:
    return request.inputs + text if request.parameters.return_full_text else text


def _finish_reason(last: GenerationChunk):
    return to_tgi_finish_reason(last.finish_reason, is_stop_sequence=last.is_stop_string)


def _token(token: GeneratedToken, text: str) -> Token:
    return Token(id=token.id, text=text, logprob=token.logprob, special=token.is_special)


def _top_token(top) -> Token:
    return Token(id=top.id, text=top.text, logprob=top.logprob, special=False)
