"""Every replica's engine stats and state for the ingress's /health and /metrics, without
waiting on replicas that cannot answer.

Each replica actor is asked directly (a handle call reaches only one replica of a
deployment), with at most one call outstanding per replica. A request waits at most
STATS_DEADLINE_S, and only for calls sent within that deadline: a replica waiting for room
in the cluster or still warming up never delays an answer, nor does a slow one. Its call
stays outstanding, and a later request reads the answer once it has come.

Replica states, per the replica's last answer:
    starting      never answered: waiting for resources (the call waits), or loading the
                  model and warming up (Serve refuses the call until the constructor ends)
    healthy       answered, and its engine is healthy
    unhealthy     answered that its engine is dead, or a call failed after it had answered
    unresponsive  answered before, but a call has been outstanding for STATS_TIMEOUT_S
A replica that answered before and is only slow (a call outstanding for less than
STATS_TIMEOUT_S) keeps its last state and stats. A failed call is retried no sooner than
RETRY_AFTER_FAILURE_S later, so frequent probes do not flood a starting replica's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import ray

logger = logging.getLogger(__name__)

__all__ = [
    "STATS_DEADLINE_S",
    "STATS_TIMEOUT_S",
    "ReplicaMonitor",
    "ReplicaSnapshot",
    "ReplicaState",
]

STATS_DEADLINE_S = 0.25  # the longest a /health or /metrics request waits on replicas
STATS_TIMEOUT_S = 5.0  # a call outstanding this long makes a replica unresponsive
RETRY_AFTER_FAILURE_S = 1.0
_REPLICA_PREFIX = "SERVE_REPLICA::"  # Serve's replica actor names: PREFIX<app>#<deployment>#<id>


class ReplicaState(str, enum.Enum):
    """What /health says of one replica (see the module docstring)."""

    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNRESPONSIVE = "unresponsive"


@dataclass(frozen=True)
class ReplicaSnapshot:
    """One replica as last seen: its state, its engine stats (empty unless it answered and
    is neither unresponsive nor failed), and why its last call failed, if it did."""

    model: str
    replica_id: str
    state: ReplicaState
    stats: dict[str, float] = field(default_factory=dict)
    error: str | None = None


class _Probe:
    """One replica actor: its last answer and the call outstanding, if any."""

    def __init__(self, model: str, replica_id: str, actor: Any):
        self.model = model
        self.replica_id = replica_id
        self.actor = actor
        self.stats: dict[str, float] | None = None  # the last answer's numbers
        self.error: str | None = None  # why the last call failed
        self.has_answered = False
        self.call: asyncio.Task | None = None
        self.sent_s = 0.0

    def ask(self, now_s: float) -> None:
        """Send a call unless one is outstanding or the last one failed just now."""
        is_retry_due = self.error is None or now_s - self.sent_s >= RETRY_AFTER_FAILURE_S
        if self.call is None or (self.call.done() and is_retry_due):
            self.sent_s = now_s
            self.call = asyncio.ensure_future(self._ask())

    async def _ask(self) -> None:
        try:
            result = await self.actor.record_routing_stats.remote()
        except Exception as exc:  # reported as this replica's state, not raised
            error = f"{type(exc).__name__}: {exc}"
            if self.has_answered and error != self.error:  # expected while it starts
                logger.warning("stats of replica %s of %s: %s", self.replica_id, self.model, error)
            self.stats, self.error = None, error
            return
        self.stats = {k: v for k, v in result.items() if isinstance(v, (int, float))}
        self.error, self.has_answered = None, True

    def is_waited_for(self, now_s: float) -> bool:
        """Whether a request waits for this call: only while it is young."""
        is_outstanding = self.call is not None and not self.call.done()
        return is_outstanding and now_s - self.sent_s < STATS_DEADLINE_S

    def snapshot(self, now_s: float) -> ReplicaSnapshot:
        outstanding_s = now_s - self.sent_s if not self.call.done() else 0.0
        if not self.has_answered:
            state, stats = ReplicaState.STARTING, {}
        elif self.error is not None:
            state, stats = ReplicaState.UNHEALTHY, {}
        elif outstanding_s >= STATS_TIMEOUT_S:
            state, stats = ReplicaState.UNRESPONSIVE, {}
        else:
            is_healthy = self.stats.get("is_healthy") == 1.0
            state = ReplicaState.HEALTHY if is_healthy else ReplicaState.UNHEALTHY
            stats = dict(self.stats)
        return ReplicaSnapshot(self.model, self.replica_id, state, stats, self.error)

    def close(self) -> None:
        if self.call is not None:
            self.call.cancel()


class ReplicaMonitor:
    """The replicas of some deployments (`models`) of one Serve application, as seen by
    the ingress. Use from one event loop."""

    def __init__(self, models: Iterable[str]):
        self.models = frozenset(models)
        self._probes: dict[str, _Probe] = {}  # replica actor name -> its probe

    async def snapshot(self, app_name: str) -> list[ReplicaSnapshot]:
        """Every live replica, after waiting at most STATS_DEADLINE_S for fresh answers."""
        listed = await asyncio.to_thread(_list_replicas, app_name, self.models)
        for name in set(self._probes) - set(listed):
            self._probes.pop(name).close()  # the replica is gone
        new = {name: where for name, where in listed.items() if name not in self._probes}
        if new:
            actors = await asyncio.to_thread(_get_actors, new)
            for name, actor in actors.items():
                if name in self._probes:  # a concurrent snapshot made its probe meanwhile
                    continue
                _, model, replica_id = new[name]
                self._probes[name] = _Probe(model, replica_id, actor)
        now_s = time.monotonic()
        for probe in self._probes.values():
            probe.ask(now_s)
        waited = [p.call for p in self._probes.values() if p.is_waited_for(now_s)]
        if waited:
            await asyncio.wait(waited, timeout=STATS_DEADLINE_S)
        now_s = time.monotonic()
        return [probe.snapshot(now_s) for probe in self._probes.values()]

    def close(self) -> None:
        """Cancel every outstanding call."""
        for probe in self._probes.values():
            probe.close()
        self._probes.clear()


def _list_replicas(app_name: str, models: frozenset[str]) -> dict[str, tuple[str, str, str]]:
    """Actor name -> (namespace, model, replica id) of every replica of `models` in
    `app_name`, placed or not. A blocking GCS call: run it in a thread."""
    found = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        model, replica_id = parse_replica_name(entry["name"], app_name)
        if model in models:
            found[entry["name"]] = (entry["namespace"], model, replica_id)
    return found


def _get_actors(replicas: dict[str, tuple[str, str, str]]) -> dict[str, Any]:
    """Actor name -> handle, leaving out replicas that went away meanwhile. Blocking."""
    actors = {}
    for name, (namespace, _, _) in replicas.items():
        with contextlib.suppress(ValueError):  # no such actor any more
            actors[name] = ray.get_actor(name, namespace=namespace)
    return actors


def parse_replica_name(name: str, app_name: str) -> tuple[str | None, str | None]:
    """(deployment, replica id) of a Serve replica actor name in `app_name`, else
    (None, None): `SERVE_REPLICA::gaudi-serve#tiny#abc123` -> ("tiny", "abc123")."""
    prefix = f"{_REPLICA_PREFIX}{app_name}#"
    if not name.startswith(prefix):
        return None, None
    deployment, _, replica = name[len(prefix) :].rpartition("#")
    return deployment, replica
