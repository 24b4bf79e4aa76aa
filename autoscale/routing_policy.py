"""The KV-cache-aware routing decision, as a pure function of what the router knows.

For every candidate replica (a full scan: sampling two would miss the one holding the
prefix), the predicted time to first token is

    ttft = wait for the work queued ahead + prefill of this prompt's uncached part
    wait = one decode step of its decoding rows (the step in flight, counted whole)
         + prefill of the tokens routed to it whose prefill is not done
         + with the batch full (max_num_seqs rows routed, when the caller gives it):
           the time for rows to free, excess / max_num_seqs x the mean max_tokens of
           the requests there x a full batch's decode step (a fluid estimate: a row
           frees as a request ends; max_tokens bounds when)

all through that replica's own step-time model (autoscale/step_time.py). The engine runs
prefill before decode, so queued prefill work is all that stands ahead of a new prompt.
The uncached part is the prompt less the leading blocks the replica holds, and at least
one token: the engine always computes the last prompt token to get its logits.

The minimum wins, up to a tolerance: predictions within TIE_TOLERANCE (10%) of the least
are ties. Each replica fits its own model from its own steps, and two equal replicas measure
a few percent apart; a strict minimum would send every request of a lightly loaded fleet to
the one that happened to measure faster. Ties go to the replica holding more of the prompt,
then to fewer requests in flight, then to the lesser prediction, then to the earlier
candidate in the order given (pass candidates in a stable order, e.g. by replica id).
Deterministic ties cannot pile requests onto one replica, because the caller counts each
decision in at once (autoscale/inflight.py).

While any candidate has no step-time data yet, predictions are not comparable and the
decision falls back to power-of-two choices: two candidates drawn at random, the one with
fewer requests in flight wins (then the one holding more of the prompt, then the first
drawn). Reasons, for metrics:
- cache_hit: the chosen replica holds more leading blocks of the prompt than some other
  candidate (the cache set it apart);
- least_wait: otherwise (no candidate holds more of the prompt than the others);
- fallback: power-of-two choices; no prediction (predicted_ttft_s is None).

Worked example (two replicas, block_size 16, a 1,000-token prompt, the same speed:
10 ms + 0.1 ms per prefill token, 20 ms per decode step): "a" holds 50 blocks (800
tokens) and has 2,000 tokens queued; "b" holds nothing and is idle.

    >>> from autoscale.step_time import DECODE, PREFILL, StepTimeModel, StepTimePrior
    >>> def model():
    ...     m = StepTimeModel(StepTimePrior(0.01, 1e-4, 0.02, 0.0))
    ...     m.observe(PREFILL, 100, 0.02)  # matches the prior: scale 1
    ...     return m
    >>> a = ReplicaView("a", num_cached_blocks=50, num_requests=2, num_queued_tokens=2000,
    ...                 num_decoding=0, step_time=model())
    >>> b = ReplicaView("b", num_cached_blocks=0, num_requests=0, num_queued_tokens=0,
    ...                 num_decoding=0, step_time=model())
    >>> round(predict_ttft_s(a, 1000, 16), 3)  # wait 0.21 + prefill of 200 tokens 0.03
    0.24
    >>> round(predict_ttft_s(b, 1000, 16), 3)  # no wait + prefill of 1,000 tokens
    0.11
    >>> choose_replica([a, b], 1000, 16, random.Random(0))
    RoutingDecision(replica='b', reason='least_wait', predicted_ttft_s=0.11)
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from typing import NamedTuple

from autoscale.step_time import StepTimeModel

CACHE_HIT = "cache_hit"
LEAST_WAIT = "least_wait"
FALLBACK = "fallback"
REASONS = (CACHE_HIT, LEAST_WAIT, FALLBACK)

TIE_TOLERANCE = 0.10  # predictions within this share of the least are ties
TIE_RESOLUTION_S = 1e-6  # and within this many seconds (for predictions near zero)


class ReplicaView(NamedTuple):
    """What the router knows of one candidate replica for one prompt (a tuple: a router
    builds one per candidate per request)."""

    replica: Hashable
    num_cached_blocks: int  # leading blocks of this prompt in its prefix cache
    num_requests: int  # routed to it and not finished
    num_queued_tokens: int  # prefill tokens routed to it whose prefill is not done
    num_decoding: int  # requests past their prefill
    step_time: StepTimeModel | None  # None (or no data yet): power-of-two fallback
    num_output_tokens: int = 0  # the most the requests routed to it may generate, summed

    @property
    def has_step_data(self) -> bool:
        return self.step_time is not None and self.step_time.has_data


class RoutingDecision(NamedTuple):
    replica: Hashable
    reason: str  # one of REASONS
    predicted_ttft_s: float | None  # None for a fallback decision


def num_cached_tokens(num_cached_blocks: int, num_prompt_tokens: int, block_size: int) -> int:
    """Prompt tokens a replica holding num_cached_blocks leading blocks will not compute:
    whole blocks, leaving at least the last prompt token to compute."""
    return min(num_cached_blocks, (num_prompt_tokens - 1) // block_size) * block_size


def predict_ttft_s(
    view: ReplicaView, num_prompt_tokens: int, block_size: int, max_num_seqs: int | None = None
) -> float:
    """Predicted seconds to first token of the prompt on this replica (see module doc)."""
    cached = num_cached_tokens(view.num_cached_blocks, num_prompt_tokens, block_size)
    wait = predict_wait_s(view, max_num_seqs)
    return wait + view.step_time.prefill_s(num_prompt_tokens - cached, num_context_tokens=cached)


def predict_wait_s(view: ReplicaView, max_num_seqs: int | None = None) -> float:
    """Predicted seconds a new request waits on this replica before its own prefill starts:
    the `wait` of the module doc (the same for every prompt)."""
    if view.step_time is None:
        raise ValueError(f"replica {view.replica!r} has no step-time model to predict with")
    model = view.step_time
    rows = view.num_decoding if max_num_seqs is None else min(view.num_decoding, max_num_seqs)
    wait = model.decode_step_s(rows) + model.prefill_s(view.num_queued_tokens)
    if max_num_seqs is not None and view.num_requests >= max_num_seqs:
        excess = view.num_requests + 1 - max_num_seqs
        mean_output = view.num_output_tokens / view.num_requests
        wait += excess / max_num_seqs * mean_output * model.decode_step_s(max_num_seqs)
    return wait


def choose_replica(
    views: Sequence[ReplicaView],
    num_prompt_tokens: int,
    block_size: int,
    rng: random.Random,
    max_num_seqs: int | None = None,
) -> RoutingDecision:
    """The candidate with the least predicted TTFT, or power-of-two choices while any
    candidate has no step-time data (see module doc for ties and reasons)."""
    return rank_replicas(views, num_prompt_tokens, block_size, rng, max_num_seqs)[0]


def rank_replicas(
    views: Sequence[ReplicaView],
    num_prompt_tokens: int,
    block_size: int,
    rng: random.Random,
    max_num_seqs: int | None = None,
) -> tuple[RoutingDecision, list[int]]:
    """The decision of `choose_replica` and every candidate's index, best first: by
    predicted TTFT (with the same ties), or for a fallback the two drawn (winner first)
    then the rest in random order. A caller whose best candidate refuses the request (its
    queue is full) tries the next."""
    if not views:
        raise ValueError("choose_replica needs at least one candidate replica, got none")
    if num_prompt_tokens < 1:
        raise ValueError(f"num_prompt_tokens must be at least 1, got {num_prompt_tokens}")
    if not all(view.has_step_data for view in views):
        return _power_of_two(views, rng)
    # predict_ttft_s of each view, its steps inline (a router ranks every replica per request)
    num_full_blocks = (num_prompt_tokens - 1) // block_size
    cached = [min(v.num_cached_blocks, num_full_blocks) * block_size for v in views]
    ttfts = [
        predict_wait_s(v, max_num_seqs)
        + v.step_time.prefill_s(num_prompt_tokens - c, num_context_tokens=c)
        for v, c in zip(views, cached, strict=True)
    ]
    cutoff = min(ttfts) * (1 + TIE_TOLERANCE) + TIE_RESOLUTION_S
    order = sorted(
        range(len(views)),
        key=lambda i: (
            ttfts[i] > cutoff,  # the ties first, then the rest by prediction
            -views[i].num_cached_blocks if ttfts[i] <= cutoff else 0,
            views[i].num_requests if ttfts[i] <= cutoff else 0,
            ttfts[i],
            i,
        ),
    )
    best = order[0]
    reason = CACHE_HIT if cached[best] > min(cached) else LEAST_WAIT
    return RoutingDecision(views[best].replica, reason, ttfts[best]), order


def _power_of_two(
    views: Sequence[ReplicaView], rng: random.Random
) -> tuple[RoutingDecision, list[int]]:
    drawn = rng.sample(range(len(views)), min(2, len(views)))
    position = {i: k for k, i in enumerate(drawn)}
    drawn.sort(key=lambda i: (views[i].num_requests, -views[i].num_cached_blocks, position[i]))
    rest = [i for i in range(len(views)) if i not in drawn]
    rng.shuffle(rest)
    return RoutingDecision(views[drawn[0]].replica, FALLBACK, None), drawn + rest
