"""`LLMServer`: the Serve deployment of one model; each replica holds one AsyncEngine.

A replica is ready only once its engine has loaded the model and run one tiny generation
(the constructor does both), so Serve sends no traffic to a cold replica. Its health check
is a real one-token generation: a replica whose engine is wedged (a step that never
returns) fails it, and Serve replaces the replica.

Handle methods (from the ingress or `deployments.client`):

    handle.options(stream=True).generate.remote(prompt, params)  -> GenerationChunk stream
    handle.options(stream=True).step_stream.remote(session)      -> per-step chunk batches
                                                                   (with ReplicaUpdates)
    handle.tokenize.remote(text)   handle.model_info.remote()   handle.stats.remote()
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.serve.exceptions import RayServeException

from autoscale.replica_feed import ReplicaFeed
from autoscale.replica_update import ReplicaUpdate
from cluster.env import stream_interval_ms
from deployments.autoscaling_stats import ReplicaAutoscalingStats
from deployments.config import ModelConfig
from deployments.engine_config import engine_config_for
from deployments.generation import (
    EngineUnavailableError,
    GeneratedToken,
    GenerationChunk,
    Handoff,
    InvalidRequestError,
    ModelInfo,
    TopToken,
)
from deployments.prompt_ids import process_images
from deployments.step_streams import StepStream, StepStreams
from engine import (
    AsyncEngine,
    EmptyPromptError,
    EngineDeadError,
    ExecutorFactory,
    MultiModalInput,
    MultiModalProcessor,
    PromptTooLongError,
    RequestDelta,
    SamplingParams,
)
from sharding.factory import create_executor

# A health probe gives up after this share of Serve's health_check_timeout_s, so the replica
# reports why it is unhealthy before Serve's own timeout fires.
HEALTH_PROBE_TIMEOUT_SHARE = 0.5
THROUGHPUT_WINDOW_S = 10.0


@serve.deployment
class LLMServer:
    """One model's replica: streaming generation over an AsyncEngine.

    `executor_factory` builds the engine's executor; None = sharding's (one local rank, or
    a tensor-parallel group of Ray actors when the model's tp_size > 1).
    """

    def __init__(
        self, model: ModelConfig, device: str, executor_factory: ExecutorFactory | None = None
    ):
        self._autoscaling = ReplicaAutoscalingStats()  # first: start-up counts from here
        self.model = model
        # What the routers learn of this replica: its steps and prefix-cache block events.
        self._feed = ReplicaFeed(_replica_id_or_local())
        self.engine = AsyncEngine(
            engine_config_for(model, device),
            executor_factory=executor_factory or create_executor,
            step_observer=self._feed.on_step,
        )
        self._feed.request_snapshot = self.engine.engine.request_block_snapshot
        self._info = self.engine.info()
        # The model's image processor (None: text only), for prompts whose images the
        # ingress could not process (deployments.prompt_ids).
        self._processor = MultiModalProcessor.load(self._info.model_path)
        self._probe_timeout_s = model.serve.health_check_timeout_s * HEALTH_PROBE_TIMEOUT_SHARE
        self._throughput = _RateMeter(THROUGHPUT_WINDOW_S)
        self._step_streams = StepStreams()
        self._num_handed_off = 0
        interval_ms = model.serve.stream_interval_ms
        self._stream_interval_s = (
            stream_interval_ms() if interval_ms is None else interval_ms
        ) / 1e3
        # Serve marks the replica ready once the constructor returns.
        self.engine.warm_up(self._probe_prompt(), SamplingParams(max_tokens=2))
        self._autoscaling.on_ready()

    def _probe_prompt(self) -> list[int]:
        bos = self._info.bos_token_id
        return [bos if bos is not None else 0]

    # -- generation ---------------------------------------------------------------------
    async def generate(
        self,
        prompt: str | list[int] | None,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        truncate: int | None = None,
        session: str | None = None,
        multi_modal: MultiModalInput | None = None,
        images: list[Any] | None = None,
    ) -> AsyncIterator[GenerationChunk | Handoff]:
        """Stream a generation. Give `prompt` (text or token ids) or chat `messages` (the
        model's chat template is applied here). `truncate` keeps the last N prompt tokens.
        A prompt with images comes as token ids with their processed `multi_modal` (the
        ingress processed them), or as text or messages with the PIL `images`, processed
        here. Raises InvalidRequestError (naming the input) before the first chunk for bad
        input, EngineUnavailableError if the engine fails. Closing the stream early aborts
        the request and frees its KV blocks. With the `session` of a step stream open on
        this replica, the first chunk is followed by a Handoff and the rest travel on the
        step stream (deployments.step_streams)."""
        try:
            if images:
                prompt_input, multi_modal = await self._process_images(
                    prompt, messages, truncate, images
                )
            else:
                prompt_input = self._prepare_prompt(prompt, messages, truncate)
            params = params or SamplingParams()
            request_id = request_id or f"req-{uuid.uuid4().hex}"
            stream = self._autoscaling.timed(
                self.engine.generate(prompt_input, params, request_id, multi_modal=multi_modal)
            )
            # aclosing: a consumer that goes away (GeneratorExit at our yield) still closes
            # the engine's stream, which aborts the request.
            chunks = self._chunks(stream)
            async with contextlib.aclosing(stream), contextlib.aclosing(chunks):
                carrier: StepStream | None = None
                try:
                    async for chunk in chunks:
                        if carrier is None:
                            yield chunk
                            carrier = self._step_streams.find(session)
                            if carrier is None or chunk.is_finished:
                                carrier = None
                                continue
                            carrier.num_requests += 1
                            self._num_handed_off += 1
                            yield Handoff(carrier.id)
                        elif carrier.is_open:
                            carrier.send(chunk)
                        else:  # the caller's step stream went away: so did the caller
                            return
                finally:
                    if carrier is not None:
                        carrier.num_requests -= 1
        except InvalidRequestError:
            raise
        except (EmptyPromptError, PromptTooLongError) as exc:
            raise InvalidRequestError(str(exc), "prompt") from None
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
        except EngineDeadError as exc:
            raise EngineUnavailableError(f"model {self.model.name!r}: {exc}") from None

    def _prepare_prompt(
        self,
        prompt: str | list[int] | None,
        messages: list[dict[str, str]] | None,
        truncate: int | None,
    ) -> str | list[int]:
        if (prompt is None) == (messages is None):
            raise InvalidRequestError("give exactly one of prompt and messages", "prompt")
        if messages is not None:
            if self._info.chat_template is None:
                raise InvalidRequestError(
                    f"model {self.model.name!r} has no chat template: use /v1/completions "
                    "with a plain prompt, or add a chat_template to the model's tokenizer",
                    "messages",
                )
            prompt = self.engine.encode_chat(messages)
        if truncate is not None:
            if not isinstance(truncate, int) or truncate < 1:
                message = f"truncate must be an integer >= 1, got {truncate!r}"
                raise InvalidRequestError(message, "truncate")
            ids = self.engine.encode(prompt) if isinstance(prompt, str) else prompt
            prompt = ids[-truncate:]
        return prompt

    async def _process_images(
        self,
        prompt: str | list[int] | None,
        messages: list[dict[str, Any]] | None,
        truncate: int | None,
        images: list[Any],
    ) -> tuple[list[int], MultiModalInput]:
        if self._processor is None:
            message = f"model {self.model.name!r} takes text only: it cannot take images"
            raise InvalidRequestError(message, "images")
        if (prompt is None) == (messages is None):
            raise InvalidRequestError("give exactly one of prompt and messages", "prompt")
        return await asyncio.to_thread(
            process_images, self._processor, prompt, messages, images, truncate
        )

    async def step_stream(
        self, session: str
    ) -> AsyncIterator[str | tuple[tuple[GenerationChunk, ...], ReplicaUpdate | None]]:
        """A step stream of the caller `session`: first its id (what a Handoff names), then
        per engine step `(chunks, update)`: a tuple of the chunks of the session's requests
        handed off to it, and what changed on this replica for the session's routers since
        its previous update (`ReplicaFeed.update_for`; None when nothing did, and on every
        step stream of the session but the first, so one cursor is read in order). Runs
        until the caller closes it."""
        carrier = self._step_streams.open(session)
        try:
            yield carrier.id
            async for batch in carrier.batches():
                is_first = self._step_streams.find(session) is carrier
                yield batch, self._feed.update_for(session) if is_first else None
        finally:
            self._step_streams.close(carrier)

    async def _chunks(self, stream: AsyncIterator[RequestDelta]) -> AsyncIterator[GenerationChunk]:
        """A chunk per engine delta; with a stream interval, deltas that come sooner than
        it after the previous chunk are held back and sent merged with the next. The first
        and the last are never held."""
        interval_s = self._stream_interval_s
        num_prompt_tokens = 0
        held: RequestDelta | None = None
        last_sent_s = 0.0
        async for delta in stream:
            if delta.prompt_token_ids is not None:
                num_prompt_tokens = len(delta.prompt_token_ids)
            if held is not None:
                delta, held = held.merged(delta), None
            if interval_s and last_sent_s and not delta.finished:
                now = time.monotonic()
                if now - last_sent_s < interval_s:
                    held = delta
                    continue
            if interval_s:
                last_sent_s = time.monotonic()
            yield self._chunk(delta, num_prompt_tokens)

    def _chunk(self, delta: RequestDelta, num_prompt_tokens: int) -> GenerationChunk:
        logprobs = delta.logprobs
        if logprobs is None:
            special = self._info.special_token_ids
            tokens = tuple(GeneratedToken(t, None, t in special) for t in delta.token_ids)
        else:
            tokens = tuple(map(self._token, delta.token_ids, logprobs))
        return GenerationChunk(
            request_id=delta.request_id,
            text=delta.text,
            tokens=tokens,
            num_prompt_tokens=num_prompt_tokens,
            num_cached_tokens=delta.num_cached_tokens,
            num_generated_tokens=delta.num_generated_tokens,
            finish_reason=delta.finish_reason,
            stop_reason=delta.stop_reason,
        )

    def _token(self, token_id: int, logprob) -> GeneratedToken:
        is_special = token_id in self._info.special_token_ids
        if logprob is None:  # no logprobs asked for: skip decoding the token on its own
            return GeneratedToken(token_id, None, is_special)
        decode = self.engine.decode
        top = tuple(TopToken(i, decode([i]), lp) for i, lp in logprob.top.items())
        return GeneratedToken(token_id, decode([token_id]), is_special, logprob.logprob, top)

    async def tokenize(self, text: str) -> list[int]:
        """The token ids the engine would compute for `text` as a prompt."""
        return self.engine.encode(text)

    async def model_info(self) -> ModelInfo:
        info = self._info
        return ModelInfo(
            name=self.model.name,
            path=str(info.model_path),
            device=info.device,
            dtype=info.dtype,
            tp_size=info.tp_size,
            max_model_len=info.max_model_len,
            max_num_seqs=info.max_num_seqs,
            vocab_size=info.vocab_size,
            has_chat_template=info.chat_template is not None,
            tokenizer_path=str(self.model.tokenizer or info.model_path),
            image_placeholder=None
            if self._processor is None
            else self._processor.image_placeholder,
        )

    async def profile(
        self, num_steps: int, timeout_s: float = 60.0, modules: bool = True
    ) -> dict[str, Any]:
        """Profile this replica's next `num_steps` engine steps on every TP rank while it
        keeps serving, waiting for them at most `timeout_s` (the engine steps only while
        it has requests); the answer of /debug/profile: each rank's trace and report
        (deployments.debug_profile). Raises ProfilingDisabledError unless the model's
        serve.debug_profile, ProfileBusyError while a capture runs."""
        from deployments.debug_profile import profile_replica

        return await profile_replica(
            self.model,
            self.engine.engine.executor,
            num_steps,
            timeout_s,
            modules,
            replica_id=_replica_id_or_local(),
        )

    # -- stats and health ---------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        """Engine stats (every numeric EngineStats field and padding_ratio) plus generated
        tokens per second over the last THROUGHPUT_WINDOW_S, whether the engine is healthy
        the CPU seconds the replica spent in the forward (`forward_cpu_s`) and the requests
        handed off to a step stream (`num_step_stream_requests`), both counters."""
        stats = self.engine.stats()
        values = {
            name: float(value)
            for name, value in dataclasses.asdict(stats).items()
            if isinstance(value, (int, float))
        }
        if isinstance(getattr(stats, "padding_ratio", None), float):
            values["padding_ratio"] = stats.padding_ratio
        values["generation_tokens_per_s"] = self._throughput.rate(
            values.get("num_generated_tokens", 0.0)
        )
        values["is_healthy"] = float(self.engine.is_healthy)
        values["forward_cpu_s"] = self.engine.forward_cpu_s
        values["num_step_stream_requests"] = float(self._num_handed_off)
        return values

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics hook (AutoscalingContext.raw_metrics): the
        stats, and what the SLO autoscaler reads (deployments/autoscaling_stats.py:
        token counters and queues, p95 TTFT and TPOT, fitted step times, start-up)."""
        stats = self.stats()
        steps = self._feed.recent_steps()
        return stats | self._autoscaling.collect(self.engine.stats(), steps)

    def record_routing_stats(self) -> dict[str, Any]:
        """Serve's routing stats hook (a request router reads it as replica.routing_stats);
        `kv_routing` is a ReplicaUpdate snapshot: every cached block hash and recent steps."""
        return {
            **self.stats(),
            "replica_id": self.replica_id(),
            "model": self.model.name,
            "kv_routing": self._feed.snapshot(),
        }

    def replica_id(self) -> str:
        return serve.get_replica_context().replica_id.unique_id

    async def check_health(self) -> None:
        """Serve's health check: a real one-token generation. A probe that times out is a
        failure only if the engine took no step meanwhile (a busy engine is healthy)."""
        await self.engine.check_health()
        num_steps = self.engine.stats().num_steps
        try:
            await asyncio.wait_for(self._probe(), timeout=self._probe_timeout_s)
        except asyncio.TimeoutError:
            if self.engine.stats().num_steps > num_steps:
                return
            raise EngineUnavailableError(
                f"model {self.model.name!r}: no engine step in {self._probe_timeout_s:.1f}s "
                "while a one-token health probe waited"
            ) from None

    async def _probe(self) -> None:
        params = SamplingParams(max_tokens=1, temperature=0.0)
        request_id = f"health-{uuid.uuid4().hex}"
        async for _ in self.engine.generate(self._probe_prompt(), params, request_id):
            pass

    def __del__(self) -> None:
        # Serve calls __del__ on graceful shutdown.
        if hasattr(self, "engine"):
            self.engine.shutdown()


def _replica_id_or_local() -> str:
    """This Serve replica's unique id (set before the constructor runs), or a made-up one
    for an LLMServer built without Serve (a test)."""
    try:
        return serve.get_replica_context().replica_id.unique_id
    except RayServeException:
        return f"local-{uuid.uuid4().hex}"


class _RateMeter:
    """Events per second of a growing counter over a sliding window of samples."""

    def __init__(self, window_s: float):
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def rate(self, count: float, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._samples.append((now, count))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        first_t, first_count = self._samples[0]
        return (count - first_count) / (now - first_t) if now > first_t else 0.0
