"""A request to a model with no running replica (scaling from zero, or every replica
restarting) is held until one serves it, up to the model's `serve.cold_start_timeout_s`,
then refused with 503 and Retry-After.

The request is sent at once, so Serve counts it as queued at its caller (which is what
scales a model up from zero); only the wait for its answer (the model's info, the first
chunk of a generation) is bounded. Whether a
replica runs is what this process's request routers of the model see
(autoscale/feedback.py `num_replicas`): once one does, the request waits like any other
(its place in the queue, not a start-up, is what it waits for then).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from autoscale.feedback import num_replicas
from deployments.protocol import ApiError

T = TypeVar("T")

POLL_S = 0.25  # how often a held request looks for a running replica
RETRY_AFTER_S = 10.0  # a refused request's Retry-After: replicas are still starting


async def until_replica(first: Awaitable[T], deployment_name: str, timeout_s: float | None) -> T:
    """Await `first` (a call's first answer); while no router of deployment_name in this
    process sees a replica, for at most timeout_s (None: no bound), else cancel it and
    raise ApiError 503."""
    if timeout_s is None or num_replicas(deployment_name):
        return await first
    task = asyncio.ensure_future(first)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while True:
            remaining = deadline - loop.time()
            done, _ = await asyncio.wait({task}, timeout=max(0.0, min(POLL_S, remaining)))
            if done:
                return task.result()
            if num_replicas(deployment_name):
                return await task
            if remaining <= POLL_S:
                raise ApiError(
                    503,
                    f"model {deployment_name!r} has no running replica: none started within "
                    f"serve.cold_start_timeout_s ({timeout_s:g}s); retry later",
                    code="no_replica",
                    retry_after_s=RETRY_AFTER_S,
                )
    finally:
        if not task.done():
            task.cancel()
