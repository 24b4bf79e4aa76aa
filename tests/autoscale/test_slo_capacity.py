"""Capacity at the SLO from step-time lines, and a replica's summary of its fitted model."""

from __future__ import annotations

import doctest

import pytest

from autoscale import slo_capacity
from autoscale.slo_capacity import capacity_at_slo, mean_capacity, summarize_step_time
from autoscale.step_time import DECODE, PREFILL, StepTimeModel, StepTimePrior

FIT = StepTimePrior(0.0, 1e-4, 0.01, 0.001)


def capacity(prior=FIT, ttft_s=1.0, tpot_s=0.05, max_num_seqs=256, chunk=2048):
    return capacity_at_slo(prior, ttft_s, tpot_s, max_num_seqs, chunk)


def test_docstring_example():
    result = doctest.testmod(slo_capacity)
    assert result.attempted >= 1 and result.failed == 0


def test_the_decode_batch_is_the_largest_meeting_tpot_within_the_engine_limit():
    assert capacity().decode_batch == 40  # 10 ms + 40 x 1 ms = 50 ms
    assert capacity(tpot_s=0.0505).decode_batch == 40
    limited = capacity(max_num_seqs=16)
    assert limited.decode_batch == 16
    assert limited.decode_tokens_s == pytest.approx(16 / 0.026)


def test_a_step_slower_than_tpot_at_one_row_is_a_batch_of_one_and_flagged():
    slow = capacity(StepTimePrior(0.0, 1e-4, 0.08, 0.001))
    assert (slow.decode_batch, slow.meets_tpot) == (1, False)
    assert slow.decode_tokens_s == pytest.approx(1 / 0.081)


def test_a_prefill_chunk_never_takes_longer_than_ttft():
    assert capacity(ttft_s=0.1).prefill_tokens_s == pytest.approx(10_000)  # 1,000 tokens
    with_fixed = capacity(StepTimePrior(0.05, 1e-4, 0.01, 0.001), ttft_s=0.1)
    assert with_fixed.prefill_tokens_s == pytest.approx(500 / 0.1)


def test_free_decode_rows_take_the_engine_limit():
    flat = capacity(StepTimePrior(0.0, 1e-4, 0.02, 0.0), max_num_seqs=64)
    assert flat.decode_batch == 64 and flat.decode_tokens_s == pytest.approx(64 / 0.02)


def test_tokens_at_a_mix_and_the_mean_replica():
    cap = capacity()  # 10k prefill, 800 decode tokens/s
    assert cap.tokens_s(2000, 480) == pytest.approx(2480 / 0.8)
    assert cap.tokens_s(0, 0) == pytest.approx(800)  # no mix known: decode alone
    other = capacity(tpot_s=0.09)  # 80 rows at 90 ms
    mean = mean_capacity([cap, other])
    assert mean.decode_tokens_s == pytest.approx((800 + 80 / 0.09) / 2)
    with pytest.raises(ValueError, match="at least one"):
        mean_capacity([])


def test_the_summary_of_a_fitted_model_predicts_what_the_model_does():
    model = StepTimeModel(StepTimePrior(), min_fit_observations=3)
    assert summarize_step_time(model) is None  # nothing observed yet
    for n in (100, 400, 900, 1600):
        model.observe(PREFILL, n, 0.004 + 2e-4 * n)
    for b in (1, 8, 32, 64):
        model.observe(DECODE, b, 0.02 + 5e-4 * b)
    summary = summarize_step_time(model)
    assert summary.prefill_fixed_s == pytest.approx(0.004)
    assert summary.prefill_per_token_s == pytest.approx(2e-4)
    assert summary.decode_fixed_s == pytest.approx(0.02)
    assert summary.decode_per_seq_s == pytest.approx(5e-4)
