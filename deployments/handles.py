"""How the ingress reaches models: the table of served models and their handles, one
engine request as a stream through a handle, merging several, and turning what comes
back through a handle into an `ApiError`.

A stream is opened eagerly: `SampleStream.open()` waits for the first chunk, so bad input,
overload and a dead engine surface as errors *before* any HTTP header is sent and get a
proper status code, rather than an error in the middle of a 200 stream. After the first
chunk, a request's replica may move the rest onto one of the model's step streams, which
carry one message per engine step for all the ingress's requests there
(deployments.step_streams, deployments.step_fanout). Prompts go out as token ids
(`ModelTable.prompt_kwargs`, deployments.prompt_ids), and each request's first chunk is
reported to the process's KV-aware routers of its model (autoscale.feedback). While a
model has no running replica, the first chunk is awaited for at most its cold-start
timeout (deployments.cold_start).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from autoscale.feedback import feedback_for
from deployments.cold_start import until_replica
from deployments.generation import (
    EngineUnavailableError,
    GenerationChunk,
    Handoff,
    InvalidRequestError,
    ModelInfo,
)
from deployments.images import DEFAULT_IMAGE_LIMITS, ImageSource, load_images
from deployments.prompt_ids import PromptIds
from deployments.protocol import ApiError
from deployments.step_fanout import StepFanout, StepStreamEnded

RETRY_AFTER_S = 1.0
# Generation streams go over Serve's inter-deployment gRPC channel (every replica runs one)
# with plain pickle, not as Ray object refs with cloudpickle: one Ray object per streamed
# chunk was the costliest part of serving a token (benchmarks/RESULTS.md, "Serving load").
STREAM_OPTIONS = {
    "stream": True,
    "_by_reference": False,
    "request_serialization": "pickle",
    "response_serialization": "pickle",
}
# Called once per finished engine request: (ttft_s, decode_s, last chunk).
OnSampleDone = Callable[[float, float, GenerationChunk], None]


class ModelTable:
    """The served models by name, each a DeploymentHandle to its LLMServer deployment, and
    the step streams (deployments.step_fanout) of those in `step_stream_models`."""

    def __init__(
        self,
        handles: dict[str, DeploymentHandle],
        default_model: str | None = None,
        step_stream_models: Iterable[str] | None = None,
        cold_start_timeout_s: dict[str, float] | None = None,
    ):
        """cold_start_timeout_s: model -> its serve.cold_start_timeout_s (absent: no bound)."""
        if not handles:
            raise ValueError("at least one model deployment is required")
        self.handles = handles
        self.cold_start_timeout_s = cold_start_timeout_s or {}
        self.default_model = default_model or next(iter(handles))
        self._infos: dict[str, ModelInfo] = {}
        self.prompt_ids = PromptIds()
        self.image_limits = DEFAULT_IMAGE_LIMITS
        # Models whose chunks may travel on step streams (None: all); a step stream holds
        # one of its replica's max_ongoing_requests slots.
        names = handles if step_stream_models is None else step_stream_models
        self.fanouts = {name: StepFanout(handles[name], STREAM_OPTIONS) for name in names}

    def sample_stream(
        self, model: str, index: int, on_done: OnSampleDone | None, **generate_kwargs: Any
    ) -> SampleStream:
        """One engine request of `model` (generate_kwargs include its request_id), whose
        chunks may travel on the model's step streams."""
        fanout = self.fanouts.get(model)
        stream = SampleStream(self.handles[model], index, on_done, fanout, **generate_kwargs)
        stream.cold_start_timeout_s = self.cold_start_timeout_s.get(model)
        return stream

    @property
    def names(self) -> list[str]:
        return list(self.handles)

    def resolve(self, model: str | None, param: str = "model") -> str:
        """The served model a request names; None picks the only model. ApiError 404
        (code model_not_found) listing the served models otherwise."""
        served = ", ".join(self.handles)
        if model is None:
            if len(self.handles) == 1:
                return self.default_model
            raise ApiError(400, f"{param} is required: this server serves {served}", param)
        if model not in self.handles:
            message = f"model {model!r} not found; served models: {served}"
            raise ApiError(404, message, param, code="model_not_found")
        return model

    async def info(self, model: str) -> ModelInfo:
        """The model's ModelInfo, asked of a replica once and then cached."""
        if model not in self._infos:
            handle = self.handles[model]
            response = handle.model_info.remote()
            timeout_s = self.cold_start_timeout_s.get(model)
            try:
                self._infos[model] = await until_replica(
                    response, handle.deployment_name, timeout_s
                )
            except ApiError:
                response.cancel()
                raise
            except Exception as exc:
                raise to_api_error(exc) from None
        return self._infos[model]

    async def prompt_kwargs(
        self,
        model: str,
        prompt: str | list[int] | None = None,
        *,
        messages: list[dict[str, Any]] | None = None,
        truncate: int | None = None,
        images: list[Any] | None = None,
    ) -> dict[str, Any]:
        """The prompt arguments of the model's generate call: `{"prompt": token ids}` (and
        `"multi_modal"` with images), as its engine would compute them
        (deployments.prompt_ids; raises ApiError)."""
        info = await self.info(model)
        return await self.prompt_ids.generate_kwargs(
            info, prompt, messages=messages, truncate=truncate, images=images
        )

    async def images(self, model: str, sources: list[ImageSource]) -> list[Any] | None:
        """The decoded images of a request to `model` (None without any); ApiError 400
        naming the model when it takes text only, or naming the image that is bad
        (deployments.images)."""
        if not sources:
            return None
        info = await self.info(model)
        if not info.takes_images:
            message = (
                f"model {model!r} takes text only (see input_modalities in /v1/models), "
                f"and {sources[0].field} is an image"
            )
            raise ApiError(400, message, sources[0].field, code="model_takes_text_only")
        return await load_images(sources, self.image_limits)


