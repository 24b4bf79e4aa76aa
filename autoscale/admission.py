"""Admission control: refuse a request up front when it would wait too long everywhere.

A request is refused, before any work is spent on it, when all of these hold:
- the model sets a limit (`serve.max_queue_wait_s`);
- no more replicas can be added: as many run as the most the model may have
  (autoscaling's max_replicas, or its fixed num_replicas); while fewer run, the
  autoscaler can still add some, and the request waits for them like any other;
- every running replica's predicted wait before the request's prefill could start
  (`KvAwareRouting.least_wait_s`: the decode step in flight, the prefill queued ahead,
  rows freeing when the batch is full) is over the limit. Unknown (a replica without
  step times yet): admitted.
The refusal says when to retry: when the least-loaded replica's queue will have drained
to the limit, if nothing else arrived (its predicted wait less the limit), rounded up to
whole seconds (HTTP's Retry-After), at least one.

    >>> admission_retry_after_s(least_wait_s=7.2, num_replicas=2, max_replicas=2,
    ...                         max_queue_wait_s=5.0)
    3.0
    >>> admission_retry_after_s(7.2, num_replicas=1, max_replicas=2, max_queue_wait_s=5.0)
    >>> admission_retry_after_s(4.0, num_replicas=2, max_replicas=2, max_queue_wait_s=5.0)
"""

from __future__ import annotations

import math

MIN_RETRY_AFTER_S = 1.0


def admission_retry_after_s(
    least_wait_s: float | None,
    num_replicas: int,
    max_replicas: int | None,
    max_queue_wait_s: float | None,
) -> float | None:
    """None to admit the request; else the seconds after which to retry (module doc).
    max_replicas None: unknown, so replicas may still be added (admit)."""
    if max_queue_wait_s is None or least_wait_s is None or max_replicas is None:
        return None
    if num_replicas < max_replicas or least_wait_s <= max_queue_wait_s:
        return None
    return max(MIN_RETRY_AFTER_S, float(math.ceil(least_wait_s - max_queue_wait_s)))
