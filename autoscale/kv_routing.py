"""A router's state for KV-cache-aware routing, composed of the small pieces it needs.

`KvAwareRouting` keeps, per replica, the mirrored prefix cache (`PrefixIndex`), the work
in flight (`InFlight`), the prompts in flight (whose blocks the replica is computing and
will hold, before its events say so) and a step-time model (`StepTimeModel`). `rank`
hashes a prompt with the engine's own block hash, builds each candidate's view and
applies the pure policy (autoscale/routing_policy.py); a prompt's images (its
`MultiModalInput`) go into the hashes of the blocks they overlap, as the engine's do.
`on_routed` counts the request in where it was sent and `on_finished` out. `choose` does
both at once. It does no I/O and never blocks: a Ray Serve request router
(autoscale/serve_router.py) calls it from its async `choose_replicas` and feeds it
`ReplicaUpdate`s, first tokens and completions.

Prompts in flight count as cached on their replica: a burst of requests sharing a new
prefix goes where the first of them is computing it, instead of each landing on a replica
that has not seen it yet (the replica's stored events confirm it a step or two later).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Hashable, Sequence
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

from autoscale.inflight import InFlight
from autoscale.prefix_index import PrefixIndex
from autoscale.replica_update import ReplicaUpdate
from autoscale.routing_policy import (
    ReplicaView,
    RoutingDecision,
    predict_wait_s,
    rank_replicas,
)
from autoscale.step_time import StepTimeModel
from engine import prefix_block_hashes

if TYPE_CHECKING:
    from engine import MultiModalInput


class Ranking(NamedTuple):
    """The routing decision for one prompt and every candidate in order of preference,
    with the prompt tokens each would prefill (its uncached part) and the prompt's hashes."""

    decision: RoutingDecision
    replicas: list[Hashable]  # best first
    num_prefill_tokens: dict[Hashable, int]
    block_hashes: tuple[int, ...]


def prompt_block_hashes(
    prompt_token_ids: Sequence[int],
    block_size: int,
    multi_modal: MultiModalInput | None = None,
) -> tuple[int, ...]:
    """The hashes `KvAwareRouting.rank` looks a prompt up by: its leading full blocks but
    the one holding its last token (the engine always computes that one), with its images'
    hashes in the blocks they overlap."""
    n = len(prompt_token_ids)
    extra_keys = None
    if multi_modal is not None:
        extra_keys = multi_modal.block_extra_keys(n, block_size)
    return tuple(
        prefix_block_hashes(
            prompt_token_ids,
            block_size,
            num_blocks=(n - 1) // block_size,
            extra_keys=extra_keys,
        )
    )


