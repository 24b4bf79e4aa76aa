"""Request routing and autoscaling, beside `deployments/` (README "Architecture",
"Routing").

KV-cache-aware routing: the mirrored prefix cache of each replica (`PrefixIndex`), the
work routed to each and not finished (`InFlight`), a step-time model fitted online from a
replica's own steps (`StepTimeModel`), the pure routing decision (`choose_replica`) and
`KvAwareRouting`, which composes them. Serve runs it as `serve_router.KvAwareRequestRouter`
(config `serve.request_router`, `router_choice.py`); replicas feed it through
`replica_feed.ReplicaFeed` and callers through `feedback`. The SLO autoscaling policy
(`slo_policy.decide`) is a pure function beside it. Importing this package loads no Ray
Serve router code.
"""

from autoscale.inflight import InFlight, ReplicaLoad
from autoscale.kv_routing import KvAwareRouting
from autoscale.prefix_index import PrefixIndex
from autoscale.routing_policy import (
    CACHE_HIT,
    FALLBACK,
    LEAST_WAIT,
    REASONS,
    ReplicaView,
    RoutingDecision,
    choose_replica,
    predict_ttft_s,
)
from autoscale.step_time import DECODE, PREFILL, StepTimeModel, StepTimePrior

__all__ = [
    "CACHE_HIT",
    "DECODE",
    "FALLBACK",
    "LEAST_WAIT",
    "PREFILL",
    "REASONS",
    "InFlight",
    "KvAwareRouting",
    "PrefixIndex",
    "ReplicaLoad",
    "ReplicaView",
    "RoutingDecision",
    "StepTimeModel",
    "StepTimePrior",
    "choose_replica",
    "predict_ttft_s",
]
