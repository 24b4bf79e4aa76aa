"""Ray Serve request routers for `LLMServer` deployments (config `serve.request_router`).

`KvAwareRequestRouter` (the default, `kv_aware`) sends each generation to the replica with
the least predicted time to first token (autoscale/routing_policy.py), from what it knows:
- which prefix blocks each replica holds: `ReplicaUpdate`s that come with the replica's
  step-stream messages (fed by the ingress through autoscale/feedback.py, a step after the
  blocks are stored) and, for replicas this process has not heard from lately, the
  snapshot in the replica's routing stats (Serve polls them every
  `request_routing_stats_period_s`);
- what it has sent each replica and not seen finish, counted synchronously here (at
  routing, first token and completion), so nothing piles onto one replica between stats;
- each replica's own step-time model, fitted from the step timings in the same updates.
The prompt must arrive as token ids (the ingress tokenizes before it calls the handle); a
text prompt is routed on load alone. Every candidate is scored (a full scan), the ranking
is handed to Serve best first, and a replica whose queue is full (max_ongoing_requests)
refuses and the next is tried (counted as `spilled`). While a candidate has no step-time
data yet (a replica just started), the choice falls back to power-of-two choices.
It never blocks the event loop: no Ray calls, no I/O, ~0.1 ms per decision (RESULTS.md).

Admission control (`serve.max_queue_wait_s`, autoscale/admission.py): when the model runs
its most replicas and every one's predicted wait is over the limit, the request is refused
here, before it reaches a replica: its pending future gets a `QueueWaitExceeded` (a
BackPressureError: HTTP 429 with Retry-After at the ingress), counted as `rejected`.

Calls other than `generate`: `step_stream` goes to the replica with the fewest step
streams this router opened (one per replica is what the ingress wants); the rest
(`model_info`, `stats`, ...) to the less loaded of two replicas drawn at random.

Several ingress replicas each run their own router with its own view: what one ingress
sent is invisible to the others until the replicas' updates show it (their events and
queues), so with N ingress replicas a burst can land N requests where one router would
have spread them. They converge through the same updates: every view is exact about the
caches within one routing-stats period.

`RoundRobinRequestRouter` (`round_robin`) cycles through the replicas in id order.
`PrefixAffinityRequestRouter` (`prefix_affinity`) is Ray Serve's `PrefixCacheAffinityRouter`
given our token-id prompts (each token one character of its prefix tree).
`PowerOfTwoRequestRouter` (`power_of_two`) is Ray Serve's default router as it is.
Every one registers its replica set with autoscale/feedback.py (`num_replicas`: the
ingress's scale-from-zero deadline).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
import uuid
from collections import Counter, OrderedDict
from typing import Any

from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
    PrefixCacheAffinityRouter,
)
from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.exceptions import BackPressureError
from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    ReplicaResult,
    RequestRouter,
    RunningReplica,
)

from autoscale import feedback
from autoscale.admission import admission_retry_after_s
from autoscale.kv_routing import KvAwareRouting, Ranking
from autoscale.replica_update import ReplicaUpdate
from autoscale.router_stats import ERROR, SPILLED, RouterStats

logger = logging.getLogger(__name__)

GENERATE = "generate"
STEP_STREAM = "step_stream"
ROUTING_STATS_KEY = "kv_routing"  # the ReplicaUpdate snapshot in LLMServer's routing stats
MAX_UNROUTED = 10_000  # decisions kept for requests not (yet) sent; the oldest drop first
CHARS_PER_TOKEN = 4  # to size a text prompt (no ids) for a load-only decision


def prompt_token_ids(pending: PendingRequest) -> list[int] | None:
    """The token ids of a generate call's prompt, or None when it is not token ids."""
    prompt = pending.kwargs.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt[:8]):
        return prompt
    return None


def _text_length(pending: PendingRequest) -> int:
    prompt = pending.kwargs.get("prompt")
    if isinstance(prompt, str):
        return len(prompt)
    messages = pending.kwargs.get("messages") or ()
    return sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))


def _max_tokens(pending: PendingRequest) -> int:
    """The generate call's max_tokens (0 when it gives none or no SamplingParams)."""
    params = pending.kwargs.get("params")
    value = getattr(params, "max_tokens", None)
    return value if isinstance(value, int) and value > 0 else 0


def _key(replica_id: ReplicaID) -> str:
    return replica_id.unique_id


