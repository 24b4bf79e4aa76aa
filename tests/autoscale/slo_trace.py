"""A trace runner for the SLO policy: virtual time, a platform that starts and removes
replicas like Serve, and synthetic replica metrics from a fixed per-replica capacity.

Every replica has the same step times (`FIT`): at the test SLO (tpot 50 ms, ttft 1 s) it
prefills 10k tokens/s or decodes 800 tokens/s. Load is given in replicas fully busy: a load
of L asks L x 2,500 prompt tokens/s and L x 600 output tokens/s (0.25 + 0.75 of a replica
per unit). Each tick the new work goes to the serving replicas with the least work queued
(water-filling, as a least-wait router would); what one cannot do waits in its queue,
prompt and output tokens both (at the callers while no replica serves, then handed to the
first replicas to serve), and the latency, KV and queue figures it reports rise with its
utilization.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from autoscale.slo_config import SloPolicyConfig
from autoscale.slo_policy import Decision, FleetMetrics, PolicyState, ReplicaMetrics, decide
from autoscale.step_time import StepTimePrior

FIT = StepTimePrior(0.0, 1e-4, 0.01, 0.001)
PREFILL_TOKENS_S = 10_000.0
DECODE_TOKENS_S = 800.0
PROMPT_PER_LOAD = 2_500.0  # prompt tokens/s per unit of load (0.25 of a replica)
OUTPUT_PER_LOAD = 600.0  # output tokens/s per unit of load (0.75 of a replica)
STARTUP_S = 60.0


def config(**overrides) -> SloPolicyConfig:
    settings = dict(
        min_replicas=1,
        max_replicas=8,
        ttft_s=1.0,
        tpot_s=0.05,
        downscale_delay_s=120.0,
        demand_window_s=300.0,
        forecast_window_s=60.0,
        rate_window_s=5.0,  # one tick: the loads here are exact, not bursty
        default_startup_s=STARTUP_S,
    )
    return SloPolicyConfig(**(settings | overrides))


@dataclass
class SimReplica:
    replica_id: str
    ready_at: float  # inf: stuck starting forever
    prompt_total: float = 0.0
    generated_total: float = 0.0
    queued: float = 0.0  # prompt tokens waiting
    queued_output: float = 0.0  # the output tokens their requests will ask for
    utilization: float = 0.0  # over the last tick

    def is_serving(self, now: float) -> bool:
        return self.ready_at <= now


@dataclass
class Step:
    t: float
    before: int  # the platform's target when the policy decided
    num_replicas: int  # the decision
    reason: str
    num_serving: int  # replicas that served during the tick before the decision
    utilization: float  # the busiest serving replica's over that tick (0: none)
    decision: Decision


@dataclass
class Trace:
    """Runs `decide` every `tick_s` of virtual time against a simulated fleet."""

    load: Callable[[float], float]  # t -> replicas fully busy
    config: SloPolicyConfig = field(default_factory=config)
    num_replicas: int = 1  # the platform's target; these start already serving
    tick_s: float = 5.0
    now: float = 0.0
    queued_at_callers: float = 0.0  # load-seconds held while no replica serves
    steps: list[Step] = field(default_factory=list)
    state: PolicyState = field(default_factory=PolicyState)
    replicas: list[SimReplica] = field(default_factory=list)
    stuck_starts: int = 0  # this many next replicas never finish starting
    _next_id: int = 0

    def __post_init__(self) -> None:
        for _ in range(self.num_replicas):
            self.replicas.append(SimReplica(self._new_id(), ready_at=-STARTUP_S))

    def _new_id(self) -> str:
        self._next_id += 1
        return f"r{self._next_id}"

    def kill(self, replica_id: str) -> None:
        """The replica dies; the platform refills its slot next tick (as Serve does)."""
        self.replicas = [r for r in self.replicas if r.replica_id != replica_id]

    def run_until(self, end: float) -> list[Step]:
        """Ticks until `end`; the steps taken."""
        first = len(self.steps)
        while self.now + self.tick_s <= end + 1e-9:
            self._tick()
        return self.steps[first:]

    def _reconcile(self) -> None:
        while len(self.replicas) < self.num_replicas:
            ready_at = math.inf if self.stuck_starts else self.now + STARTUP_S
            self.stuck_starts = max(0, self.stuck_starts - 1)
            self.replicas.append(SimReplica(self._new_id(), ready_at))
        while len(self.replicas) > self.num_replicas:
            starting = [r for r in self.replicas if not r.is_serving(self.now)]
            self.replicas.remove((starting or self.replicas)[-1])

    def _tick(self) -> None:
        self._reconcile()
        dt, self.now = self.tick_s, self.now + self.tick_s
        serving = [r for r in self.replicas if r.is_serving(self.now - dt)]
        load = self.load(self.now)
        if not serving:
            self.queued_at_callers += load * dt
        shares = _fill(
            [r.queued / PREFILL_TOKENS_S + r.queued_output / DECODE_TOKENS_S for r in serving],
            load * dt + self.queued_at_callers,
        )
        for r, new in zip(serving, shares, strict=True):
            prompt = PROMPT_PER_LOAD * new + r.queued
            output = OUTPUT_PER_LOAD * new + r.queued_output
            needed_s = prompt / PREFILL_TOKENS_S + output / DECODE_TOKENS_S
            done = min(1.0, dt / needed_s) if needed_s > 0 else 1.0
            r.utilization = needed_s / dt
            r.queued, r.queued_output = prompt * (1 - done), output * (1 - done)
            r.prompt_total += prompt * done
            r.generated_total += output * done
        if serving:
            self.queued_at_callers = 0.0
        fleet = FleetMetrics(
            tuple(self._metrics(r) for r in serving),
            target_num_replicas=self.num_replicas,
            num_waiting_at_callers=int(self.queued_at_callers > 0),
        )
        decision = decide(fleet, self.config, self.state, self.now)
        before, self.num_replicas = self.num_replicas, decision.num_replicas
        self.state = decision.state
        self.steps.append(
            Step(
                self.now,
                before,
                decision.num_replicas,
                decision.reason,
                len(serving),
                max((r.utilization for r in serving), default=0.0),
                decision,
            )
        )

    def _metrics(self, r: SimReplica) -> ReplicaMetrics:
        busy, over = min(r.utilization, 1.0), max(r.utilization - 1.0, 0.0)
        return ReplicaMetrics(
            r.replica_id,
            at=self.now,
            prompt_tokens_total=int(r.prompt_total),
            generated_tokens_total=int(r.generated_total),
            num_queued_prompt_tokens=int(r.queued),
            num_waiting=int(r.queued > 0),
            num_running=int(r.utilization > 0) * 4,
            kv_usage=min(1.0, 0.8 * r.utilization),
            ttft_p95_s=(0.3 * busy + over) * self.config.ttft_s + r.queued / PREFILL_TOKENS_S,
            tpot_p95_s=(0.5 + 0.4 * busy + over) * self.config.tpot_s,
            step_time=FIT,
            startup_s=STARTUP_S,
        )


def _fill(backlogs_s: list[float], work_s: float) -> list[float]:
    """Work (load-seconds) for each replica, filling the least backlogged first."""
    order = sorted(range(len(backlogs_s)), key=lambda i: backlogs_s[i])
    level, shares = 0.0, [0.0] * len(backlogs_s)
    for k in range(len(order)):
        below = [backlogs_s[i] for i in order[: k + 1]]
        level = (work_s + sum(below)) / len(below)
        if k + 1 == len(order) or level <= backlogs_s[order[k + 1]]:
            break
    for i in order:
        shares[i] = max(0.0, level - backlogs_s[i])
    return shares


def direction_changes(steps: list[Step]) -> int:
    """How many times the target turned from growing to shrinking or back."""
    signs = [s.num_replicas > s.before for s in steps if s.num_replicas != s.before]
    return sum(a != b for a, b in itertools.pairwise(signs))


def changes(steps: list[Step]) -> list[tuple[float, int, str]]:
    """(t, new target, reason) of every step that changed the target."""
    return [(s.t, s.num_replicas, s.reason) for s in steps if s.num_replicas != s.before]
