"""Holding a request while its model has no running replica (deployments/cold_start.py).

The replica set is what a request router registers (autoscale/feedback.py); here a plain
object with the one attribute a router exposes, `curr_replicas`."""

from __future__ import annotations

import asyncio

import pytest

from autoscale import feedback
from deployments import cold_start
from deployments.cold_start import until_replica
from deployments.protocol import ApiError


class Replicas:
    def __init__(self, names=()):
        self.curr_replicas = dict.fromkeys(names)


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(cold_start, "POLL_S", 0.01)


def run(coro):
    return asyncio.run(coro)


def test_a_model_with_a_replica_waits_as_usual():
    router = Replicas(["r1"])
    feedback.register_router("warm", router)

    async def first():
        await asyncio.sleep(0.05)
        return "chunk"

    assert run(until_replica(first(), "warm", timeout_s=0.01)) == "chunk"  # no bound applies
    assert run(until_replica(first(), "unknown", timeout_s=None)) == "chunk"


def test_a_held_request_gets_its_chunk_once_a_replica_starts():
    router = Replicas()
    feedback.register_router("cold", router)

    async def main():
        arrived = asyncio.Event()

        async def first():
            await arrived.wait()
            return "chunk"

        async def replica_starts():
            await asyncio.sleep(0.05)
            router.curr_replicas["r1"] = None
            await asyncio.sleep(0.2)  # the request still queues after the start: no bound
            arrived.set()

        starter = asyncio.create_task(replica_starts())
        chunk = await until_replica(first(), "cold", timeout_s=0.1)
        await starter
        return chunk

    assert run(main()) == "chunk"
    assert feedback.num_replicas("cold") == 1


def test_no_replica_within_the_timeout_is_a_503_with_retry_after_and_cancels_the_wait():
    router = Replicas()
    feedback.register_router("never", router)
    cancelled = []

    async def first():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        with pytest.raises(ApiError) as caught:
            await until_replica(first(), "never", timeout_s=0.05)
        await asyncio.sleep(0)  # let the cancellation land
        return caught.value

    error = run(main())
    assert error.status == 503 and error.headers == {"Retry-After": "10"}
    assert "cold_start_timeout_s" in error.message and "'never'" in error.message
    assert cancelled == [True]
    assert feedback.num_replicas("never") == 0 and feedback.num_replicas("nobody") is None