class QueueWaitExceeded(BackPressureError):
    """Admission control refused a request (autoscale/admission.py): HTTP 429."""

    def __init__(self, least_wait_s: float, max_queue_wait_s: float, retry_after_s: float):
        super().__init__(0, 0, status_code=429, retry_after_s=retry_after_s)
        self.args = (least_wait_s, max_queue_wait_s, retry_after_s)  # pickles as itself
        self._message = (
            f"every replica's predicted queue wait (at least {least_wait_s:.1f}s) is over "
            f"serve.max_queue_wait_s ({max_queue_wait_s:g}s) and the model runs the most "
            "replicas it may"
        )


class RegisteredMixin:
    """Register the router's replica set with autoscale/feedback.py (num_replicas)."""

    def initialize_state(self, **kwargs: Any) -> None:
        feedback.register_router(self._deployment_id.name, self)
        super().initialize_state(**kwargs)


class ExactMatchMixin:
    """Give the chosen replica to the very request it was chosen for.

    Serve's base router matches a choice to a pending request by internal request id, and
    calls made while serving one request (an HTTP request's several samples, its step
    stream) share that id: only the first of them is indexed, so the others are never
    matched and wait forever (its FIFO mixin sidesteps it by serving the oldest request
    instead, which would hand a KV-aware choice to another prompt). Each call has its own
    metadata object: match on that.
    NOTE: overrides Serve's private `_fulfill_next_pending_request` (pinned Ray 2.60; the
    tests cover several samples of one request)."""

    def _fulfill_next_pending_request(
        self, replica: RunningReplica, request_metadata: Any = None
    ) -> None:
        for pending in self._pending_requests_to_fulfill:
            if pending.metadata is request_metadata and not pending.future.done():
                self._cancel_routing_task_for_pending_request(pending)
                self._record_queue_wait_time(pending)
                pending.future.set_result(replica)
                self._remove_pending_request_from_indices(pending)
                return
        super()._fulfill_next_pending_request(replica, request_metadata)


