"""What a replica tells the routers about itself: the message a router mirrors it from.

A replica (deployments/server.py) publishes, per caller session, what changed since that
session's last message (block stored/evicted events and step timings), and a full snapshot
through Serve's routing stats for routers that have not heard from it lately. A router
(autoscale/serve_router.py) applies each `ReplicaUpdate` to its prefix index and the
replica's step-time model (`KvAwareRouting.apply_update`).

These are plain tuples of ints, floats and strings: they pickle small and load nothing.
"""

from __future__ import annotations

from typing import NamedTuple


class StepSample(NamedTuple):
    """One engine step, as a step-time model takes it (autoscale/step_time.py)."""

    kind: str  # step_time.PREFILL (size = tokens fed) or step_time.DECODE (size = rows)
    size: int
    seconds: float
    num_context_tokens: int  # tokens already in the KV cache the step attended to


class ReplicaUpdate(NamedTuple):
    """What changed on one replica since the receiver's previous update from it.

    `events` are (seq, kind, block_hash) block events in order, numbered by the replica's
    block manager; `next_seq` is the number its next event will carry. With `snapshot`
    (every block hash findable in its prefix cache when its counter stood at next_seq),
    the receiver replaces what it knew and `events` is empty."""

    replica: str  # the Serve replica's unique id (ReplicaID.unique_id)
    events: tuple  # of engine.BlockEvent (seq, kind, block_hash)
    next_seq: int
    snapshot: tuple[int, ...] | None
    steps: tuple[StepSample, ...]
