"""Replay a trace against a running gaudi-serve server, open loop, and measure each request
as the simulator would report it (RequestRecord), plus FleetSamples polled meanwhile.

Open loop: request i is sent at start + arrival_s[i] whatever the earlier ones are doing.
Each is a streamed /v1/completions with the trace's prompt as token ids
(`trace.prompt_token_ids`: the ids the simulator hashes), `max_tokens` = output_tokens,
`ignore_eos`, greedy, usage in the last chunk. Times are seconds from the start; a
request's arrival is its scheduled send time, so a late send counts against its TTFT.

    first_token_s   the first streamed chunk with a choice (a token that decodes to no
                    text on its own is streamed with the next one, so this can lag it)
    finish_s        the chunk with a finish_reason, once `data: [DONE]` closed the stream
    output_tokens   usage.completion_tokens (else the number of chunks)
    num_cached_tokens   usage.prompt_tokens_details.cached_tokens
    rejected        HTTP 429 or 503 (admission control, no replica)
Any other failure (another status, an error event, a broken stream, the per-request
`timeout_s`) leaves the request accepted and not completed (lost) and is counted by kind
in `ReplayResult.errors`.

Every wait has a deadline: a request at most `timeout_s` from its send, a fleet probe
`probe_timeout_s`. Setting `stop` (Ctrl-C in the command) sends nothing more, cancels the
requests in flight and returns what was measured: the requests sent so far, the cancelled
ones as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from autoscale.sim.fleet_probe import probe_fleet
from autoscale.sim.records import FleetSample, RequestRecord
from autoscale.sim.trace import TraceRequest, prompt_token_ids

REJECTED_STATUSES = (429, 503)

WARMUP_REQUEST = TraceRequest(0.0, 8, 2)

__all__ = ["WARMUP_REQUEST", "ReplayConfig", "ReplayResult", "model_card", "replay", "warm_up"]


@dataclass(frozen=True)
class ReplayConfig:
    """Where to send and how long to wait. `vocab_size` bounds the prompt token ids;
    `timeout_s` is each request's deadline from its send; the fleet is probed every
    `sample_interval_s` (0: never) with `probe_timeout_s` per probe."""

    url: str
    model: str
    vocab_size: int
    timeout_s: float = 600.0
    sample_interval_s: float = 1.0
    probe_timeout_s: float = 2.0

    def __post_init__(self):
        for name in ("timeout_s", "probe_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if not (math.isfinite(self.sample_interval_s) and self.sample_interval_s >= 0):
            raise ValueError(f"sample_interval_s must be >= 0, got {self.sample_interval_s!r}")


class ReplayResult(NamedTuple):
    """What a replay measured. `num_not_sent`: requests a stop kept from being sent;
    `errors`: failed requests by kind ("http 400", "timeout", "stream error", an httpx
    error's name); `probe_errors`: failed fleet probes by kind (the run goes on without
    that sample)."""

    records: list[RequestRecord]
    samples: list[FleetSample]
    num_not_sent: int
    is_interrupted: bool
    errors: dict[str, int]
    probe_errors: dict[str, int]


@dataclass
class _Progress:
    """One request as far as it got."""

    index: int
    request: TraceRequest
    first_token_s: float | None = None
    finish_s: float | None = None
    num_chunks: int = 0
    usage: dict[str, Any] = field(default_factory=dict)
    rejected: bool = False

    def record(self) -> RequestRecord:
        output = self.usage.get("completion_tokens", self.num_chunks)
        details = self.usage.get("prompt_tokens_details") or {}
        return RequestRecord(
            index=self.index,
            arrival_s=self.request.arrival_s,
            prompt_tokens=self.request.prompt_tokens,
            output_tokens=output,
            first_token_s=None if self.rejected else self.first_token_s,
            finish_s=None if self.rejected else self.finish_s,
            rejected=self.rejected,
            num_cached_tokens=details.get("cached_tokens") or 0,
        )


async def model_card(client, url: str, model: str, timeout_s: float) -> dict[str, Any]:
    """The server's /v1/models entry for `model` (id, max_model_len; vocab_size where the
    server reports it). Raises ValueError naming the served models when it is not there."""
    response = await client.get(f"{url}/v1/models", timeout=timeout_s)
    if response.status_code != 200:
        raise ValueError(f"GET {url}/v1/models answered HTTP {response.status_code}")
    cards = response.json().get("data") or []
    for card in cards:
        if card.get("id") == model:
            return card
    served = [card.get("id") for card in cards]
    raise ValueError(f"--model {model!r} is not served at {url}; it serves {served}")


async def warm_up(client, config: ReplayConfig, num_requests: int = 1) -> None:
    """Send `num_requests` small requests (WARMUP_REQUEST), one at a time, each awaited
    within timeout_s, before a replay: a server's first request loads the tokenizer at
    the ingress and opens its streams, seconds a replay should not count. Their prompt
    ids (negative indices) share no block with a trace's. Raises RuntimeError naming
    what failed."""
    loop = asyncio.get_running_loop()
    for i in range(num_requests):
        state = _Progress(-1 - i, WARMUP_REQUEST)
        errors: dict[str, int] = {}
        await _send(client, config, state, loop.time(), errors)
        if errors or state.rejected or state.finish_s is None:
            kind = next(iter(errors), "rejected" if state.rejected else "no finish")
            raise RuntimeError(f"warm-up request {i + 1} of {num_requests} failed: {kind}")


async def replay(
    requests: Sequence[TraceRequest],
    config: ReplayConfig,
    client,
    stop: asyncio.Event | None = None,
) -> ReplayResult:
    """Send `requests` open loop through `client` (an httpx.AsyncClient) and measure them
    (see the module doc); returns when every request sent has ended or `stop` is set."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    start = loop.time()
    errors: dict[str, int] = {}
    probe_errors: dict[str, int] = {}
    samples: list[FleetSample] = []
    sampler = asyncio.create_task(_sample(client, config, start, samples, probe_errors, stop))
    progress: list[_Progress] = []
    tasks: list[asyncio.Task] = []
    for index, request in enumerate(requests):
        delay = start + request.arrival_s - loop.time()
        if delay > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            break
        state = _Progress(index, request)
        progress.append(state)
        tasks.append(asyncio.create_task(_send(client, config, state, start, errors)))
    # Each request ends within timeout_s of its send, so this wait has a deadline too.
    every_request = asyncio.gather(*tasks, return_exceptions=True)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([stopped, every_request], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    for task in tasks:
        task.cancel()  # only those still in flight: a stop came
    await every_request
    is_interrupted = stop.is_set()
    stop.set()
    await sampler
    if config.sample_interval_s > 0:
        last = await _probe(client, config, loop.time() - start, probe_errors)
        samples.extend([last] if last is not None else [])
    records = [state.record() for state in progress]
    return ReplayResult(
        records,
        samples,
        len(requests) - len(progress),
        is_interrupted,
        dict(sorted(errors.items())),
        dict(sorted(probe_errors.items())),
    )


async def _send(client, config: ReplayConfig, state: _Progress, start: float, errors) -> None:
    request = state.request
    body = {
        "model": config.model,
        "prompt": prompt_token_ids(request, state.index, config.vocab_size),
        "max_tokens": request.output_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    try:
        await asyncio.wait_for(_stream(client, config, body, state, start), config.timeout_s)
    except asyncio.TimeoutError:
        _count(errors, "timeout")
    except _Failed as exc:
        _count(errors, str(exc))
    except Exception as exc:  # httpx transport errors, a body that is not JSON
        _count(errors, type(exc).__name__)


class _Failed(Exception):
    """A request that the server answered with a failure (the message is its kind)."""


async def _stream(client, config: ReplayConfig, body: dict, state: _Progress, start) -> None:
    loop = asyncio.get_running_loop()
    async with client.stream("POST", f"{config.url}/v1/completions", json=body) as response:
        if response.status_code in REJECTED_STATUSES:
            state.rejected = True
            return
        if response.status_code != 200:
            raise _Failed(f"http {response.status_code}")
        finish_s = None
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                state.finish_s = loop.time() - start if finish_s is None else finish_s
                return
            event = json.loads(data)
            if "error" in event:
                raise _Failed("stream error")
            now = loop.time() - start
            choices = event.get("choices") or []
            if choices:
                state.num_chunks += 1
                if state.first_token_s is None:
                    state.first_token_s = now
                if choices[0].get("finish_reason") is not None:
                    finish_s = now
            if event.get("usage"):
                state.usage = event["usage"]
        raise _Failed("stream ended without [DONE]")


async def _sample(client, config, start, samples, errors, stop: asyncio.Event) -> None:
    if config.sample_interval_s == 0:
        return
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        sample = await _probe(client, config, loop.time() - start, errors)
        if sample is not None:
            samples.append(sample)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), config.sample_interval_s)


async def _probe(client, config: ReplayConfig, time_s: float, errors) -> FleetSample | None:
    try:
        return await asyncio.wait_for(
            probe_fleet(client, config.url, config.model, time_s, config.probe_timeout_s),
            2 * config.probe_timeout_s,
        )
    except Exception as exc:  # a probe that fails is counted and the run goes on
        _count(errors, type(exc).__name__)
        return None


def _count(errors: dict[str, int], kind: str) -> None:
    errors[kind] = errors.get(kind, 0) + 1
