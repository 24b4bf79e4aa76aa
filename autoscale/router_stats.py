"""What a request router counts about its own decisions, for /metrics.

Plain counters and fixed-bucket histograms (no Prometheus client here): the ingress's
/metrics renders them (deployments/metrics.py) labelled by model. Decisions by reason
(`routing_policy.REASONS`; SPILLED: the best candidate refused the request, its queue
full, and Serve sent it to the next; ERROR: the policy raised and load alone decided),
decision latency, and predicted vs observed time to first token for requests sent to the
replica the policy chose.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

SPILLED = "spilled"
ERROR = "error"  # the policy raised; the request was routed on load alone (a bug: logged)
DECISION_LATENCY_BUCKETS_S = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1)
TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class BucketHistogram:
    """Counts per upper bound (cumulative form is computed when rendered), sum, count."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it), ending with (inf, count)."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass
class RouterStats:
    """One router's counts since it started."""

    decisions: Counter = field(default_factory=Counter)  # reason -> requests
    decision_latency_s: BucketHistogram = field(
        default_factory=lambda: BucketHistogram(DECISION_LATENCY_BUCKETS_S)
    )
    predicted_ttft_s: BucketHistogram = field(
        default_factory=lambda: BucketHistogram(TTFT_BUCKETS_S)
    )
    observed_ttft_s: BucketHistogram = field(
        default_factory=lambda: BucketHistogram(TTFT_BUCKETS_S)
    )
    cached_blocks: dict[str, int] = field(default_factory=dict)  # replica -> blocks mirrored
    rejected: int = 0  # requests refused by admission control (autoscale/admission.py)
