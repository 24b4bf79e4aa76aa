"""`LLMServer`: the Serve deployment of one model; each replica holds one AsyncEngine.

A replica is ready only once its engine has loaded the model and run one tiny generation
(the constructor does both), so Serve sends no traffic to a cold replica. Its health check
is a real one-token generation: a replica whose engine is wedged (a step that never
returns) fails it, and Serve replaces the replica.

Handle methods (from the ingress or `deployments.client`):

    handle.options(stream=True).generate.remote(prompt, params)  -> GenerationChunk stream
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

from cluster.env import stream_interval_ms
from deployments.config import ModelConfig
from deployments.engine_config import engine_config_for
from deployments.generation import (
    EngineUnavailableError,
    GeneratedToken,
    GenerationChunk,
    InvalidRequestError,
    ModelInfo,
    TopToken,
)
from engine import (
    AsyncEngine,
    EmptyPromptError,
    EngineDeadError,
    ExecutorFactory,
    PromptTooLongError,
    RequestOutput,
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
        self.model = model
        self.engine = AsyncEngine(
            engine_config_for(model, device), executor_factory=executor_factory or create_executor
        )
        self._info = self.engine.info()
        self._probe_timeout_s = model.serve.health_check_timeout_s * HEALTH_PROBE_TIMEOUT_SHARE
        self._throughput = _RateMeter(THROUGHPUT_WINDOW_S)
        interval_ms = model.serve.stream_interval_ms
        self._stream_interval_s = (
            stream_interval_ms() if interval_ms is None else interval_ms
        ) / 1e3
        # Serve marks the replica ready once the constructor returns.
        self.engine.warm_up(self._probe_prompt(), SamplingParams(max_tokens=2))

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
    ) -> AsyncIterator[GenerationChunk]:
        """Stream a generation. Give `prompt` (text or token ids) or chat `messages` (the
        model's chat template is applied here). `truncate` keeps the last N prompt tokens.
        Raises InvalidRequestError (naming the input) before the first chunk for bad input,
        EngineUnavailableError if the engine fails. Closing the stream early aborts the
        request and frees its KV blocks."""
        try:
            prompt_input = self._prepare_prompt(prompt, messages, truncate)
            params = params or SamplingParams()
            request_id = request_id or f"req-{uuid.uuid4().hex}"
            stream = self.engine.generate(prompt_input, params, request_id)
            # aclosing: a consumer that goes away (GeneratorExit at our yield) still closes
            # the engine's stream, which aborts the request.
            async with contextlib.aclosing(stream):
                previous: RequestOutput | None = None
                last_sent_s = 0.0
                async for out in stream:
                    # Outputs are cumulative: one held back is sent with the next. The first
                    # and the last are never held.
                    now = time.monotonic()
                    is_held = previous is not None and not out.finished
                    if is_held and now - last_sent_s < self._stream_interval_s:
                        continue
                    yield self._chunk(out, previous)
                    previous, last_sent_s = out, now
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

    def _chunk(self, out: RequestOutput, previous: RequestOutput | None) -> GenerationChunk:
        num_old = len(previous.token_ids) if previous is not None else 0
        old_text = previous.text if previous is not None else ""
        logprobs = out.logprobs[num_old:] if out.logprobs is not None else None
        tokens = tuple(
            self._token(token_id, logprobs[i] if logprobs is not None else None)
            for i, token_id in enumerate(out.token_ids[num_old:])
        )
        return GenerationChunk(
            request_id=out.request_id,
            # Text grows by appending, except that a stop string found later is cut back
            # out; the cut text was never sent (the detokenizer holds back partial matches).
            text=out.text[len(old_text) :] if out.text.startswith(old_text) else "",
            tokens=tokens,
            num_prompt_tokens=len(out.prompt_token_ids),
            num_cached_tokens=out.num_cached_tokens,
            num_generated_tokens=len(out.token_ids),
            finish_reason=out.finish_reason if out.finished else None,
            stop_reason=out.stop_reason if out.finished else None,
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
        )

    # -- stats and health ---------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        """Engine stats (every numeric EngineStats field and padding_ratio) plus generated
        tokens per second over the last THROUGHPUT_WINDOW_S and whether the engine is
        healthy."""
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
        return values

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics hook (aggregated in AutoscalingContext)."""
        return self.stats()

    def record_routing_stats(self) -> dict[str, Any]:
        """Serve's routing stats hook (a request router reads it as replica.routing_stats)."""
        return {**self.stats(), "replica_id": self.replica_id(), "model": self.model.name}

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
