"""The routing decision: least predicted TTFT over every candidate, ties, reasons, fallback."""

from __future__ import annotations

import doctest
import random

import pytest

from autoscale import routing_policy
from autoscale.routing_policy import (
    CACHE_HIT,
    FALLBACK,
    LEAST_WAIT,
    ReplicaView,
    choose_replica,
    num_cached_tokens,
    predict_ttft_s,
)
from autoscale.step_time import PREFILL, StepTimeModel, StepTimePrior

BLOCK = 16


def model(per_token_s: float = 1e-4) -> StepTimeModel:
    m = StepTimeModel(StepTimePrior(0.01, per_token_s, 0.02, 0.0))
    m.observe(PREFILL, 100, 0.01 + 100 * per_token_s)  # the prior, confirmed
    return m


def view(name, cached=0, requests=0, queued=0, decoding=0, step_time=None, **kw) -> ReplicaView:
    return ReplicaView(
        name,
        num_cached_blocks=cached,
        num_requests=requests,
        num_queued_tokens=queued,
        num_decoding=decoding,
        step_time=step_time or model(**kw),
    )


def choose(views, num_tokens=1000, seed=0):
    return choose_replica(views, num_tokens, BLOCK, random.Random(seed))


def test_docstring_example():
    result = doctest.testmod(routing_policy)
    assert result.attempted >= 1 and result.failed == 0


def test_the_replica_holding_the_prefix_is_found_among_many():
    views = [view(f"r{i}") for i in range(16)]
    views[11] = view("r11", cached=40)
    decision = choose(views)
    assert decision == (
        "r11",
        CACHE_HIT,
        pytest.approx(0.01 + 1e-4 * (1000 - 640)),
    )


def test_a_saturated_cache_holder_spills_to_an_idle_replica():
    views = [view("hot", cached=40, requests=8, queued=8000, decoding=4), view("idle")]
    decision = choose(views)
    assert decision.replica == "idle" and decision.reason == LEAST_WAIT
    assert decision.predicted_ttft_s == pytest.approx(predict_ttft_s(views[1], 1000, BLOCK))


def test_a_faster_replica_wins_without_any_cache():
    decision = choose([view("slow", per_token_s=4e-4), view("fast", per_token_s=1e-4)])
    assert decision.replica == "fast" and decision.reason == LEAST_WAIT


def test_a_prefix_every_replica_holds_is_no_cache_hit():
    decision = choose([view("a", cached=10, queued=100), view("b", cached=10)])
    assert decision == ("b", LEAST_WAIT, pytest.approx(0.01 + 1e-4 * 840))


def test_ties_go_to_more_cache_then_fewer_requests_then_order():
    # Equal predictions: a's cached blocks lie beyond what the prompt leaves cacheable.
    a, b = view("a", cached=100), view("b", cached=62)
    assert predict_ttft_s(a, 1000, BLOCK) == predict_ttft_s(b, 1000, BLOCK)
    assert choose([b, a]).replica == "a"
    # Equal caches: fewer requests (decoding rows cost nothing on this model).
    assert (
        choose([view("a", requests=3, decoding=3), view("b", requests=1, decoding=1)]).replica
        == "b"
    )
    assert choose([view("x"), view("y")]).replica == "x"
    assert choose([view("y"), view("x")]).replica == "y"


def test_the_last_prompt_token_is_always_computed():
    assert num_cached_tokens(10, 160, BLOCK) == 144  # 9 blocks: token 160 is left
    assert num_cached_tokens(10, 161, BLOCK) == 160
    assert num_cached_tokens(3, 1, BLOCK) == 0


def test_a_replica_without_data_makes_it_power_of_two():
    cold = ReplicaView("cold", 0, 0, 0, 0, StepTimeModel())  # a model, but no steps yet
    busy = view("busy", cached=60, requests=5, queued=4000)
    for seed in range(10):  # two candidates: both drawn, the less loaded wins
        assert choose([busy, cold], seed=seed) == ("cold", FALLBACK, None)
    unknown = ReplicaView("unknown", 0, 9, 0, 0, None)
    picks = {choose([busy, unknown, view("c", requests=7)], seed=s).replica for s in range(40)}
    assert picks == {"busy", "c"}  # unknown (9 requests) is never the less loaded of a pair


def test_bad_input_raises():
    with pytest.raises(ValueError, match="at least one candidate"):
        choose([])
    with pytest.raises(ValueError, match="num_prompt_tokens"):
        choose([view("a")], num_tokens=0)
    with pytest.raises(ValueError, match="no step-time model"):
        predict_ttft_s(ReplicaView("a", 0, 0, 0, 0, None), 10, BLOCK)


def test_a_full_batch_makes_a_new_request_wait_for_rows_to_free():
    """Four decoding rows of max_tokens 64 fill a 4-row batch: the cache holder's next
    request waits for rows to free (1/4 x 64 tokens x a 20 ms step = 0.32 s), longer than
    computing the whole prompt elsewhere; with rows to spare, the cache wins."""
    full = ReplicaView("hot", 60, 4, 0, 4, model(), num_output_tokens=4 * 64)
    idle = view("idle")
    assert choose([full, idle]).replica == "hot"  # no batch limit given: the cache wins
    decision = choose_replica([full, idle], 1000, BLOCK, random.Random(0), max_num_seqs=4)
    assert decision.replica == "idle"
    wait = predict_ttft_s(full, 1000, BLOCK, max_num_seqs=4) - predict_ttft_s(full, 1000, BLOCK)
    assert wait == pytest.approx(1 / 4 * 64 * 0.02)
    assert choose_replica([full, idle], 1000, BLOCK, random.Random(0), max_num_seqs=8).replica == (
        "hot"
    )
