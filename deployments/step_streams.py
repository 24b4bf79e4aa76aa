"""A replica's step streams: per caller session, one stream that carries, per engine step,
the chunks of all that caller's requests on this replica as one message.

Serve routes each request to a replica on its own, and a handle cannot address a replica,
so a caller (the ingress) opens step streams as requests of their own
(`LLMServer.step_stream(session)`), each landing on some replica. A request of that session
that lands on a replica holding one sends its first chunk on its own stream (so bad input
and overload still fail it before any HTTP header), then a `Handoff` naming the step
stream, and the rest of its chunks on the step stream. Its own stream stays open until it
finishes: the caller cancels it to abort the request (freeing its KV blocks at once), and
an engine failure still ends it with the error. A request on a replica without a step
stream of its session streams on its own stream as before.

Each message of a step stream is `(chunks, update)`: one engine step's chunks and what
changed on the replica since the session's previous update (a ReplicaUpdate for the
caller's KV-aware routers, autoscale/replica_feed.py; None when nothing did).

A step stream with no request handed to it for IDLE_S ends (the caller opens another when
it needs one), so a replica being drained is not held open by its callers' step streams.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from deployments.generation import GenerationChunk

IDLE_S = 2.0


class StepStream:
    """Chunks handed in by a session's requests, given out in batches: every chunk handed
    in while the consumer was away (one engine step's worth) goes out as one message."""

    def __init__(self, session: str):
        self.id = uuid.uuid4().hex
        self.session = session
        self.is_open = True
        self.num_requests = 0  # handed off to this stream and not finished
        self._pending: list[GenerationChunk] = []
        self._ready = asyncio.Event()

    def send(self, chunk: GenerationChunk) -> None:
        self._pending.append(chunk)
        self._ready.set()

    async def batches(self, idle_s: float = IDLE_S) -> AsyncIterator[tuple[GenerationChunk, ...]]:
        """Every chunk sent, in batches; ends after idle_s with no request handed to it."""
        # NOTE: the engine loop wakes every request of a step before this consumer runs,
        # so a step's chunks are all pending by the time it takes them.
        while True:
            try:
                await asyncio.wait_for(self._ready.wait(), idle_s)
            except asyncio.TimeoutError:
                if self.num_requests == 0:
                    return
                continue
            self._ready.clear()
            batch, self._pending = tuple(self._pending), []
            yield batch


class StepStreams:
    """The open step streams of one replica, by caller session."""

    def __init__(self) -> None:
        self._by_session: dict[str, list[StepStream]] = {}

    def open(self, session: str) -> StepStream:
        stream = StepStream(session)
        self._by_session.setdefault(session, []).append(stream)
        return stream

    def close(self, stream: StepStream) -> None:
        stream.is_open = False
        streams = self._by_session.get(stream.session, [])
        if stream in streams:
            streams.remove(stream)
        if not streams:
            self._by_session.pop(stream.session, None)

    def find(self, session: str | None) -> StepStream | None:
        """The step stream that carries `session`'s requests here, if one is open."""
        streams = self._by_session.get(session) if session is not None else None
        return streams[0] if streams else None
