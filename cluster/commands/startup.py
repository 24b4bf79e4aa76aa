"""Watch a Serve application start, one bounded poll at a time: report each change of
phase, stop when asked, and give up on replicas that wait for resources too long.

A replica is "waiting for resources" while the cluster holds a pending request of exactly
its shape (see `cluster.ray_env.pending_demands`); otherwise a starting replica is warming
up (loading weights, compiling graphs), which may take minutes and is never timed out here.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from cluster.commands.preflight import ReplicaDemand
from cluster.commands.stop_signal import StopSignal
from cluster.ray_env import PendingDemand

__all__ = ["POLL_S", "StartOutcome", "Started", "wait_until_running"]

POLL_S = 0.5


class Started(enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"  # a signal arrived first
    FAILED = "failed"  # Serve gave up (a replica's constructor keeps failing)
    UNPLACEABLE = "unplaceable"  # replicas waited longer than the placement timeout


@dataclass(frozen=True)
class StartOutcome:
    how: Started
    message: str = ""


def wait_until_running(
    app_name: str,
    demands: list[ReplicaDemand],
    stop: StopSignal,
    placement_timeout_s: float,
    say: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
) -> StartOutcome:
    """Poll Serve every POLL_S until `app_name` runs, a stop is requested, Serve reports
    it failed, or some replica has waited for resources `placement_timeout_s` in a row.
    `say` gets one line per change of phase."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    from cluster.ray_env import node_resources, pending_demands

    waiting_since: float | None = None
    last_line = ""
    while not stop.is_requested:
        app = serve.status().applications.get(app_name)
        if app is not None and app.status == ApplicationStatus.RUNNING:
            return StartOutcome(Started.RUNNING)
        if app is not None and app.status == ApplicationStatus.DEPLOY_FAILED:
            return StartOutcome(Started.FAILED, _failure_message(app))
        stuck = _stuck_models(demands, pending_demands())
        now = clock()
        line = "starting: " + _replica_counts(app)
        if stuck:
            waiting_since = now if waiting_since is None else waiting_since
            if now - waiting_since >= placement_timeout_s:
                message = _unplaceable_message(stuck, now - waiting_since, node_resources())
                return StartOutcome(Started.UNPLACEABLE, message)
            needs = "; ".join(f"{d.model} needs {d.describe()}" for d in stuck)
            line += f"; waiting for resources: {needs} (giving up after {placement_timeout_s:g} s)"
        else:
            waiting_since = None
        if line != last_line:
            say(f"gaudi-serve: {line}")
            last_line = line
        stop.wait(POLL_S)
    return StartOutcome(Started.STOPPED)


def _stuck_models(
    demands: list[ReplicaDemand], pending: list[PendingDemand]
) -> list[ReplicaDemand]:
    """The models a pending request has exactly the shape of."""
    shapes = [p.bundles for p in pending]
    return [d for d in demands if d.bundles in shapes]


def _replica_counts(app) -> str:
    if app is None or not app.deployments:
        return "creating the deployments"
    parts = []
    for name, deployment in app.deployments.items():
        states = dict(deployment.replica_states)
        running = states.get("RUNNING", 0)
        parts.append(f"{name} {running}/{sum(states.values())} replicas running")
    return ", ".join(parts)


def _failure_message(app) -> str:
    lines = [app.message] if app.message else []
    lines += [f"{name}: {d.message}" for name, d in app.deployments.items() if d.message]
    return "\n".join(lines) or "Serve reported DEPLOY_FAILED"


def _unplaceable_message(
    stuck: list[ReplicaDemand], waited_s: float, nodes: list[dict[str, float]]
) -> str:
    from cluster.commands.preflight import describe_nodes

    names = ", ".join(repr(d.model) for d in stuck)
    needs = "; ".join(f"{d.model} needs {d.describe()}" for d in stuck)
    return (
        f"replicas of {names} could not be placed within {waited_s:.0f} s ({needs}); "
        f"the cluster has {describe_nodes(nodes)}, part of it held by replicas already "
        "placed. Lower num_replicas or tp_size, add nodes, or wait longer with "
        "--placement-timeout-s"
    )
