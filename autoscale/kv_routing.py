"""A router's state for KV-cache-aware routing, composed of the small pieces it needs.

`KvAwareRouting` keeps, per replica, the mirrored prefix cache (`PrefixIndex`), the work
in flight (`InFlight`) and a step-time model (`StepTimeModel`); `choose` hashes a prompt
with the engine's own block hash, builds each candidate's view and applies the pure
policy (autoscale/routing_policy.py), then counts the decision in at once. It does no I/O
and never blocks: a Ray Serve request router calls it from its async `choose_replicas`,
and feeds it events, snapshots, step observations and completions as they arrive.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence

from autoscale.inflight import InFlight
from autoscale.prefix_index import PrefixIndex
from autoscale.routing_policy import (
    ReplicaView,
    RoutingDecision,
    choose_replica,
    num_cached_tokens,
)
from autoscale.step_time import StepTimeModel
from engine import prefix_block_hashes


class KvAwareRouting:
    """Prefix index, in-flight counts and step-time models of a set of replicas."""

    def __init__(self, block_size: int, rng: random.Random | None = None):
        if block_size < 1:
            raise ValueError(f"block_size must be a positive number of tokens, got {block_size}")
        self.block_size = block_size
        self.rng = rng or random.Random()
        self.index = PrefixIndex()
        self.inflight = InFlight()
        self.step_times: dict[Hashable, StepTimeModel] = {}

    def step_time(self, replica: Hashable) -> StepTimeModel:
        """The replica's step-time model, created (at its prior) on first use."""
        model = self.step_times.get(replica)
        if model is None:
            model = self.step_times[replica] = StepTimeModel()
        return model

    def remove_replica(self, replica: Hashable) -> None:
        """The replica is gone (dead or replaced): forget its cache, work and steps."""
        self.index.remove_replica(replica)
        self.inflight.remove_replica(replica)
        self.step_times.pop(replica, None)

    def choose(
        self,
        request_id: Hashable,
        prompt_token_ids: Sequence[int],
        replicas: Sequence[Hashable],
    ) -> RoutingDecision:
        """Pick one of replicas for the prompt and count the request in flight there.
        The caller reports `inflight.on_first_token` / `on_finished` for request_id."""
        n = len(prompt_token_ids)
        if n < 1:
            raise ValueError("prompt_token_ids must hold at least one token, got none")
        hashes = prefix_block_hashes(
            prompt_token_ids, self.block_size, num_blocks=(n - 1) // self.block_size
        )
        matched = self.index.match(hashes) if hashes else {}
        views = [self._view(replica, matched.get(replica, 0)) for replica in replicas]
        decision = choose_replica(views, n, self.block_size, self.rng)
        cached = num_cached_tokens(matched.get(decision.replica, 0), n, self.block_size)
        self.inflight.on_routed(decision.replica, request_id, n - cached)
        return decision

    def _view(self, replica: Hashable, num_cached_blocks: int) -> ReplicaView:
        load = self.inflight.load(replica)
        return ReplicaView(
            replica,
            num_cached_blocks=num_cached_blocks,
            num_requests=load.num_requests,
            num_queued_tokens=load.num_queued_tokens,
            num_decoding=load.num_decoding,
            step_time=self.step_times.get(replica),
        )
