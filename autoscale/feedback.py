"""How a caller feeds the KV-aware routers of its process with what only it sees.

Serve builds a request router inside each process that holds a deployment handle (the
ingress replica, a Python driver), out of reach of the code using the handle. The routers
register here by deployment name; the caller reports through `feedback_for(name)`:
- `on_first_token(request_id, ttft_s)`: the request's prefill is done (it becomes a decode
  row in the router's in-flight count) and how long its first token took (predicted vs
  observed TTFT);
- `on_replica_update(update)`: a `ReplicaUpdate` that came with a replica's message.
With no KV-aware router in the process (another policy, or none yet) both do nothing.
`router_stats(name)` gives each registered router's `RouterStats` (for /metrics).

Every gaudi-serve request router (any policy) also registers its replica set
(`register_router`), so a caller can tell whether its routers see any replica of a model
right now (`num_replicas(name)`: a model scaling from zero has none; None when no router of
it exists in this process yet).
"""

from __future__ import annotations

import weakref
from typing import Protocol

from autoscale.replica_update import ReplicaUpdate
from autoscale.router_stats import RouterStats


class FeedbackReceiver(Protocol):
    stats: RouterStats

    def on_first_token(self, request_id: str, ttft_s: float) -> None: ...

    def on_replica_update(self, update: ReplicaUpdate) -> None: ...


class ReplicaSet(Protocol):
    @property
    def curr_replicas(self) -> dict: ...


_RECEIVERS: dict[str, weakref.WeakSet] = {}
_ROUTERS: dict[str, weakref.WeakSet] = {}


def register_router(deployment_name: str, router: ReplicaSet) -> None:
    """Add a request router of deployment_name, for `num_replicas` (held weakly)."""
    _ROUTERS.setdefault(deployment_name, weakref.WeakSet()).add(router)


def num_replicas(deployment_name: str) -> int | None:
    """The most replicas any of deployment_name's routers in this process can send to now;
    None when none is registered (no call through a handle has built one yet)."""
    routers = _ROUTERS.get(deployment_name)
    if not routers:
        return None
    counts = [len(router.curr_replicas) for router in list(routers)]
    return max(counts) if counts else None


def register(deployment_name: str, receiver: FeedbackReceiver) -> None:
    """Add a router of deployment_name (held weakly: a router that goes away drops out)."""
    _RECEIVERS.setdefault(deployment_name, weakref.WeakSet()).add(receiver)


class RouterFeedback:
    """The routers of one deployment in this process, fed together."""

    def __init__(self, deployment_name: str):
        self.deployment_name = deployment_name

    def _receivers(self) -> list[FeedbackReceiver]:
        receivers = _RECEIVERS.get(self.deployment_name)
        return list(receivers) if receivers else []

    def on_first_token(self, request_id: str, ttft_s: float) -> None:
        for receiver in self._receivers():
            receiver.on_first_token(request_id, ttft_s)

    def on_replica_update(self, update: ReplicaUpdate) -> None:
        for receiver in self._receivers():
            receiver.on_replica_update(update)


def feedback_for(deployment_name: str) -> RouterFeedback:
    """The feedback channel to deployment_name's routers in this process."""
    return RouterFeedback(deployment_name)


def router_stats(deployment_name: str) -> list[RouterStats]:
    """The stats of deployment_name's KV-aware routers in this process (none: empty)."""
    return [receiver.stats for receiver in RouterFeedback(deployment_name)._receivers()]
