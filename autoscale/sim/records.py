"""What a simulation or a real replay measured, request by request and replica by replica;
`autoscale/sim/summary.py` turns both into the same summary."""

from __future__ import annotations

from typing import NamedTuple


class RequestRecord(NamedTuple):
    """One request of a trace, as it went. Times are seconds from the start of the run.

    A rejected request (admission control, or no replica within the deadline) has
    `rejected=True` and no token times; an accepted one that did not complete (the run
    ended, or it failed) has `finish_s=None`."""

    index: int  # position in the trace
    arrival_s: float
    prompt_tokens: int
    output_tokens: int  # tokens generated (the trace's output_tokens when it completed)
    first_token_s: float | None
    finish_s: float | None
    rejected: bool = False
    replica: str | None = None  # where it was served
    num_cached_tokens: int = 0  # prompt tokens found in the replica's prefix cache

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """Mean seconds per output token after the first (None with one token or fewer)."""
        if self.finish_s is None or self.first_token_s is None or self.output_tokens < 2:
            return None
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)


class FleetSample(NamedTuple):
    """The fleet at one moment: how many replicas and how full their KV caches were."""

    time_s: float
    num_replicas: int  # serving
    num_starting: int
    target_replicas: int  # the autoscaler's count
    kv_usage: tuple[float, ...]  # per serving replica, 0..1
