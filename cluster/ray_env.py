"""Start an embedded local Ray, or join a running one; read what its nodes have
(`node_resources`) and what it is waiting to place (`pending_demands`).

>>> started = ensure_ray(num_cpus=4)  # doctest: +SKIP
>>> # ... use Ray ...
>>> if started:  # doctest: +SKIP
...     ray.shutdown()
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

__all__ = [
    "SERVE_ENV",
    "PendingDemand",
    "apply_serve_env",
    "ensure_ray",
    "is_embedded",
    "node_resources",
    "pending_demands",
]

logger = logging.getLogger(__name__)

# Ray Serve settings for an embedded cluster, read by each Ray process when it starts.
# RAY_SERVE_PROXY_USE_GRPC: the HTTP proxy reaches the ingress over Serve's gRPC channel
# instead of one Ray object per streamed chunk (about +15% tokens/s served on 2 CPU cores,
# benchmarks/RESULTS.md "Serving load"). On an existing cluster the operator sets it on
# every node (the Kubernetes manifests do).
SERVE_ENV = {"RAY_SERVE_PROXY_USE_GRPC": "1"}


def apply_serve_env() -> None:
    """Put SERVE_ENV into this process's environment (values already set win). Call it
    before `ray.init` starts a local cluster: its processes inherit the environment."""
    for name, value in SERVE_ENV.items():
        os.environ.setdefault(name, value)


def is_embedded(address: str | None) -> bool:
    """Whether `ensure_ray(address)` starts a local Ray (rather than joining a cluster):
    no address given and none in RAY_ADDRESS."""
    return address is None and not os.environ.get("RAY_ADDRESS")


def ensure_ray(address: str | None = None, num_cpus: float | None = None) -> bool:
    """Make sure this process is connected to Ray. Returns True when this call started or
    joined it (the caller then owns the connection and calls `ray.shutdown()`), False when
    Ray was already initialised (a Serve replica, a test fixture, the user's own script).

    address: None starts an embedded local Ray (token authentication off, as it is only
        reachable from this machine) unless RAY_ADDRESS names a cluster; "auto" or
        "host:port" joins a running cluster.
    num_cpus: logical CPUs of an embedded Ray (default: the machine's cores). Ignored when
        joining.
    """
    import ray

    if ray.is_initialized():
        return False
    is_local = is_embedded(address)
    if is_local:
        # NOTE: must be set before ray.init; Ray 2.60 enables token auth by default.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        apply_serve_env()
    ray.init(
        address=address,
        num_cpus=num_cpus if is_local else None,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    gcs_address = ray.get_runtime_context().gcs_address
    logger.info("%s Ray at %s", "started" if is_local else "joined", gcs_address)
    return True


@dataclass(frozen=True)
class PendingDemand:
    """Requests of one shape that the cluster cannot place now: `count` actors or tasks
    of one bundle each (`strategy` None), or `count` placement groups of `bundles`."""

    bundles: tuple[dict[str, float], ...]
    count: int
    strategy: str | None = None


def node_resources() -> list[dict[str, float]]:
    """The total resources of each alive node of the connected cluster."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def pending_demands() -> list[PendingDemand]:
    """What the connected cluster is waiting for resources to place (the "Pending
    demands" of `ray status`, read from the GCS, so it works without the dashboard)."""
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    demands = get_cluster_status(ray.get_runtime_context().gcs_address).resource_demands
    pending = [
        PendingDemand((dict(by_count.bundle),), by_count.count)
        for demand in demands.ray_task_actor_demand
        for by_count in demand.bundles_by_count
    ]
    for group in demands.placement_group_demand:
        bundles = tuple(dict(b.bundle) for b in group.bundles_by_count for _ in range(b.count))
        pending.append(PendingDemand(bundles, 1, group.strategy))
    return pending
