"""The simulator's request routers and autoscalers: thin adapters over production code.

Routers (the names of `autoscale.router_choice.REQUEST_ROUTERS`). Each ranks the serving
replicas for a request, best first; the fleet gives the request to the first whose
ongoing requests are under max_ongoing_requests (Serve's rejection protocol), else holds
it at the caller.
- kv_aware: the production `KvAwareRouting` (rank, on_routed, on_first_token,
  on_finished, apply_update, remove_replica), as `KvAwareRequestRouter` drives it, fed
  the replicas' `ReplicaUpdate`s (their `ReplicaFeed`s). Admission control
  (serve.max_queue_wait_s) is its production decision too: `autoscale.admission.
  admission_retry_after_s(KvAwareRouting.least_wait_s(serving replicas), number of
  serving replicas, ServeOptions.max_replicas, max_queue_wait_s)`, as
  `KvAwareRequestRouter._refuse` calls it; the other routers never refuse (the config
  allows max_queue_wait_s with kv_aware only).
- round_robin: `RoundRobinRequestRouter`'s rule (its logic lives only inside the Serve
  class: replicas sorted by id, the start moves one each call), restated here.
- power_of_two: Ray Serve's `PowerOfTwoChoicesRequestRouter`: two replicas drawn at
  random, the one with fewer ongoing requests first (Serve probes queue lengths); then the
  rest in random order (Serve draws again when both are full).
- prefix_affinity: Ray's `PrefixCacheAffinityRouter` decision over its own `PrefixTree`
  (the class its actor wraps, used in-process): token ids as characters (as
  `PrefixAffinityRequestRouter` passes them), the tenants holding the longest match when
  it covers >= 10% of the prompt, else the tenants with the fewest characters; the one
  with fewer ongoing requests of those wins; the prompt is inserted for the chosen
  replica. Its default imbalance threshold is infinite, so the load branch never fires.

Autoscalers, called every autoscaling period with the fleet's state:
- slo: the production `slo_policy.decide` on `FleetMetrics` built as the Serve adapter
  builds them (autoscale/serve_autoscaling.py: serving replicas' reports; requests
  waiting at callers only while no replica serves), clamped to [min, max];
- ongoing_requests: Ray Serve's default policy, restated from
  ray/serve/autoscaling_policy.py (Ray 2.x as pinned in .venv): the total ongoing
  requests (at replicas and queued at callers) averaged over look_back_period_s (30 s),
  desired = total / target_ongoing_requests, the cold-start fast path (no replica running
  and requests waiting: at least 1), then `_apply_delay_logic` (upscale_delay_s,
  downscale_delay_s, measured from the first consecutive decision) and min/max bounds.
  Scaling factors are Serve's default (1). Serve wraps the slo policy in the same delay
  logic (with its delays: upscale 0 unless set, downscale 0).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from autoscale.admission import admission_retry_after_s
from autoscale.kv_routing import KvAwareRouting, Ranking
from autoscale.replica_update import ReplicaUpdate
from autoscale.router_choice import (
    KV_AWARE,
    POWER_OF_TWO,
    PREFIX_AFFINITY,
    REQUEST_ROUTERS,
    ROUND_ROBIN,
)
from autoscale.sim.replica import SimRequest
from autoscale.slo_config import SloPolicyConfig
from autoscale.slo_policy import FleetMetrics, PolicyState, ReplicaMetrics, decide

PREFIX_MATCH_RATE_THRESHOLD = 0.1  # PrefixCacheAffinityRouter's match_rate_threshold default
LOOK_BACK_PERIOD_S = 30.0  # Serve's AutoscalingConfig.look_back_period_s default
SERVE_UPSCALE_DELAY_S = 30.0  # Serve's AutoscalingConfig defaults (ongoing_requests)
SERVE_DOWNSCALE_DELAY_S = 600.0
DELAY_EPS_S = 1e-6  # Serve's _DELAY_ELAPSED_EPS_S


class SimRouter(Protocol):
    """What the fleet asks of a router (module doc)."""

    wants_updates: bool  # feed it the replicas' ReplicaUpdates

    def rank(self, request: SimRequest, ongoing: Mapping[str, int], now: float) -> list[str]:
        """The candidates (serving replica -> its ongoing requests, what Serve's queue
        probes return), best first."""

    def on_routed(self, request: SimRequest, replica: str, now: float) -> None: ...

    def on_first_token(self, request: SimRequest) -> None: ...

    def on_finished(self, request: SimRequest) -> None: ...

    def on_update(self, update: ReplicaUpdate) -> None: ...

    def add_replica(self, replica: str, now: float) -> None: ...

    def remove_replica(self, replica: str) -> None: ...

    def admission_retry_after_s(
        self, replicas: list[str], max_replicas: int | None, max_queue_wait_s: float
    ) -> float | None:
        """Admission control for a new request over the serving replicas: None admits
        it, else the seconds after which to retry (refused)."""


class _Base:
    wants_updates = False

    def on_routed(self, request: SimRequest, replica: str, now: float) -> None:
        pass

    def on_first_token(self, request: SimRequest) -> None:
        pass

    def on_finished(self, request: SimRequest) -> None:
        pass

    def on_update(self, update: ReplicaUpdate) -> None:
        pass

    def add_replica(self, replica: str, now: float) -> None:
        pass

    def remove_replica(self, replica: str) -> None:
        pass

    def admission_retry_after_s(
        self, replicas: list[str], max_replicas: int | None, max_queue_wait_s: float
    ) -> float | None:
        return None  # only the kv_aware router refuses (ServeOptions requires it)


class KvAwareSimRouter(_Base):
    """The production KvAwareRouting, driven as KvAwareRequestRouter drives it."""

    wants_updates = True

    def __init__(self, block_size: int, max_num_seqs: int, rng: random.Random):
        self.routing = KvAwareRouting(block_size, rng, max_num_seqs)
        self._rankings: dict[str, Ranking] = {}

    def rank(self, request: SimRequest, ongoing: Mapping[str, int], now: float) -> list[str]:
        ranking = self.routing.rank(
            request.prompt_token_ids, sorted(ongoing), block_hashes=request.block_hashes
        )
        self._rankings[request.request_id] = ranking
        return ranking.replicas

    def on_routed(self, request: SimRequest, replica: str, now: float) -> None:
        ranking = self._rankings.pop(request.request_id)
        self.routing.on_routed(request.request_id, replica, ranking, request.output_tokens)

    def on_first_token(self, request: SimRequest) -> None:
        self.routing.on_first_token(request.request_id)

    def on_finished(self, request: SimRequest) -> None:
        self.routing.on_finished(request.request_id)

    def on_update(self, update: ReplicaUpdate) -> None:
        self.routing.apply_update(update)

    def remove_replica(self, replica: str) -> None:
        self.routing.remove_replica(replica)

    def admission_retry_after_s(
        self, replicas: list[str], max_replicas: int | None, max_queue_wait_s: float
    ) -> float | None:
        """KvAwareRequestRouter._refuse's decision: `admission_retry_after_s` over the
        replicas' least predicted wait (`KvAwareRouting.least_wait_s`)."""
        keys = sorted(replicas)
        least_wait_s = self.routing.least_wait_s(keys)
        return admission_retry_after_s(least_wait_s, len(keys), max_replicas, max_queue_wait_s)