class SampleStream:
    """One engine request (one choice) through a handle. Call `open()` first.

    With a `fanout` (the ingress's), the request joins its session: after the first chunk
    its replica may hand the rest to a step stream (deployments.step_streams), whose
    chunks come through the fan-out's queue; the request's own stream then only reports
    its failure, and cancelling it still aborts the request."""

    def __init__(
        self,
        handle: DeploymentHandle,
        index: int,
        on_done: OnSampleDone | None = None,
        fanout: StepFanout | None = None,
        **generate_kwargs: Any,
    ):
        self.handle = handle
        self.index = index
        self.on_done = on_done
        self.fanout = fanout
        self.generate_kwargs = generate_kwargs
        self._gen: DeploymentResponseGenerator | None = None
        self._first: GenerationChunk | None = None
        self._fanout_queue: asyncio.Queue | None = None  # its chunks from step streams
        self._queue: asyncio.Queue | None = None  # that queue, once handed off to one
        self._watcher: asyncio.Task | None = None
        self._is_finished = False
        self._is_own_reported = False  # told the fan-out it streams on its own stream
        self._start_s = time.monotonic()
        # the longest the first chunk is awaited while no replica runs (None: no bound)
        self.cold_start_timeout_s: float | None = None

    async def open(self) -> None:
        """Send the request and wait for its first chunk (raises ApiError)."""
        kwargs = self.generate_kwargs
        if self.fanout is not None:
            self._fanout_queue = self.fanout.register(kwargs["request_id"])
            kwargs = {**kwargs, "session": self.fanout.session}
        sent_s = time.monotonic()
        self._gen = self.handle.options(**STREAM_OPTIONS).generate.remote(**kwargs)
        name = self.handle.deployment_name
        self._first = await until_replica(self._next(), name, self.cold_start_timeout_s)
        self._first_s = time.monotonic()
        request_id = kwargs.get("request_id")
        if request_id is not None:  # the routers count it as decoding from now on
            feedback = feedback_for(self.handle.deployment_name)
            feedback.on_first_token(request_id, self._first_s - sent_s)

    async def _next(self) -> GenerationChunk:
        if self._queue is not None:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise to_api_error(item) from None
            return item
        item = await self._next_own()
        if isinstance(item, Handoff):
            self.fanout.bind(self.generate_kwargs["request_id"], item.step_stream_id)
            self._queue = self._fanout_queue
            self._watcher = asyncio.create_task(self._watch_own())
            return await self._next()
        # Once, at the first own-stream chunk after the first: no step stream took it.
        if self._first is not None and self.fanout is not None and not self._is_own_reported:
            self._is_own_reported = True
            self.fanout.on_own_stream(self._start_s)
        return item

    async def _next_own(self) -> GenerationChunk | Handoff:
        try:
            return await self._gen.__anext__()
        except StopAsyncIteration:
            raise ApiError(500, "the model's stream ended without finishing") from None
        except Exception as exc:
            raise to_api_error(exc) from None

    async def _watch_own(self) -> None:
        """After a Handoff the own stream only ends, or fails: pass a failure on."""
        try:
            await self._gen.__anext__()
        except StopAsyncIteration:
            return
        except Exception as exc:
            self._queue.put_nowait(exc)

    async def chunks(self) -> AsyncIterator[GenerationChunk]:
        """Every chunk, the first included, until the request finishes."""
        chunk = self._first
        while True:
            if chunk.is_finished:
                self._is_finished = True
                if self.on_done is not None:
                    ttft_s = self._first_s - self._start_s
                    self.on_done(ttft_s, time.monotonic() - self._first_s, chunk)
            yield chunk
            if chunk.is_finished:
                return
            chunk = await self._next()

    def close(self) -> None:
        """Cancel the request if it is still running (its KV blocks are freed)."""
        if self.fanout is not None:
            self.fanout.unregister(self.generate_kwargs["request_id"])
        if self._watcher is not None and not self._is_finished:
            self._watcher.cancel()
        if self._gen is None or self._is_finished:
            return
        # cancel() re-raises the request's own failure, which was already reported
        with contextlib.suppress(Exception):
            self._gen.cancel()


