"""Work a router has sent each replica that is not finished, counted at routing time.

Load snapshots refreshed every few seconds make every replica look equal between
refreshes, and requests pile onto one. This count changes synchronously: `on_routed` the
moment a replica is chosen, `on_first_token` when its prefill is done (it is then one
decode row), `on_finished` when it ends (finished, failed or cancelled).

    >>> work = InFlight()
    >>> work.on_routed("a", "req-1", num_prefill_tokens=900)
    >>> work.on_routed("a", "req-2", num_prefill_tokens=100)
    >>> work.load("a")
    ReplicaLoad(num_requests=2, num_queued_tokens=1000, num_decoding=0, num_output_tokens=0)
    >>> work.on_first_token("req-1")
    >>> work.load("a")
    ReplicaLoad(num_requests=2, num_queued_tokens=100, num_decoding=1, num_output_tokens=0)
    >>> work.on_finished("req-1")
    True
    >>> work.on_finished("req-1")  # already counted out
    False
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import NamedTuple


class ReplicaLoad(NamedTuple):
    num_requests: int  # routed and not finished
    num_queued_tokens: int  # prefill tokens routed whose prefill is not done
    num_decoding: int  # requests past their prefill: decode rows
    num_output_tokens: int = 0  # the most tokens the requests routed may generate, summed


@dataclass
class _Request:
    replica: Hashable
    num_prefill_tokens: int
    num_output_tokens: int
    is_decoding: bool = False


IDLE = ReplicaLoad(0, 0, 0, 0)


class InFlight:
    """Per-replica counts of routed, unfinished requests and their queued prefill tokens."""

    def __init__(self) -> None:
        self._requests: dict[Hashable, _Request] = {}
        self._loads: dict[Hashable, ReplicaLoad] = {}

    def on_routed(
        self,
        replica: Hashable,
        request_id: Hashable,
        num_prefill_tokens: int,
        num_output_tokens: int = 0,
    ) -> None:
        """Count a request sent to replica, with the tokens it will prefill there (its
        prompt less what the replica is expected to hold cached) and the most it may
        generate (its max_tokens; 0: unknown)."""
        if request_id in self._requests:
            raise ValueError(f"request_id {request_id!r} is already in flight")
        if num_prefill_tokens < 0:
            raise ValueError(f"num_prefill_tokens must be >= 0, got {num_prefill_tokens}")
        if num_output_tokens < 0:
            raise ValueError(f"num_output_tokens must be >= 0, got {num_output_tokens}")
        self._requests[request_id] = _Request(replica, num_prefill_tokens, num_output_tokens)
        self._add(replica, 1, num_prefill_tokens, 0, num_output_tokens)

    def on_first_token(self, request_id: Hashable) -> None:
        """The request's prefill is done: its tokens leave the queue, it becomes a decode
        row. Unknown or repeated calls change nothing."""
        request = self._requests.get(request_id)
        if request is None or request.is_decoding:
            return
        request.is_decoding = True
        self._add(request.replica, 0, -request.num_prefill_tokens, 1)

    def on_finished(self, request_id: Hashable) -> bool:
        """Count the request out. Returns False if it was not in flight (already counted
        out, or its replica was removed)."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return False
        out = -request.num_output_tokens
        if request.is_decoding:
            self._add(request.replica, -1, 0, -1, out)
        else:
            self._add(request.replica, -1, -request.num_prefill_tokens, 0, out)
        return True

    def remove_replica(self, replica: Hashable) -> None:
        """Forget a replica and everything routed to it (it died or was replaced)."""
        self._loads.pop(replica, None)
        for request_id in [r for r, req in self._requests.items() if req.replica == replica]:
            del self._requests[request_id]

    def __contains__(self, request_id: Hashable) -> bool:
        return request_id in self._requests

    def load(self, replica: Hashable) -> ReplicaLoad:
        return self._loads.get(replica, IDLE)

    def _add(
        self, replica: Hashable, requests: int, tokens: int, decoding: int, output: int = 0
    ) -> None:
        old = self._loads.get(replica, IDLE)
        new = ReplicaLoad(
            old.num_requests + requests,
            old.num_queued_tokens + tokens,
            old.num_decoding + decoding,
            old.num_output_tokens + output,
        )
        if new == IDLE:
            self._loads.pop(replica, None)
        else:
            self._loads[replica] = new