class KvAwareRequestRouter(ExactMatchMixin, RequestRouter):
    """Least predicted TTFT over every replica, from their prefix caches, the work sent to
    them and their own step times (module doc).

    Its state is touched on the router's event loop only: what the caller reports (from
    its own loop) and request completions (from Ray's threads) are handed over to it."""

    def initialize_state(
        self,
        block_size: int = 16,
        max_num_seqs: int | None = None,
        seed: int | None = None,
        max_queue_wait_s: float | None = None,
        max_replicas: int | None = None,
        **_: Any,
    ) -> None:
        """Called by Serve with `request_router_kwargs` (autoscale/router_choice.py).
        max_queue_wait_s, max_replicas: admission control (module doc); None: none."""
        feedback.register_router(self._deployment_id.name, self)
        self.routing = KvAwareRouting(block_size, random.Random(seed), max_num_seqs)
        self.max_queue_wait_s = max_queue_wait_s
        self.max_replicas = max_replicas
        self.stats = RouterStats()
        self._rng = random.Random(seed)
        self._unrouted: OrderedDict[int, tuple[PendingRequest, Ranking]] = OrderedDict()
        self._predicted: dict[str, float] = {}  # request id -> predicted TTFT at the best
        self._step_streams: Counter = Counter()  # replica -> step streams open
        self._seen_stats: dict[str, ReplicaUpdate] = {}  # replica -> last snapshot applied
        self._streamed: set[str] = set()  # replicas heard from since their last snapshot
        feedback.register(self._deployment_id.name, self)

    # -- choosing -----------------------------------------------------------------------
    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        start = time.perf_counter()
        by_key = {_key(r.replica_id): r for r in candidate_replicas}
        keys = sorted(by_key)  # a stable order: ties go to the first (routing_policy)
        if not keys:
            return []
        method = pending_request.metadata.call_method if pending_request else None
        if pending_request is not None:
            # Every candidate is ranked each time: if all refuse, the next try waits
            # (Serve's backoff) rather than spinning on the router's event loop.
            pending_request.routing_context.should_backoff = True
        if method == GENERATE:
            if self._refuse(pending_request, keys):
                return [[by_key[k]] for k in keys]  # Serve sees the request done: no send
            try:
                self._sync_routing_stats(candidate_replicas)
                order = self._rank_generate(pending_request, keys)
            except Exception:  # a fault here must not strand the request: route on load
                logger.exception("KV-aware routing failed; routing on load alone")
                order = self._least_loaded_of_two(keys)
                self.stats.decisions[ERROR] += 1
            self.stats.decision_latency_s.observe(time.perf_counter() - start)
        elif method == STEP_STREAM:
            order = sorted(keys, key=lambda k: (self._step_streams[k], self._rng.random()))
        else:
            order = self._least_loaded_of_two(keys)
        return [[by_key[k]] for k in order]

    def _refuse(self, pending: PendingRequest, keys: list[str]) -> bool:
        """Admission control (module doc): fail the request's future and say so."""
        if self.max_queue_wait_s is None:
            return False
        least_wait_s = self.routing.least_wait_s(keys)
        retry_after_s = admission_retry_after_s(
            least_wait_s, len(keys), self.max_replicas, self.max_queue_wait_s
        )
        if retry_after_s is None or pending.future.done():
            return False
        pending.future.set_exception(
            QueueWaitExceeded(least_wait_s, self.max_queue_wait_s, retry_after_s)
        )
        if self._pending_requests_by_id.get(pending.metadata.internal_request_id) is pending:
            self._remove_pending_request_from_indices(pending)
        self.stats.rejected += 1
        return True

    def _rank_generate(self, pending: PendingRequest, keys: list[str]) -> list[str]:
        ids = prompt_token_ids(pending)
        estimate = None if ids is not None else _text_length(pending) // CHARS_PER_TOKEN
        # images count in the prefix hashes as the engine counts them (MultiModalInput)
        multi_modal = pending.kwargs.get("multi_modal")
        ranking = self.routing.rank(ids, keys, num_prompt_tokens=estimate, multi_modal=multi_modal)
        self._unrouted[id(pending)] = (pending, ranking)
        while len(self._unrouted) > MAX_UNROUTED:
            self._unrouted.popitem(last=False)
        return ranking.replicas

    def _least_loaded_of_two(self, keys: list[str]) -> list[str]:
        drawn = self._rng.sample(keys, min(2, len(keys)))
        drawn.sort(key=lambda k: self.routing.inflight.load(k).num_requests)
        return drawn + [k for k in keys if k not in drawn]

    # -- what Serve reports -------------------------------------------------------------
    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult
    ) -> None:
        """The replica accepted the request (Serve's rejection protocol, on by default)."""
        key = _key(replica_id)
        if pending_request.metadata.call_method == STEP_STREAM:
            self._step_streams[key] += 1
            self._when_done(result, self._on_step_stream_done, key)
            return
        entry = self._unrouted.pop(id(pending_request), None)
        if entry is None or entry[0] is not pending_request:
            return
        ranking = entry[1]
        request_id = pending_request.kwargs.get("request_id") or f"call-{uuid.uuid4().hex}"
        if request_id in self.routing.inflight:
            return  # an id reused while in flight: the replica refuses it anyway
        self.routing.on_routed(request_id, key, ranking, _max_tokens(pending_request))
        self._when_done(result, self._on_generate_done, request_id)
        decision = ranking.decision
        if key == decision.replica:
            self.stats.decisions[decision.reason] += 1
            if decision.predicted_ttft_s is not None:
                self._predicted[request_id] = decision.predicted_ttft_s
        else:
            self.stats.decisions[SPILLED] += 1

    def _when_done(self, result: ReplicaResult, callback, arg: str) -> None:
        """Run callback(arg) on the router's loop once the call ends, however it ends."""
        loop = self._event_loop
        result.add_done_callback(lambda *_: loop.call_soon_threadsafe(callback, arg))

    def _on_generate_done(self, request_id: str) -> None:
        self.routing.on_finished(request_id)
        self._predicted.pop(request_id, None)

    def _on_step_stream_done(self, key: str) -> None:
        if self._step_streams[key] <= 1:
            self._step_streams.pop(key, None)
        else:
            self._step_streams[key] -= 1

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        """Serve's new replica list (also sent when their routing stats change)."""
        super().update_replicas(replicas)
        alive = {_key(r.replica_id) for r in replicas}
        for key in self._known_replicas() - alive:
            self._forget(key)
        self._sync_routing_stats(replicas)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._forget(_key(replica_id))

    # -- what the caller reports (autoscale/feedback.py), from the caller's thread ------
    def on_first_token(self, request_id: str, ttft_s: float) -> None:
        self._event_loop.call_soon_threadsafe(self._first_token, request_id, ttft_s)

    def on_replica_update(self, update: ReplicaUpdate) -> None:
        self._event_loop.call_soon_threadsafe(self._replica_update, update)

    def _first_token(self, request_id: str, ttft_s: float) -> None:
        self.routing.on_first_token(request_id)
        predicted = self._predicted.pop(request_id, None)
        if predicted is not None:
            self.stats.predicted_ttft_s.observe(predicted)
            self.stats.observed_ttft_s.observe(ttft_s)

    def _replica_update(self, update: ReplicaUpdate) -> None:
        if update.replica not in self._alive_keys():
            return  # a replica already gone: its late message must not bring it back
        self.routing.apply_update(update)
        self._streamed.add(update.replica)
        self.stats.cached_blocks[update.replica] = self.routing.index.num_blocks(update.replica)

    # -- helpers ------------------------------------------------------------------------
    def _sync_routing_stats(self, replicas: list[RunningReplica]) -> None:
        """Apply each replica's routing-stats snapshot once (steps only from replicas
        whose timings did not come with a step-stream update since the last one)."""
        for replica in replicas:
            stats = replica.routing_stats
            update = stats.get(ROUTING_STATS_KEY) if stats else None
            key = _key(replica.replica_id)
            if update is None or self._seen_stats.get(key) is update:
                continue
            self._seen_stats[key] = update
            with_steps = key not in self._streamed
            self._streamed.discard(key)
            self.routing.apply_update(update._replace(replica=key), with_steps=with_steps)
            self.stats.cached_blocks[key] = self.routing.index.num_blocks(key)

    def _alive_keys(self) -> set[str]:
        return {_key(replica_id) for replica_id in self.curr_replicas}

    def _known_replicas(self) -> set[str]:
        return (
            set(self.routing.index.replicas)
            | set(self.routing.step_times)
            | set(self._seen_stats)
            | set(self.stats.cached_blocks)
        )

    def _forget(self, key: str) -> None:
        self.routing.remove_replica(key)
        self._seen_stats.pop(key, None)
        self._streamed.discard(key)
        self._step_streams.pop(key, None)
        self.stats.cached_blocks.pop(key, None)


