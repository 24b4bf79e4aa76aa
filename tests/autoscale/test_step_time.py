"""The step-time model: prior, fits, outliers, context, and the sliding window."""

from __future__ import annotations

import doctest
import random

import pytest

from autoscale import step_time
from autoscale.step_time import DECODE, PREFILL, StepTimeModel, StepTimePrior


def test_docstring_example():
    result = doctest.testmod(step_time)
    assert result.attempted >= 1 and result.failed == 0


def test_the_prior_before_any_step():
    prior = StepTimePrior()
    model = StepTimeModel(prior)
    assert not model.has_data
    assert model.prefill_s(1000) == pytest.approx(
        prior.prefill_fixed_s + 1000 * prior.prefill_per_token_s
    )
    assert model.decode_step_s(8) == pytest.approx(
        prior.decode_fixed_s + 8 * prior.decode_per_seq_s
    )
    assert model.prefill_s(0) == 0.0 and model.decode_step_s(0) == 0.0


def test_a_noisy_prefill_line_with_outliers_is_recovered():
    rng = random.Random(0)
    model = StepTimeModel()
    for i in range(200):
        n = rng.randrange(16, 2048)
        t = (0.004 + 5e-5 * n) * rng.uniform(0.97, 1.03)
        if i % 10 == 3:
            t *= 30  # a compile or a pause
        model.observe(PREFILL, n, t)
    assert model.num_observations(PREFILL) == 128  # the window
    assert model.prefill_s(1000) == pytest.approx(0.004 + 0.05, rel=0.03)
    assert model.prefill_s(100) == pytest.approx(0.004 + 0.005, rel=0.05)


def test_decode_fits_batch_and_context_when_the_context_varies():
    rng = random.Random(1)
    model = StepTimeModel()
    for _ in range(100):
        b = rng.randrange(1, 64)
        c = b * rng.randrange(50, 2000)
        model.observe(DECODE, b, 0.01 + 1e-3 * b + 2e-6 * c, num_context_tokens=c)
    assert model.decode_step_s(10, 10 * 1000) == pytest.approx(0.01 + 0.01 + 0.02, rel=1e-6)
    assert model.decode_step_s(10, 0) == pytest.approx(0.02, rel=1e-6)
    # Without a context, the window's typical context per row is assumed.
    assert 0.02 < model.decode_step_s(10) < 0.02 + 10 * 2000 * 2e-6


def test_a_context_that_does_not_vary_is_folded_into_the_fixed_cost():
    model = StepTimeModel()
    for b in range(1, 20):
        model.observe(DECODE, b, 0.01 + 1e-3 * b, num_context_tokens=500)
    assert model.decode_step_s(30, 0) == pytest.approx(0.04)
    assert model.decode_step_s(30, 10**6) == pytest.approx(0.04)


def test_steps_all_of_one_size_scale_the_prior():
    prior = StepTimePrior(prefill_fixed_s=0.01, prefill_per_token_s=1e-4)
    model = StepTimeModel(prior)
    for t in (0.08, 0.06, 0.5, 0.06, 0.06, 0.06, 0.06, 0.06, 0.06, 0.06):  # one outlier
        model.observe(PREFILL, 500, t)
    assert model.has_data
    assert model.prefill_s(500) == pytest.approx(0.06)  # the median ratio: 1x the prior
    assert model.prefill_s(1000) == pytest.approx(0.11)


def test_the_window_follows_a_replica_that_slows_down():
    model = StepTimeModel(window=32)
    for i in range(64):
        n = 100 + 10 * (i % 16)
        per_token = 1e-4 if i < 32 else 4e-4
        model.observe(PREFILL, n, 0.01 + per_token * n)
    assert model.prefill_s(1000) == pytest.approx(0.41)


def test_a_negative_slope_falls_back_to_the_scaled_prior():
    model = StepTimeModel(StepTimePrior(prefill_fixed_s=0.0, prefill_per_token_s=1e-4))
    for i in range(10):
        n = 100 + 100 * i
        model.observe(PREFILL, n, 0.1 - 1e-5 * n)  # bigger steps faster: not a model
    assert model.prefill_s(1000) > 0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("warmup", 10, 0.1), "kind must be one of"),
        ((PREFILL, 0, 0.1), "size must be at least 1"),
        ((PREFILL, 10, -1.0), "seconds must be"),
        ((PREFILL, 10, float("nan")), "seconds must be"),
    ],
)
def test_bad_observations_raise(args, match):
    with pytest.raises(ValueError, match=match):
        StepTimeModel().observe(*args)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="window"):
        StepTimeModel(window=1)
    with pytest.raises(ValueError, match="min_fit_observations"):
        StepTimeModel(min_fit_observations=1)


def test_a_full_window_refits_after_every_few_new_steps_not_each():
    from autoscale.step_time import REFIT_EVERY, REFIT_FULL_BELOW

    rng = random.Random(0)
    model = StepTimeModel(StepTimePrior(0.01, 1e-4, 0.01, 1e-3))

    def observe(i: int, slower: float) -> None:
        tokens = 100 + 50 * (i % 4)
        model.observe(PREFILL, tokens, (0.01 + 1e-4 * tokens) * slower * rng.uniform(0.95, 1.05))

    for i in range(REFIT_FULL_BELOW):
        observe(i, 1.0)
    fitted = model.prefill_s(1000)
    for i in range(REFIT_EVERY - 1):  # 8% slower now (within the noise band): no refit yet
        observe(i, 1.08)
        assert model.prefill_s(1000) == fitted
    observe(REFIT_EVERY, 1.08)
    assert model.prefill_s(1000) != fitted  # the REFIT_EVERY-th new step refits


@pytest.mark.parametrize("seed", range(4))
def test_fast_statistics_match_numpy_bit_for_bit(seed):
    """The fit's mean, std and median skip numpy's wrappers; the results are identical
    (a router's decisions must not move by a rounding)."""
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(seed)
    for n in range(1, 140):
        table = rng.exponential(size=(n, 3)) * rng.choice([1e-3, 1.0, 1e3])
        ties = rng.integers(0, 4, size=n).astype(float) * rng.choice([1.0, -0.0])
        for values in (table[:, seed % 3], np.ascontiguousarray(table[:, 2]), ties):
            assert repr(step_time._median(values)) == repr(float(np.median(values)))
            assert repr(step_time._mean(values)) == repr(float(np.mean(values)))
            assert repr(step_time._std(values)) == repr(float(np.std(values)))
