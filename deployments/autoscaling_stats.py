"""What one replica tells the SLO autoscaler (autoscale/serve_autoscaling.py), gathered on
the replica: the numbers `slo_policy.ReplicaMetrics` needs, as Serve's flat float metrics.

- token counters and queues from the engine's stats: prompt tokens taken off its queue
  (`num_prefill_tokens + num_prefix_hit_tokens`: computed or found cached; a preempted
  sequence's recompute counts again, as it takes the device's time again), generated
  tokens, prompt tokens accepted and not yet prefilled (`num_queued_prompt_tokens`);
- latency the replica saw, per request: TTFT from the engine taking the request to its
  first token, TPOT the mean gap between its tokens after that; p95 over the requests of
  the last LATENCY_WINDOW_S (none: left out);
- its step times: a StepTimeModel fitted to the feed's recent steps, as straight lines
  (`summarize_step_time`);
- its measured start-up: from its worker process's start to ready (imports, model load
  and warm-up). Ray may give a replica an idle worker process started long before (its
  worker pool): a process older than this package's import by more than POOLED_GAP_S is
  one, and the start-up counts from the import (when the replica's code began to load).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Iterable

import numpy as np

from autoscale.replica_update import StepSample
from autoscale.serve_autoscaling import encode_replica_stats
from autoscale.slo_capacity import summarize_step_time
from autoscale.step_time import StepTimeModel
from engine import EngineStats, RequestDelta

POOLED_GAP_S = 10.0  # a process this much older than the package's import was pooled
LATENCY_WINDOW_S = 60.0  # requests finished longer ago than this no longer count
MAX_LATENCY_SAMPLES = 4096  # per kind, within the window
LATENCY_QUANTILE = 0.95


class LatencyWindow:
    """Latency samples of the last `window_s`; their p95."""

    def __init__(self, window_s: float = LATENCY_WINDOW_S):
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=MAX_LATENCY_SAMPLES)

    def add(self, seconds: float, now: float | None = None) -> None:
        self._samples.append((time.monotonic() if now is None else now, seconds))

    def p95(self, now: float | None = None) -> float | None:
        """The 95th percentile of the window's samples; None when it holds none."""
        now = time.monotonic() if now is None else now
        while self._samples and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()
        if not self._samples:
            return None
        return float(np.quantile([s for _, s in self._samples], LATENCY_QUANTILE))


class ReplicaAutoscalingStats:
    """One replica's autoscaling figures (module doc). Create it first thing in the
    replica's constructor, call `on_ready()` last, wrap each request's engine stream in
    `timed`, and ask `collect` from `record_autoscaling_stats`."""

    def __init__(self) -> None:
        self._started_at = replica_started_at()
        self.startup_s: float | None = None
        self.ttft = LatencyWindow()
        self.tpot = LatencyWindow()

    def on_ready(self) -> None:
        self.startup_s = time.time() - self._started_at

    async def timed(self, stream: AsyncIterator[RequestDelta]) -> AsyncIterator[RequestDelta]:
        """`stream`'s deltas, unchanged, timing the request: TTFT at its first token, TPOT
        when it finishes. Closing this closes `stream`."""
        arrived_s = time.monotonic()
        first_s: float | None = None
        try:
            async for delta in stream:
                if first_s is None and delta.token_ids:
                    first_s = time.monotonic()
                    self.ttft.add(first_s - arrived_s, first_s)
                if delta.finished and first_s is not None and delta.num_generated_tokens > 1:
                    now = time.monotonic()
                    self.tpot.add((now - first_s) / (delta.num_generated_tokens - 1), now)
                yield delta
        finally:
            await stream.aclose()

    def collect(self, stats: EngineStats, steps: Iterable[StepSample]) -> dict[str, float]:
        """The replica's ReplicaMetrics figures as Serve's custom metrics (floats)."""
        model = StepTimeModel()
        for step in steps:
            model.observe(step.kind, step.size, step.seconds, step.num_context_tokens)
        return encode_replica_stats(
            prompt_tokens_total=stats.num_prefill_tokens + stats.num_prefix_hit_tokens,
            generated_tokens_total=stats.num_generated_tokens,
            num_queued_prompt_tokens=stats.num_queued_prompt_tokens,
            num_waiting=stats.num_waiting,
            num_running=stats.num_running,
            kv_usage=stats.kv_usage,
            ttft_p95_s=self.ttft.p95(),
            tpot_p95_s=self.tpot.p95(),
            step_time=summarize_step_time(model),
            startup_s=self.startup_s,
        )


def replica_started_at(now: float | None = None) -> float:
    """When this replica began to start, as a wall-clock time (module doc)."""
    import psutil

    import deployments

    now = time.time() if now is None else now
    imported_at = min(deployments.IMPORTED_AT, now)
    try:
        created_at = psutil.Process().create_time()
    except psutil.Error:
        return imported_at
    return created_at if imported_at - created_at <= POOLED_GAP_S else imported_at
