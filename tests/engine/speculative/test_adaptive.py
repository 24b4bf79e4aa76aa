"""Adaptive speculation: the expected-tokens formula matches simulation, the rule turns
speculation off at large batches and low acceptance, and acceptance tracking converges."""

from __future__ import annotations

import random

import pytest

from engine.speculative.adaptive import (
    AcceptanceTracker,
    StepCosts,
    choose_hybrid,
    choose_k,
    expected_tokens,
    k_choices,
    speedup,
)

COSTS = StepCosts(((1, 1.01), (101, 2.01)), draft_points=((1, 0.302), (101, 0.502)))


@pytest.mark.parametrize(("alpha", "k"), [(0.3, 1), (0.7, 4), (0.9, 8)])
def test_expected_tokens_matches_simulation(alpha, k):
    rng = random.Random(0)
    trials = 20000
    total = 0
    for _ in range(trials):
        accepted = 0
        while accepted < k and rng.random() < alpha:
            accepted += 1
        total += accepted + 1
    assert total / trials == pytest.approx(expected_tokens(alpha, k), rel=0.02)


def test_rule_prefers_speculation_only_where_it_pays():
    choices = k_choices(8, adaptive=True)
    assert choices == (1, 2, 4, 8)
    assert choose_k([0.99], 1, choices, COSTS) == 8
    assert choose_k([0.9], 1, choices, COSTS) == 4
    assert choose_k([0.6], 1, choices, COSTS) in (1, 2)
    assert choose_k([0.05], 1, choices, COSTS) == 0
    # compute-bound target: (k + 1) tokens per row cost ~(k + 1)x
    big = StepCosts(((1, 1.5), (301, 151.5)), draft_points=((1, 0.31), (33, 0.63)))
    assert choose_k([0.8] * 32, 32, choices, big) == 0
    # n-gram proposals cost nothing to make: a lower acceptance still pays
    ngram = StepCosts(COSTS.target_points)
    assert choose_k([0.3], 1, choices, ngram) > 0 == choose_k([0.3], 1, choices, COSTS)
    assert speedup([0.9], 1, 0, COSTS) == 1.0


def test_per_request_acceptance_enters_the_batch_rule():
    choices = (1, 2, 4)
    good, bad = [0.95] * 4, [0.02] * 4
    assert choose_k(good, 4, choices, COSTS) == 4
    assert choose_k(bad, 4, choices, COSTS) == 0
    assert speedup(good + bad, 8, 4, COSTS) < speedup(good, 8, 4, COSTS)


def test_tracker_converges_and_releases():
    tracker = AcceptanceTracker(prior=0.5)
    rng = random.Random(1)
    for step in range(400):
        n = 4
        m = 0
        while m < n and rng.random() < 0.8:
            m += 1
        tracker.record("r", n, m)
        tracker.record("low", n, 0 if step % 2 else 1)
    assert tracker.model_alpha == pytest.approx(0.55, abs=0.15)  # both requests mixed
    assert tracker.alpha("r") == pytest.approx(0.8, abs=0.1)
    assert tracker.alpha("low") < 0.5
    tracker.release("r")
    assert tracker.alpha("r") == tracker.model_alpha


def test_costs_interpolate_between_measured_points():
    costs = StepCosts(((1, 2.0), (11, 3.0), (21, 3.5)), draft_points=((1, 0.5), (4, 0.5)))
    assert costs.target(6) == pytest.approx(2.5) and costs.target(31) == pytest.approx(4.0)
    assert costs.draft(100) == pytest.approx(0.5)
    assert costs.speculative_step(1, 3) == pytest.approx(costs.target(4) + 3 * 0.5)
    assert StepCosts(costs.target_points).speculative_step(1, 3) == costs.target(4)


def test_hybrid_rule_drops_the_draft_when_it_does_not_pay():
    cheap = StepCosts(((1, 1.0), (101, 2.0)), draft_points=((1, 0.05), (101, 0.1)))
    assert choose_hybrid([0.9], [0.9], 0.3, 1, (1, 2, 4), cheap) == (4, True)
    # every row finds its n-gram proposal: no draft forward is needed either way
    assert choose_hybrid([0.9], [0.9], 1.0, 1, (1, 2, 4), COSTS)[0] == 4
    assert choose_hybrid([0.9], [0.2], 0.5, 1, (1, 2, 4), COSTS) == (4, False)
    assert choose_hybrid([0.05], [0.05], 0.5, 1, (1, 2, 4), COSTS) == (0, False)