class RoundRobinSimRouter(_Base):
    """RoundRobinRequestRouter's rule: sorted by id, starting one further each call."""

    def __init__(self) -> None:
        self._next = 0

    def rank(self, request: SimRequest, ongoing: Mapping[str, int], now: float) -> list[str]:
        ordered = sorted(ongoing)
        start = self._next % len(ordered)
        self._next += 1
        return ordered[start:] + ordered[:start]


class PowerOfTwoSimRouter(_Base):
    """Ray Serve's power-of-two choices over ongoing requests."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def rank(self, request: SimRequest, ongoing: Mapping[str, int], now: float) -> list[str]:
        ordered = sorted(ongoing)
        drawn = self.rng.sample(ordered, min(2, len(ordered)))
        drawn.sort(key=ongoing.__getitem__)  # stable: ties keep the draw's order
        rest = [r for r in ordered if r not in drawn]
        self.rng.shuffle(rest)
        return drawn + rest


class PrefixAffinitySimRouter(_Base):
    """Ray's PrefixCacheAffinityRouter over its PrefixTree, in-process (module doc)."""

    def __init__(self, rng: random.Random):
        from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import (
            PrefixTree,
        )

        self.tree = PrefixTree()
        self.fallback = PowerOfTwoSimRouter(rng)
        self._texts: dict[str, str] = {}

    def rank(self, request: SimRequest, ongoing: Mapping[str, int], now: float) -> list[str]:
        fallback = self.fallback.rank(request, ongoing, now)
        text = "".join(map(chr, request.prompt_token_ids))
        self._texts[request.request_id] = text
        matched, tenants = self.tree.prefix_match(text, sorted(ongoing))
        if len(matched) / len(text) < PREFIX_MATCH_RATE_THRESHOLD:
            tenants = self.tree.get_smallest_tenants()
        chosen = sorted(t for t in tenants or () if t in ongoing)
        if not chosen:
            return fallback
        chosen.sort(key=ongoing.__getitem__)
        return chosen + [r for r in fallback if r not in chosen]

    def on_routed(self, request: SimRequest, replica: str, now: float) -> None:
        self.tree.insert(self._texts.pop(request.request_id), replica, now)

    def add_replica(self, replica: str, now: float) -> None:
        self.tree.add_tenants([replica], now)

    def remove_replica(self, replica: str) -> None:
        self.tree.remove_tenants([replica])


