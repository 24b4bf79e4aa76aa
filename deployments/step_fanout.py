"""The ingress's side of step streams (deployments.step_streams): per model, the step
streams it holds open and the fan-out of each message (one engine step's chunks of all
its requests on one replica) to each request's queue.

A step stream is opened when the first request of a model is, and another whenever a
request sent after the last one was established still streams on its own stream (its
replica has none), up to MAX_STEP_STREAMS. A step stream that fails fails the requests it
carries (a 503: its replica is gone); one that ends (idle) is forgotten.

Each message also brings what changed on its replica (a ReplicaUpdate: block events and
step timings), handed to this process's KV-aware routers of the model's deployment
(autoscale.feedback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from autoscale.feedback import RouterFeedback, feedback_for
from autoscale.replica_update import ReplicaUpdate

logger = logging.getLogger(__name__)

MAX_STEP_STREAMS = 8  # per model and ingress replica: at most one is used per replica


class StepFanout:
    """Step streams of one model for one ingress replica, and the requests they carry."""

    def __init__(self, handle: Any, stream_options: dict[str, Any]):
        self.handle = handle
        self.stream_options = stream_options
        self.session = uuid.uuid4().hex
        self._queues: dict[str, asyncio.Queue] = {}  # request id -> its chunks (or an error)
        self._carried: dict[str, set[str]] = {}  # step stream id -> request ids it carries
        self._carrier_of: dict[str, str] = {}  # request id -> its step stream id
        self._tasks: set[asyncio.Task] = set()
        self._established_s = 0.0  # when the newest step stream was opened or sent its id

    def register(self, request_id: str) -> asyncio.Queue:
        """The queue of a request about to be sent (chunks may come before its Handoff)."""
        self._queues[request_id] = queue = asyncio.Queue()
        if not self._tasks:
            self._open()
        return queue

    def unregister(self, request_id: str) -> None:
        self._queues.pop(request_id, None)
        step_stream_id = self._carrier_of.pop(request_id, None)
        if step_stream_id is not None:
            self._carried.get(step_stream_id, set()).discard(request_id)

    def bind(self, request_id: str, step_stream_id: str) -> None:
        """The request's chunks travel on that step stream (its Handoff said so)."""
        self._carried.setdefault(step_stream_id, set()).add(request_id)
        self._carrier_of[request_id] = step_stream_id

    def on_own_stream(self, sent_s: float) -> None:
        """A request sent at sent_s streams on its own stream: its replica has no step
        stream of ours, unless it was sent before the newest one was established."""
        if sent_s > self._established_s and len(self._tasks) < MAX_STEP_STREAMS:
            self._open()

    def _open(self) -> None:
        # Requests sent before this one is established may still miss it: only those sent
        # later ask for another (one more per round of requests, not one per request).
        self._established_s = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._read())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self) -> None:
        gen = self.handle.options(**self.stream_options).step_stream.remote(self.session)
        step_stream_id = None
        error: BaseException | None = None
        try:
            step_stream_id = await gen.__anext__()
            self._established_s = time.monotonic()
            queues = self._queues
            feedback = feedback_for(self.handle.deployment_name)
            async for batch, update in gen:
                if update is not None:  # first: a request that ends here is routed on it
                    self._feed_routers(feedback, update)
                for chunk in batch:
                    queue = queues.get(chunk.request_id)
                    if queue is not None:
                        queue.put_nowait(chunk)
        except StopAsyncIteration:
            pass
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                gen.cancel()
            raise
        except Exception as exc:  # the replica died: fail what it carried
            logger.warning("step stream of session %s failed: %r", self.session, exc)
            error = exc
        finally:
            carried = self._carried.pop(step_stream_id, set()) if step_stream_id else set()
            for request_id in carried:
                queue = self._queues.get(request_id)
                if queue is not None:
                    queue.put_nowait(error or StepStreamEnded(step_stream_id))

    def _feed_routers(self, feedback: RouterFeedback, update: ReplicaUpdate) -> None:
        # NOTE: a router's fault must not read as this replica's: it would fail the
        # requests the step stream carries.
        try:
            feedback.on_replica_update(update)
        except Exception:
            logger.exception(
                "the routers of %s failed on a replica update", feedback.deployment_name
            )

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


class StepStreamEnded(RuntimeError):
    """The step stream carrying a request ended before the request finished."""

    def __init__(self, step_stream_id: str):
        super().__init__(f"the step stream {step_stream_id} ended before the request finished")