class KvAwareRouting:
    """Prefix index, in-flight counts and step-time models of a set of replicas."""

    def __init__(
        self,
        block_size: int,
        rng: random.Random | None = None,
        max_num_seqs: int | None = None,
    ):
        """max_num_seqs: the rows a replica's engine batches (None: unbounded); requests
        routed beyond it wait for rows to free (autoscale/routing_policy.py)."""
        if block_size < 1:
            raise ValueError(f"block_size must be a positive number of tokens, got {block_size}")
        if max_num_seqs is not None and max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be at least 1 row, got {max_num_seqs}")
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.rng = rng or random.Random()
        self.index = PrefixIndex()
        self.inflight = InFlight()
        self.step_times: dict[Hashable, StepTimeModel] = {}
        self._computing: dict[Hashable, Counter] = {}  # replica -> hashes of prompts in flight
        self._hashes_of: dict[Hashable, tuple[Hashable, tuple[int, ...]]] = {}  # request ->

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
        self._computing.pop(replica, None)
        for request_id in [r for r, (rep, _) in self._hashes_of.items() if rep == replica]:
            del self._hashes_of[request_id]

    # -- feeding ------------------------------------------------------------------------
    def apply_update(self, update: ReplicaUpdate, with_steps: bool = True) -> None:
        """A replica's block events (or snapshot) and, with_steps, its step timings. A
        snapshot older than the events already applied is skipped, unless events were
        missed (the replica is stale: any snapshot makes it exact as of its number)."""
        replica = update.replica
        if update.snapshot is not None:
            known = self.index.next_seq(replica)
            if known is None or update.next_seq >= known or self.index.needs_snapshot(replica):
                self.index.apply_snapshot(replica, update.snapshot, update.next_seq)
        else:
            self.index.apply_events(replica, update.events, update.next_seq)
        if with_steps and update.steps:
            model = self.step_time(replica)
            for step in update.steps:
                if step.size >= 1:
                    model.observe(step.kind, step.size, step.seconds, step.num_context_tokens)

    # -- deciding -----------------------------------------------------------------------
    def rank(
        self,
        prompt_token_ids: Sequence[int] | None,
        replicas: Sequence[Hashable],
        num_prompt_tokens: int | None = None,
        multi_modal: MultiModalInput | None = None,
        block_hashes: Sequence[int] | None = None,
    ) -> Ranking:
        """Every candidate for the prompt, best first (counts nothing in). A prompt whose
        ids are unknown (None: a caller sent text) is ranked by load alone, as
        num_prompt_tokens tokens that no replica holds. `multi_modal`: the prompt's images,
        whose hashes go into the blocks they overlap, as the engine's do. `block_hashes`:
        the prompt's hashes when the caller has them already (`prompt_block_hashes`), so
        they are not computed again."""
        if prompt_token_ids is None:
            n, hashes = max(1, num_prompt_tokens or 1), ()
        else:
            n = len(prompt_token_ids)
            if n < 1:
                raise ValueError("prompt_token_ids must hold at least one token, got none")
            if block_hashes is not None:
                if len(block_hashes) != (n - 1) // self.block_size:
                    raise ValueError(
                        f"block_hashes must hold the prompt's {(n - 1) // self.block_size} "
                        f"leading full blocks' hashes, got {len(block_hashes)}"
                    )
                hashes = tuple(block_hashes)
            else:
                hashes = prompt_block_hashes(
                    prompt_token_ids, self.block_size, multi_modal=multi_modal
                )
        matched = self.index.match(hashes) if hashes else {}
        views = [self._view(r, self._num_cached_blocks(r, hashes, matched)) for r in replicas]
        decision, order = rank_replicas(views, n, self.block_size, self.rng, self.max_num_seqs)
        bs, num_full_blocks = self.block_size, (n - 1) // self.block_size
        prefill = {  # n - num_cached_tokens(...), inline
            view.replica: n - min(view.num_cached_blocks, num_full_blocks) * bs for view in views
        }
        return Ranking(decision, [views[i].replica for i in order], prefill, hashes)

    def least_wait_s(self, replicas: Sequence[Hashable]) -> float | None:
        """The least predicted wait of a new request before its prefill starts, over
        replicas (routing_policy.predict_wait_s); None when some replica has no step-time
        data yet (a replica just started: nothing is known to wait there) or none given."""
        waits = []
        for replica in replicas:
            view = self._view(replica, 0)
            if not view.has_step_data:
                return None
            waits.append(predict_wait_s(view, self.max_num_seqs))
        return min(waits, default=None)

    def on_routed(
        self,
        request_id: Hashable,
        replica: Hashable,
        ranking: Ranking,
        num_output_tokens: int = 0,
    ) -> None:
        """The request was sent to replica (the best of ranking, or another if that one
        refused it): count its uncached prompt as queued there, its blocks as computing,
        and the most it may generate (its max_tokens; 0: unknown)."""
        num_prefill = ranking.num_prefill_tokens.get(replica, 0)
        self.inflight.on_routed(replica, request_id, num_prefill, num_output_tokens)
        if ranking.block_hashes:
            self._computing.setdefault(replica, Counter()).update(ranking.block_hashes)
            self._hashes_of[request_id] = (replica, ranking.block_hashes)

    def on_first_token(self, request_id: Hashable) -> None:
        self.inflight.on_first_token(request_id)

    def on_finished(self, request_id: Hashable) -> bool:
        """Count the request out (finished, failed or cancelled). False if unknown."""
        entry = self._hashes_of.pop(request_id, None)
        if entry is not None:
            replica, hashes = entry
            computing = self._computing.get(replica)
            if computing is not None:
                for h in hashes:  # Counter.subtract, dropping the counts that reach 0
                    n = computing[h] - 1
                    if n > 0:
                        computing[h] = n
                    else:
                        del computing[h]
                if not computing:
                    del self._computing[replica]
        return self.inflight.on_finished(request_id)

    def choose(
        self,
        request_id: Hashable,
        prompt_token_ids: Sequence[int],
        replicas: Sequence[Hashable],
        num_output_tokens: int = 0,
        multi_modal: MultiModalInput | None = None,
    ) -> RoutingDecision:
        """Pick one of replicas for the prompt and count the request in flight there.
        The caller reports `on_first_token` / `on_finished` for request_id."""
        ranking = self.rank(prompt_token_ids, replicas, multi_modal=multi_modal)
        self.on_routed(request_id, ranking.decision.replica, ranking, num_output_tokens)
        return ranking.decision

    def _num_cached_blocks(
        self, replica: Hashable, hashes: tuple[int, ...], matched: dict[Hashable, int]
    ) -> int:
        """Leading blocks the replica holds or is computing for a prompt in flight."""
        known = matched.get(replica, 0)
        computing = self._computing.get(replica)
        if not computing or known == len(hashes):
            return known
        holds = self.index.holds  # the slow path: only replicas computing a prompt
        held = known
        for h in hashes[known:]:
            if h not in computing and not holds(replica, h):
                break
            held += 1
        return held

    def _view(self, replica: Hashable, num_cached_blocks: int) -> ReplicaView:
        num_requests, num_queued_tokens, num_decoding, num_output_tokens = self.inflight.load(
            replica
        )
        return _new_view(
            (
                replica,
                num_cached_blocks,
                num_requests,
                num_queued_tokens,
                num_decoding,
                self.step_times.get(replica),
                num_output_tokens,
            )
        )


# A ReplicaView from a tuple of its fields in order, without a Python-level call.
_new_view = partial(tuple.__new__, ReplicaView)