async def open_all(streams: Sequence[SampleStream]) -> None:
    """Open every stream concurrently; on any failure close them all and raise the first
    (cancelled too: a client gone before the first chunk must not leave requests running)."""
    try:
        results = await asyncio.gather(*(s.open() for s in streams), return_exceptions=True)
    except asyncio.CancelledError:
        close_all(streams)
        raise
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        close_all(streams)
        raise errors[0]


def close_all(streams: Sequence[SampleStream]) -> None:
    for stream in streams:
        stream.close()


async def merge(streams: Sequence[SampleStream]) -> AsyncIterator[tuple[int, GenerationChunk]]:
    """(choice index, chunk) from all opened streams as they arrive. Closing the merged
    iterator early cancels every stream still running."""
    if len(streams) == 1:
        stream = streams[0]
        try:
            async for chunk in stream.chunks():
                yield stream.index, chunk
        finally:
            stream.close()
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(stream: SampleStream) -> None:
        try:
            async for chunk in stream.chunks():
                queue.put_nowait((stream.index, chunk))
        except Exception as exc:  # handed to the consumer, which raises it
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(None)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        num_running = len(tasks)
        while num_running:
            item = await queue.get()
            if item is None:
                num_running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        close_all(streams)


def to_api_error(exc: BaseException) -> ApiError:
    """The ApiError for what a handle call raised; re-raises what is not an API error."""
    if isinstance(exc, ApiError):
        return exc
    cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
    if isinstance(cause, InvalidRequestError):
        return ApiError(400, cause.message, cause.param)
    if isinstance(cause, EngineUnavailableError):
        return ApiError(503, str(cause), code="engine_unavailable", retry_after_s=RETRY_AFTER_S)
    if isinstance(cause, BackPressureError):
        return ApiError(
            cause.status_code,
            f"the server is overloaded, retry later ({cause.message})",
            code="overloaded",
            retry_after_s=cause.retry_after_s or RETRY_AFTER_S,
        )
    if isinstance(cause, (DeploymentUnavailableError, RayActorError, StepStreamEnded)):
        message = f"the model is unavailable, retry later ({type(cause).__name__})"
        return ApiError(503, message, code="unavailable", retry_after_s=RETRY_AFTER_S)
    raise exc


def api_error_or_internal(exc: BaseException) -> ApiError:
    """`to_api_error`, or a 500 naming the exception's type for anything else (for error
    events inside a stream, where nothing can be re-raised to the HTTP layer)."""
    try:
        return to_api_error(exc)
    except Exception:
        return ApiError(500, f"internal error: {type(exc).__name__}: {exc}")