def make_router(name: str, *, block_size: int, max_num_seqs: int, rng: random.Random) -> SimRouter:
    """The sim router called name (one of REQUEST_ROUTERS)."""
    if name == KV_AWARE:
        return KvAwareSimRouter(block_size, max_num_seqs, rng)
    if name == ROUND_ROBIN:
        return RoundRobinSimRouter()
    if name == POWER_OF_TWO:
        return PowerOfTwoSimRouter(rng)
    if name == PREFIX_AFFINITY:
        return PrefixAffinitySimRouter(rng)
    raise ValueError(f"router must be one of {', '.join(REQUEST_ROUTERS)}, got {name!r}")


# -- autoscaling -------------------------------------------------------------------------
@dataclass
class ServeDelay:
    """Serve's `_apply_delay_logic`: a new count is adopted once it has been wanted in the
    same direction for the delay, timed from the first consecutive such decision."""

    upscale_delay_s: float
    downscale_delay_s: float
    direction: int = 0  # >0: scale-ups wanted in a row, <0: scale-downs
    since: float | None = None

    def apply(self, desired: int, target: int, now: float) -> int:
        if desired == target:
            self.direction, self.since = 0, None
            return target
        up = desired > target
        if (self.direction > 0) != up or self.direction == 0:
            self.direction, self.since = (1 if up else -1), now
        if up:
            delay = self.upscale_delay_s
        else:
            delay = self.downscale_delay_s
            if target != 1:  # only 1 -> 0 may reach zero
                desired = max(1, desired)
        if now - self.since + DELAY_EPS_S >= delay:
            self.direction, self.since = 0, None
            return desired
        return target


class SimAutoscaler(Protocol):
    """An autoscaler: the fleet's target replica count at a tick, and why."""

    def decide(self, fleet: FleetState) -> tuple[int, str]: ...


@dataclass(frozen=True)
class FleetState:
    """The fleet as the autoscaler sees it at one tick."""

    now: float
    target: int  # serving + starting replicas wanted so far
    num_serving: int
    num_ongoing: int  # requests in flight at serving replicas
    num_waiting_at_callers: int  # requests held before any replica
    metrics: tuple[ReplicaMetrics, ...] = ()  # serving replicas' reports (slo only)


@dataclass
class SloSimAutoscaler:
    """The production `decide`, as SloAutoscalingPolicy runs inside Serve (module doc)."""

    config: SloPolicyConfig
    delay: ServeDelay
    state: PolicyState = field(default_factory=PolicyState)
    wants_metrics = True

    def decide(self, fleet: FleetState) -> tuple[int, str]:
        if fleet.num_serving == 0 and fleet.num_waiting_at_callers > 0:
            return max(1, fleet.target), "cold_start"  # Serve's fast path
        waiting = fleet.num_waiting_at_callers if fleet.num_serving == 0 else 0
        metrics = FleetMetrics(fleet.metrics, fleet.target, num_waiting_at_callers=waiting)
        decision = decide(metrics, self.config, self.state, fleet.now)
        self.state = decision.state
        config = self.config
        desired = min(max(decision.num_replicas, config.min_replicas), config.max_replicas)
        if fleet.num_serving == 0 and desired > 0:
            return desired, decision.reason
        return self.delay.apply(desired, fleet.target, fleet.now), decision.reason


@dataclass
class OngoingRequestsSimAutoscaler:
    """Ray Serve's default policy (module doc)."""

    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float
    delay: ServeDelay
    look_back_period_s: float = LOOK_BACK_PERIOD_S
    wants_metrics = False
    _window: deque = field(default_factory=deque)  # (time, total ongoing)

    def decide(self, fleet: FleetState) -> tuple[int, str]:
        total_now = fleet.num_ongoing + fleet.num_waiting_at_callers
        window = self._window
        window.append((fleet.now, total_now))
        while window and window[0][0] < fleet.now - self.look_back_period_s:
            window.popleft()
        total = sum(v for _, v in window) / len(window)
        if fleet.num_serving == 0:
            if total > 0:
                desired = max(1, fleet.target)  # cold start: no delay
                return self._bounded(desired), "cold_start"
            return self._bounded(fleet.target), "steady"
        desired = math.ceil(total / self.target_ongoing_requests)
        decided = self.delay.apply(desired, fleet.target, fleet.now)
        reason = "steady" if decided == fleet.target else "ongoing_requests"
        return self._bounded(decided), reason

    def _bounded(self, num: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, num))