class RoundRobinRequestRouter(ExactMatchMixin, RequestRouter):
    """Each call to the next replica in id order (the next ones after it, if it is full)."""

    def initialize_state(self, **_: Any) -> None:
        feedback.register_router(self._deployment_id.name, self)
        self._next = 0

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        ordered = sorted(candidate_replicas, key=lambda r: _key(r.replica_id))
        if not ordered:
            return []
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True
        start = self._next % len(ordered)
        self._next += 1
        return [[r] for r in ordered[start:] + ordered[:start]]


class PowerOfTwoRequestRouter(RegisteredMixin, PowerOfTwoChoicesRequestRouter):
    """Ray Serve's default router, unchanged but for its registration (module doc)."""


class PrefixAffinityRequestRouter(RegisteredMixin, ExactMatchMixin, PrefixCacheAffinityRouter):
    """Ray Serve's `PrefixCacheAffinityRouter` (a prefix tree of characters, power-of-two
    choices above a queue imbalance) over our generate calls: a token-id prompt becomes
    one character per token, so its tree matches token prefixes. It reads the prompt from
    positional arguments, and ours are keywords: generate calls reach it with one
    placeholder argument; other calls go to power-of-two choices.
    NOTE: it asks its prefix-tree actor with `ray.get` inside the event loop (Ray's code)."""

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if pending_request is None or pending_request.metadata.call_method != GENERATE:
            return await PowerOfTwoChoicesRequestRouter.choose_replicas(
                self, candidate_replicas, pending_request
            )
        return await super().choose_replicas(candidate_replicas, _with_args(pending_request))

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult
    ) -> None:
        if pending_request.metadata.call_method == GENERATE:
            super().on_request_routed(_with_args(pending_request), replica_id, result)

    def _extract_text_from_request(self, pending_request: PendingRequest) -> str:
        ids = prompt_token_ids(pending_request)
        if ids is not None:
            return "".join(map(chr, ids))
        prompt = pending_request.kwargs.get("prompt")
        if isinstance(prompt, str):
            return prompt
        return self._normalize_prompt_to_string(pending_request.kwargs.get("messages") or [])


def _with_args(pending: PendingRequest) -> PendingRequest:
    """The same request (same future) with a placeholder positional argument."""
    if pending.args:
        return pending
    return dataclasses.replace(pending, args=[GENERATE])
