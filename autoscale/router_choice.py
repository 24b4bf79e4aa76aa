"""The request routers a model can pick (config `serve.request_router`), and Serve's
`request_router_config` for each. Loads no Ray Serve router code: the config validates
with it, and Serve imports the chosen class by its dotted path in the replica's callers.

When to pick which (README "Routing"):
- kv_aware (default): prompts that share prefixes (system prompts, few-shot templates,
  multi-turn chats, agents) on more than one replica; it also balances by predicted wait
  when nothing is shared.
- power_of_two: Ray Serve's default, blind to caches; the baseline.
- prefix_affinity: Ray Serve's PrefixCacheAffinityRouter (a character prefix tree kept by
  the router, not the replicas' caches), for comparison.
- round_robin: each request to the next replica; for tests and uniform work.
"""

from __future__ import annotations

from typing import Any

KV_AWARE = "kv_aware"
POWER_OF_TWO = "power_of_two"
PREFIX_AFFINITY = "prefix_affinity"
ROUND_ROBIN = "round_robin"
REQUEST_ROUTERS = (KV_AWARE, POWER_OF_TWO, PREFIX_AFFINITY, ROUND_ROBIN)
DEFAULT_REQUEST_ROUTER = KV_AWARE
DEFAULT_ROUTING_STATS_PERIOD_S = 2.0

_CLASSES = {
    KV_AWARE: "autoscale.serve_router:KvAwareRequestRouter",
    POWER_OF_TWO: "autoscale.serve_router:PowerOfTwoRequestRouter",
    PREFIX_AFFINITY: "autoscale.serve_router:PrefixAffinityRequestRouter",
    ROUND_ROBIN: "autoscale.serve_router:RoundRobinRequestRouter",
}


def request_router_config(
    name: str,
    block_size: int,
    routing_stats_period_s: float = DEFAULT_ROUTING_STATS_PERIOD_S,
    max_num_seqs: int | None = None,
    max_queue_wait_s: float | None = None,
    max_replicas: int | None = None,
) -> dict[str, Any]:
    """Serve's `request_router_config` (as a dict) for the router called name; block_size
    and max_num_seqs are the replicas' engine's; max_queue_wait_s and max_replicas turn on
    admission control (kv_aware only: autoscale/admission.py)."""
    if name not in _CLASSES:
        raise ValueError(
            f"request_router must be one of {', '.join(REQUEST_ROUTERS)}, got {name!r}"
        )
    if max_queue_wait_s is not None and name != KV_AWARE:
        raise ValueError(
            f"max_queue_wait_s needs request_router {KV_AWARE!r} (its predicted waits), "
            f"got request_router {name!r}"
        )
    kwargs = {}
    if name == KV_AWARE:
        kwargs = {"block_size": block_size, "max_num_seqs": max_num_seqs}
        if max_queue_wait_s is not None:
            kwargs |= {"max_queue_wait_s": max_queue_wait_s, "max_replicas": max_replicas}
    return {
        "request_router_class": _CLASSES[name],
        "request_router_kwargs": kwargs,
        "request_routing_stats_period_s": routing_stats_period_s,
    }
