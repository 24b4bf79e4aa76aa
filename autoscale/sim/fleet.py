"""The fleet's event loop in virtual time: arrivals, replica steps, routing, autoscaling,
start-up and drain.

Global events sit in a heap ordered by (time, kind priority, sequence number): arrivals
(taken from the trace in order), autoscaling ticks (every `autoscaling_period_s`), fleet
samples (every `sample_period_s`), replicas becoming ready, cold-start deadlines and
drain timeouts. Replica steps are not global events: between two global events nothing
one replica does changes another's steps, so before handling an event at t every
replica advances on its own to t (`SimReplica.advance_to`: each step ends, its
bookkeeping runs, the next starts at once; a decode run is kept across calls, so a call
that covers one step costs one step; an idle replica sleeps until a request arrives).
The one exception is a request held at the caller: it goes to the first replica to free
a slot, so while any is held the replicas advance in global order of their step ends,
one step at a time, and a finished request lets the held ones try again at that instant
(after that replica's next step has started, like an arrival).

An arrival at t:
1. its prompt must fit (shorter than max_model_len) or it is rejected, as the engine
   rejects it;
2. the router sees the replicas' updates from the steps that ended by t -
   publish_delay_s (production streams one per step, so 0 by default);
3. admission control (`max_queue_wait_s` set, some replica serving): the router's
   production decision (`SimRouter.admission_retry_after_s`: for kv_aware,
   autoscale.admission.admission_retry_after_s over KvAwareRouting.least_wait_s of the
   serving replicas, their number and `max_replicas`) may refuse it: rejected. Production
   asks again each time Serve retries a request every replica refused; the simulator
   asks once, on arrival;
4. the router ranks the serving replicas; the first with fewer than
   max_ongoing_requests requests takes it (Serve's rejection protocol), else it waits at
   the caller (FIFO), or is rejected when max_queued_requests are already waiting. One
   that waits while no replica serves is rejected `cold_start_timeout_s` after its
   arrival unless one serves by then (deployments/cold_start.py: a 503); once one does,
   it waits like any other;
5. the replica's engine takes it and, if idle, starts a step at t.

An autoscaling tick asks the policy for a target (autoscale/sim/policies.py). Above the
current one, new replicas start: they cost replica-seconds from now and serve after
startup_s (load + warm-up). Below it, starting replicas are cancelled first (newest
first), then serving ones are drained (fewest ongoing requests, then newest): a draining
replica takes no new request, the router forgets it, and it stops when its last request
finishes, or `drain_timeout_s` after its removal (Serve's graceful_shutdown_timeout_s),
whichever comes first; requests still on it then are lost (records with no finish,
counted in stats["num_lost_in_drain"]). Every target change is a scale event.

Equal times: ready replicas first, then arrivals, ticks, samples, cold-start deadlines,
drain timeouts; a step that ends at t ends before an arrival at t is seen (the arrival
waits for the next step), and a request that finishes at a drain timeout completes.

Idle stretches cost nothing and decode runs are collapsed by the replicas (`SimReplica`,
`collapse`); `collapse=False` gives the identical run step by step.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from autoscale.kv_routing import prompt_block_hashes
from autoscale.sim.policies import FleetState, SimAutoscaler, SimRouter
from autoscale.sim.records import FleetSample, RequestRecord
from autoscale.sim.replica import SimReplica, SimRequest, StepOutcome
from autoscale.sim.step_cost import StepCost
from autoscale.sim.trace import TraceRequest, prompt_token_ids
from engine.config import EngineConfig
from engine.prefix_hash import prefix_block_hashes

READY, ARRIVAL, TICK, SAMPLE, DEADLINE, DRAIN_END = range(6)  # priorities at equal times


@dataclass(frozen=True)
class FleetConfig:
    """How the simulated fleet runs (times in virtual seconds)."""

    engine: EngineConfig  # max_model_len resolved
    num_kv_blocks: int  # per replica, padding block included (replica.kv_cache_blocks)
    vocab_size: int  # for the trace's prompt token ids
    initial_replicas: int = 1  # serving at time 0
    startup_s: float = 0.0  # a new replica's load + warm-up before it serves
    max_ongoing_requests: int = 64  # per replica (serve.max_ongoing_requests)
    max_queued_requests: int | None = None  # at the caller; None: no limit
    publish_delay_s: float = 0.0  # the router sees a step's update this long after it
    autoscaling_period_s: float = 1.0
    sample_period_s: float = 1.0
    collapse: bool = True
    # Admission control (serve.max_queue_wait_s; the kv_aware router only); None: none.
    max_queue_wait_s: float | None = None
    max_replicas: int | None = None  # the most replicas the model may run (admission)
    cold_start_timeout_s: float | None = None  # serve.cold_start_timeout_s; None: no bound
    drain_timeout_s: float | None = None  # serve.drain_timeout_s; None: no bound

    def __post_init__(self) -> None:
        if self.initial_replicas < 0:
            raise ValueError(f"initial_replicas must be >= 0, got {self.initial_replicas}")
        for name in ("startup_s", "publish_delay_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {getattr(self, name)}")
        for name in ("autoscaling_period_s", "sample_period_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.max_ongoing_requests < 1:
            raise ValueError(f"max_ongoing_requests must be >= 1, got {self.max_ongoing_requests}")
        for name in ("max_queue_wait_s", "cold_start_timeout_s", "drain_timeout_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 seconds or None, got {value}")
        if self.max_replicas is not None and self.max_replicas < 1:
            raise ValueError(f"max_replicas must be >= 1 or None, got {self.max_replicas}")


class ScaleEvent(NamedTuple):
    time_s: float
    from_replicas: int
    to_replicas: int
    reason: str


@dataclass
class _Slot:
    """A replica's life in the fleet."""

    replica: SimReplica
    started_s: float  # when it was asked for (cards held from here)
    ready_s: float
    state: str = "starting"  # starting -> serving -> draining -> stopped
    stopped_s: float | None = None


