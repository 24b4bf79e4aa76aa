"""Synthetic traces: determinism, arrival rates and burstiness within statistical
tolerance of their parameters, length distributions, prefix-group shares, and bad specs."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from autoscale.sim.synth import (
    Fixed,
    LogNormal,
    PrefixGroups,
    SynthSpec,
    Uniform,
    bursty_arrivals,
    diurnal_arrivals,
    parse_lengths,
    parse_prefix_groups,
    poisson_arrivals,
    synthesize,
)


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_same_spec_same_trace_and_seed_matters():
    spec = SynthSpec(
        "bursty", rate=5, duration_s=100, seed=7, prompt=Uniform(10, 50), output=Fixed(8)
    )
    assert synthesize(spec) == synthesize(spec)
    assert synthesize(spec) != synthesize(SynthSpec("bursty", 5, 100, seed=8))


def test_lengths_do_not_move_arrivals():
    a = synthesize(SynthSpec("poisson", 5, 50, seed=3, prompt=Fixed(10)))
    b = synthesize(SynthSpec("poisson", 5, 50, seed=3, prompt=LogNormal(300, 1.0)))
    assert [r.arrival_s for r in a] == [r.arrival_s for r in b]


def test_poisson_count_and_gap_cv():
    rate, duration = 20.0, 500.0  # 10,000 arrivals expected
    times = poisson_arrivals(rate, duration, random.Random(1))
    # The count of a Poisson process is Poisson(rate * duration): std sqrt(mean).
    expected = rate * duration
    assert abs(len(times) - expected) < 4 * math.sqrt(expected)
    assert all(0 <= t < duration for t in times)
    assert times == sorted(times)
    gaps = _gaps(times)
    cv = statistics.pstdev(gaps) / statistics.fmean(gaps)
    assert cv == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("cv", [0.5, 3.0])
def test_bursty_keeps_the_mean_rate_with_the_asked_cv(cv):
    rate = 10.0
    gaps = _gaps(bursty_arrivals(rate, cv, 2000.0, random.Random(2)))
    n = len(gaps)
    mean = statistics.fmean(gaps)
    # The mean of n Gamma gaps has std (cv / rate) / sqrt(n).
    assert abs(mean - 1 / rate) < 4 * (cv / rate) / math.sqrt(n)
    assert statistics.pstdev(gaps) / mean == pytest.approx(cv, rel=0.1)


def test_diurnal_rate_follows_the_sine():
    rate, period, amplitude = 20.0, 100.0, 0.8
    times = diurnal_arrivals(rate, 1000.0, period, amplitude, random.Random(3))
    # Over whole periods the mean rate is `rate`.
    assert abs(len(times) - rate * 1000) < 4 * math.sqrt(rate * 1000)
    # The first half of each period (sine above 0) vs the second (below).
    phases = [(t % period) / period for t in times]
    high = sum(1 for p in phases if 0.0 <= p < 0.5)
    low = len(phases) - high
    # Integrating the rate over each half: (1 + 2a/pi) / (1 - 2a/pi), about 3.07 at a = 0.8
    ratio = (1 + 2 * amplitude / math.pi) / (1 - 2 * amplitude / math.pi)
    assert high / low == pytest.approx(ratio, rel=0.1)


def test_lognormal_lengths_mean_and_clipping():
    rng = random.Random(4)
    dist = LogNormal(mean=200, cv=0.5)
    values = [dist.sample(rng) for _ in range(20000)]
    assert statistics.fmean(values) == pytest.approx(200, rel=0.02)
    assert statistics.pstdev(values) / statistics.fmean(values) == pytest.approx(0.5, rel=0.05)
    clipped = LogNormal(200, 2.0, 50, 300)
    values = [clipped.sample(rng) for _ in range(2000)]
    assert min(values) == 50 and max(values) == 300


def test_uniform_lengths_cover_both_ends():
    rng = random.Random(5)
    values = {Uniform(3, 6).sample(rng) for _ in range(500)}
    assert values == {3, 4, 5, 6}


def test_prefix_groups_share_popularity_and_prompt_lengths():
    groups = PrefixGroups(num_groups=4, prefix_tokens=64, fraction=0.6, popularity="zipf")
    spec = SynthSpec("poisson", 50, 200, seed=9, prompt=Fixed(20), output=Fixed(4), prefix=groups)
    requests = synthesize(spec)
    n = len(requests)
    grouped = [r for r in requests if r.prefix_id is not None]
    # A binomial share: std sqrt(p (1 - p) / n).
    assert abs(len(grouped) / n - 0.6) < 4 * math.sqrt(0.6 * 0.4 / n)
    assert all(r.prompt_tokens == 84 and r.prefix_tokens == 64 for r in grouped)
    assert all(r.prompt_tokens == 20 for r in requests if r.prefix_id is None)
    counts = [sum(1 for r in grouped if r.prefix_id == f"group-{i}") for i in range(4)]
    weights = [1, 1 / 2, 1 / 3, 1 / 4]
    for count, weight in zip(counts, weights, strict=True):
        p = weight / sum(weights)
        assert abs(count / len(grouped) - p) < 4 * math.sqrt(p * (1 - p) / len(grouped))
    uniform = synthesize(
        SynthSpec("poisson", 50, 200, seed=9, prefix=PrefixGroups(4, 64, 1.0, "uniform"))
    )
    shares = [
        sum(1 for r in uniform if r.prefix_id == f"group-{i}") / len(uniform) for i in range(4)
    ]
    assert all(abs(s - 0.25) < 4 * math.sqrt(0.25 * 0.75 / len(uniform)) for s in shares)


def test_parse_lengths_forms():
    assert parse_lengths("128") == Fixed(128)
    assert parse_lengths("fixed:7") == Fixed(7)
    assert parse_lengths("uniform:4:9") == Uniform(4, 9)
    assert parse_lengths("lognormal:512:0.5") == LogNormal(512.0, 0.5)
    assert parse_lengths("lognormal:512:0.5:16:2048") == LogNormal(512.0, 0.5, 16, 2048)
    assert parse_prefix_groups("8:256") == PrefixGroups(8, 256, 1.0, "zipf")
    assert parse_prefix_groups("8:256:0.5:uniform") == PrefixGroups(8, 256, 0.5, "uniform")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", r"must be an integer >= 1"),
        ("uniform:9:4", r"high must be an integer >= 9"),
        ("uniform:4", r"expected N, fixed:N"),
        ("lognormal:-1:0.5", r"mean must be a number > 0"),
        ("lognormal:10:0.5:20:10", r"max must be an integer >= 20"),
        ("gauss:3", r"expected N, fixed:N"),
        ("abc", r"expected N, fixed:N"),
    ],
)
def test_parse_lengths_errors_name_the_option(text, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_lengths(text, "--prompt-tokens")
    assert str(info.value).startswith("--prompt-tokens: bad value")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8", r"expected NUM_GROUPS:PREFIX_TOKENS"),
        ("0:10", r"num_groups must be an integer >= 1"),
        ("2:10:1.5", r"fraction must be in \[0, 1\]"),
        ("2:10:0.5:pareto", r"popularity must be one of \['zipf', 'uniform'\]"),
    ],
)
def test_parse_prefix_groups_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_prefix_groups(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "steady"}, r"kind must be one of \['poisson', 'bursty', 'diurnal'\]"),
        ({"rate": 0}, r"rate must be a number > 0"),
        ({"duration_s": -1}, r"duration_s must be a number > 0"),
        ({"cv": 0}, r"cv must be a number > 0"),
        ({"amplitude": 1.5}, r"amplitude must be in \[0, 1\]"),
        ({"prompt": Fixed(0)}, r"prompt tokens must be an integer >= 1"),
    ],
)
def test_bad_specs_name_the_field(kwargs, message):
    fields = {"kind": "poisson", "rate": 1.0, "duration_s": 10.0} | kwargs
    with pytest.raises(ValueError, match=message):
        SynthSpec(**fields)