@dataclass
class FleetResult:
    records: list[RequestRecord]
    samples: list[FleetSample]
    scale_events: list[ScaleEvent]
    duration_s: float
    replica_seconds: float
    stats: dict = field(default_factory=dict)


class Fleet:
    """N simulated replicas behind a router, sized by an autoscaler (module doc)."""

    def __init__(
        self,
        config: FleetConfig,
        cost: StepCost,
        router: SimRouter,
        autoscaler: SimAutoscaler | None = None,
    ):
        self.config = config
        self.cost = cost
        self.router = router
        self.autoscaler = autoscaler
        self.slots: dict[str, _Slot] = {}
        self.serving: dict[str, SimReplica] = {}  # by name, in the order they got ready
        self._active: dict[str, SimReplica] = {}  # serving and draining: the ones that step
        self.target = 0
        self.held: deque[SimRequest] = deque()  # at the caller
        self.scale_events: list[ScaleEvent] = []
        self.samples: list[FleetSample] = []
        self._events: list = []
        self._seq = itertools.count()
        self._names = (f"replica-{i:03d}" for i in itertools.count())
        self._done: list[SimRequest] = []
        self._rejected: list[SimRequest] = []
        self._lost: list[SimRequest] = []  # on a replica stopped at its drain timeout
        self._cold: set[SimRequest] = set()  # held under the cold-start bound
        self._num_refused = 0  # by admission control
        self._num_cold_start_timeouts = 0
        self._num_routed = 0
        self._num_held = 0
        self._prefix_ids: dict[tuple[str, int], list[int]] = {}
        self._prefix_hashes: dict[tuple[str, int], list[int]] = {}
        self.now = 0.0

    # -- running ------------------------------------------------------------------------
    def run(self, trace: Sequence[TraceRequest]) -> FleetResult:
        """Run the trace to its last completion. Python's cyclic garbage collector is
        paused meanwhile (and restored after): a run makes no reference cycles step by
        step, and collections that walk its large long-lived state (prompts, block
        tables, hash sets) took a fifth to a third of its time."""
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run(trace)
        finally:
            if was_enabled:
                gc.enable()

    def _run(self, trace: Sequence[TraceRequest]) -> FleetResult:
        cfg = self.config
        for _ in range(cfg.initial_replicas):
            self._start_replica(0.0, ready_now=True)
        self.target = cfg.initial_replicas
        if self.autoscaler is not None:
            self._push(cfg.autoscaling_period_s, TICK)
        self._push(0.0, SAMPLE)
        next_index, num = 0, len(trace)
        while True:
            next_arrival = trace[next_index].arrival_s if next_index < num else math.inf
            next_event = self._events[0][0] if self._events else math.inf
            if next_index >= num and not self._has_work():
                break
            t = min(next_arrival, next_event)
            if t == math.inf:
                break
            is_event_first = next_event < next_arrival or (
                next_event == next_arrival and self._events[0][1] < ARRIVAL
            )
            self._advance(t)
            self.now = t
            if is_event_first:
                _, kind, _, payload = heapq.heappop(self._events)
                self._handle(kind, payload, t)
            else:
                self._arrive(next_index, trace[next_index], t)
                next_index += 1
        return self._result(trace)

    def _has_work(self) -> bool:
        if any(r.has_work for r in self._active.values()) or self._cold:
            return True
        return bool(self.held) and (
            self.autoscaler is not None
            or any(s.state in ("starting", "serving") for s in self.slots.values())
        )

    def _push(self, t: float, kind: int, payload=None) -> None:
        heapq.heappush(self._events, (t, kind, next(self._seq), payload))

    def _handle(self, kind: int, payload, t: float) -> None:
        if kind == READY:
            self._on_ready(payload, t)
        elif kind == TICK:
            self._tick(t)
            self._push(t + self.config.autoscaling_period_s, TICK)
        elif kind == SAMPLE:
            self._sample(t)
            self._push(t + self.config.sample_period_s, SAMPLE)
        elif kind == DEADLINE:
            self._cold_start_timeout(payload)
        elif kind == DRAIN_END:
            self._drain_timeout(payload, t)

    # -- advancing replicas -------------------------------------------------------------
    def _advance(self, t: float) -> None:
        """Every replica to t (module doc)."""
        while self.held:
            replica = self._earliest_step_end(t)
            if replica is None:
                break
            end = replica.next_end_s
            replica.advance_to(end, self._on_outcome, stop_on_finish=True)
        for replica in list(self._active.values()):
            replica.advance_to(t, self._on_outcome)

    def _earliest_step_end(self, t: float) -> SimReplica | None:
        best, best_end = None, None
        for replica in self._active.values():
            end = replica.next_end_s
            if end is not None and end <= t and (best_end is None or end < best_end):
                best, best_end = replica, end
        return best

    def _on_outcome(self, outcome: StepOutcome) -> None:
        router = self.router
        for request in outcome.first_tokens:
            router.on_first_token(request)
        for request in outcome.finished:
            router.on_finished(request)
            self._done.append(request)
        if outcome.finished:
            name = outcome.finished[0].replica
            slot = self.slots[name]
            if slot.state == "draining" and not slot.replica.num_ongoing:
                self._stop(slot, outcome.end_s)
            if self.held:
                self._dispatch_held(outcome.end_s)

    # -- requests -----------------------------------------------------------------------
    def _arrive(self, index: int, item: TraceRequest, t: float) -> None:
        cfg = self.config
        ids = self._prompt_ids(index, item)
        request = SimRequest(index, f"req-{index}", item.arrival_s, ids, item.output_tokens)
        if len(ids) >= cfg.engine.max_model_len:
            self._rejected.append(request)  # the engine's PromptTooLongError
            return
        request.block_hashes = self._prompt_hashes(item, ids)
        if self._refuses(t):
            self._rejected.append(request)
            self._num_refused += 1
            return
        if self.held or not self._route(request, t):
            max_held = cfg.max_queued_requests
            if max_held is not None and len(self.held) >= max_held:
                self._rejected.append(request)
                return
            self.held.append(request)
            self._num_held += 1
            if not self.serving and cfg.cold_start_timeout_s is not None:
                self._cold.add(request)
                self._push(t + cfg.cold_start_timeout_s, DEADLINE, request)

    def _refuses(self, t: float) -> bool:
        """Admission control (module doc): the router's production decision."""
        cfg = self.config
        if cfg.max_queue_wait_s is None or not self.serving:
            return False
        if self.router.wants_updates:
            self._publish(t - cfg.publish_delay_s)
        retry_after_s = self.router.admission_retry_after_s(
            list(self.serving), cfg.max_replicas, cfg.max_queue_wait_s
        )
        return retry_after_s is not None

    def _cold_start_timeout(self, request: SimRequest) -> None:
        """No replica served within cold_start_timeout_s of the request's arrival."""
        if request not in self._cold:
            return
        self._cold.discard(request)
        self.held.remove(request)
        self._rejected.append(request)
        self._num_cold_start_timeouts += 1

    def _prompt_ids(self, index: int, item: TraceRequest) -> list[int]:
        """trace.prompt_token_ids, with each prefix group's ids drawn once: the prompt is
        the group's prefix ids, then ids of its own (trace.py)."""
        vocab = self.config.vocab_size
        if item.prefix_id is None:
            return prompt_token_ids(item, index, vocab)
        key = (item.prefix_id, item.prefix_tokens)
        prefix = self._prefix_ids.get(key)
        if prefix is None:
            group = TraceRequest(0.0, item.prefix_tokens, 1, *key)
            prefix = self._prefix_ids[key] = prompt_token_ids(group, 0, vocab)
        num_own = item.prompt_tokens - item.prefix_tokens
        if not num_own:
            return list(prefix)
        return prefix + prompt_token_ids(TraceRequest(0.0, num_own, 1), index, vocab)

    def _prompt_hashes(self, item: TraceRequest, ids: list[int]) -> tuple[int, ...]:
        """The prompt's block hashes (kv_routing.prompt_block_hashes, at the replicas'
        block size), with each prefix group's leading blocks hashed once: their hashes
        chain over the group's ids alone, which open every prompt of the group
        (`_prompt_ids`)."""
        bs = self.config.engine.block_size
        if item.prefix_id is None:
            return prompt_block_hashes(ids, bs)
        key = (item.prefix_id, item.prefix_tokens)
        group = self._prefix_hashes.get(key)
        if group is None:
            group = self._prefix_hashes[key] = prefix_block_hashes(self._prefix_ids[key], bs)
        num_blocks = (len(ids) - 1) // bs
        k = min(len(group), num_blocks)
        rest = prefix_block_hashes(
            ids[k * bs :], bs, num_blocks=num_blocks - k, parent=group[k - 1] if k else None
        )
        return (*group[:k], *rest)

    def _route(self, request: SimRequest, t: float) -> bool:
        """Give the request to the best serving replica with a free slot, if any."""
        if not self.serving:
            return False
        router = self.router
        if router.wants_updates:
            self._publish(t - self.config.publish_delay_s)
        limit = self.config.max_ongoing_requests
        ongoing = {name: r.num_ongoing for name, r in self.serving.items()}
        for name in router.rank(request, ongoing, t):
            replica = self.serving[name]
            if replica.num_ongoing < limit:
                router.on_routed(request, name, t)
                replica.add(request, t)
                replica.wake(t)
                self._num_routed += 1
                return True
        return False

    def _publish(self, t: float) -> None:
        for replica in self.serving.values():
            for update in replica.updates_until(t):
                self.router.on_update(update)

    def _dispatch_held(self, t: float) -> None:
        while self.held and self._route(self.held[0], t):
            self.held.popleft()

    # -- replicas -----------------------------------------------------------------------
    def _start_replica(self, t: float, ready_now: bool = False) -> _Slot:
        cfg = self.config
        name = next(self._names)
        replica = SimReplica(
            name,
            cfg.engine,
            cfg.num_kv_blocks,
            self.cost,
            startup_s=cfg.startup_s,
            publish=self.router.wants_updates,
            collapse=cfg.collapse,
        )
        ready_s = t if ready_now else t + cfg.startup_s
        slot = self.slots[name] = _Slot(replica, t, ready_s)
        if ready_now:
            self._on_ready(name, t)
        else:
            self._push(ready_s, READY, name)
        return slot

    def _on_ready(self, name: str, t: float) -> None:
        slot = self.slots[name]
        if slot.state != "starting":  # cancelled while starting
            return
        slot.state = "serving"
        self.serving[name] = self._active[name] = slot.replica
        self._cold.clear()  # held requests now wait like any other (no deadline)
        slot.replica.idle_since_s = t
        self.router.add_replica(name, t)
        if self.held:
            self._dispatch_held(t)

    def _stop(self, slot: _Slot, t: float) -> None:
        slot.state, slot.stopped_s = "stopped", t
        self._active.pop(slot.replica.name, None)

    def _drain_timeout(self, name: str, t: float) -> None:
        """The draining replica's drain_timeout_s is up: stop it; what it held is lost."""
        slot = self.slots[name]
        if slot.state != "draining":
            return
        self._lost.extend(slot.replica.stop())
        self._stop(slot, t)

    def _tick(self, t: float) -> None:
        autoscaler = self.autoscaler
        serving = list(self.serving.values())
        metrics = ()
        if getattr(autoscaler, "wants_metrics", False):
            metrics = tuple(r.metrics(t) for r in serving)
        state = FleetState(
            now=t,
            target=self.target,
            num_serving=len(serving),
            num_ongoing=sum(r.num_ongoing for r in serving),
            num_waiting_at_callers=len(self.held),
            metrics=metrics,
        )
        target, reason = autoscaler.decide(state)
        if target == self.target:
            return
        self.scale_events.append(ScaleEvent(t, self.target, target, reason))
        if target > self.target:
            for _ in range(target - self.target):
                self._start_replica(t)
        else:
            self._remove(self.target - target, t)
        self.target = target

    def _remove(self, count: int, t: float) -> None:
        starting = [s for s in self.slots.values() if s.state == "starting"]
        for slot in reversed(starting[-count:] if count else []):
            self._stop(slot, t)
            count -= 1
        if count <= 0:
            return
        order = sorted(
            (s for s in self.slots.values() if s.state == "serving"),
            key=lambda s: (s.replica.num_ongoing, -s.started_s, s.replica.name),
        )
        for slot in order[:count]:
            name = slot.replica.name
            slot.state = "draining"
            del self.serving[name]
            self.router.remove_replica(name)
            slot.replica.feed = None
            if not slot.replica.num_ongoing:
                self._stop(slot, t)
            elif self.config.drain_timeout_s is not None:
                self._push(t + self.config.drain_timeout_s, DRAIN_END, name)

    def _sample(self, t: float) -> None:
        serving = list(self.serving.values())
        num_starting = sum(1 for s in self.slots.values() if s.state == "starting")
        self.samples.append(
            FleetSample(
                t, len(serving), num_starting, self.target, tuple(r.kv_usage for r in serving)
            )
        )

    # -- results ------------------------------------------------------------------------
    def _result(self, trace: Sequence[TraceRequest]) -> FleetResult:
        finishes = [r.finish_s for r in self._done]
        end = max([*finishes, trace[-1].arrival_s if trace else 0.0])
        records = []
        for request in self._done:
            records.append(
                RequestRecord(
                    request.index,
                    request.arrival_s,
                    trace[request.index].prompt_tokens,
                    request.num_generated,
                    request.first_token_s,
                    request.finish_s,
                    replica=request.replica,
                    num_cached_tokens=request.num_cached_tokens,
                )
            )
        for request in self._lost:
            records.append(
                RequestRecord(
                    request.index,
                    request.arrival_s,
                    trace[request.index].prompt_tokens,
                    request.num_generated,
                    request.first_token_s,
                    None,
                    replica=request.replica,
                    num_cached_tokens=request.num_cached_tokens,
                )
            )
        for request in [*self._rejected, *self.held]:  # held to the end: never served
            item = trace[request.index]
            records.append(
                RequestRecord(
                    request.index, item.arrival_s, item.prompt_tokens, 0, None, None, rejected=True
                )
            )
        records.sort(key=lambda r: r.index)
        replica_seconds = sum(
            (s.stopped_s if s.stopped_s is not None else end) - s.started_s
            for s in self.slots.values()
        )
        replicas = [s.replica for s in self.slots.values()]
        stats = {
            "num_steps": sum(r.num_steps for r in replicas),
            "num_preemptions": sum(r.scheduler.num_preemptions for r in replicas),
            "num_prefix_hit_tokens": sum(r.block_manager.num_prefix_hits_tokens for r in replicas),
            "num_prefill_tokens": sum(r.num_prefill_tokens for r in replicas),
            "num_generated_tokens": sum(r.num_generated_tokens for r in replicas),
            "num_replicas_started": len(self.slots),
            "num_held_at_caller": self._num_held,
            "num_refused_by_admission": self._num_refused,
            "num_cold_start_timeouts": self._num_cold_start_timeouts,
            "num_lost_in_drain": len(self._lost),
            "busy_s": sum(r.busy_s for r in replicas),
        }
        return FleetResult(records, self.samples, self.scale_events, end, replica_seconds, stats)
