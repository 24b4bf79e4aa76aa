"""The step-time models: the calibrated table (lookups, interpolation, monotone, calib.json
round trip and its errors) and the analytic model (hand-computed bytes and flops, regimes,
TP, MoE, every card)."""

from __future__ import annotations

import json
import re

import pytest

from autoscale.sim.card_perf import CARD_PERF, FAMILY_EFFICIENCY, Efficiency, get_card_perf
from autoscale.sim.step_analytic import AnalyticStepCost
from autoscale.sim.step_calibrated import CalibratedStepCost, HostOverhead, Measurement
from autoscale.sim.step_compare import PUBLISHED, compare_rows
from autoscale.sim.step_cost import DECODE, PREFILL, StepWork
from autoscale.sim.step_models import (
    CalibrationError,
    analytic_cost_for,
    calibration_to_dict,
    check_calibration,
    load_calibration,
    save_calibration,
)
from engine.shapes import StepShape
from sharding.hardware import CARDS

BLOCK = 16
BATCHES = (1, 4, 16)
BLOCKS = (1, 4, 16)


def decode_time(batch: int, blocks: int) -> float:
    return 0.002 + 0.0005 * batch + 2e-6 * batch * blocks * BLOCK


def prefill_time(batch: int, query_len: int, blocks: int) -> float:
    tokens = batch * query_len
    return 0.003 + 1e-4 * tokens + 1e-8 * tokens * blocks * BLOCK


def synthetic_measurements() -> list[Measurement]:
    ms = [
        Measurement(StepShape(DECODE, b, 1, n), decode_time(b, n), num_repeats=3)
        for b in BATCHES
        for n in BLOCKS
    ]
    for b, q in ((1, 16), (1, 64), (4, 16), (4, 64), (1, 256)):
        for blocks in (-(-q // BLOCK), 16):
            ms.append(Measurement(StepShape(PREFILL, b, q, blocks), prefill_time(b, q, blocks)))
    return ms


def make_cost(host=None) -> CalibratedStepCost:
    meta = {"model": "toy", "block_size": BLOCK, "tp_size": 1, "dtype": "float32"}
    return CalibratedStepCost.from_measurements(meta, synthetic_measurements(), host)


def decode_work(batch: int, blocks: int, rows: int | None = None) -> StepWork:
    rows = rows or batch
    return StepWork(DECODE, rows, rows, rows * blocks * BLOCK, StepShape(DECODE, batch, 1, blocks))


def prefill_work(batch: int, q: int, blocks: int) -> StepWork:
    return StepWork(PREFILL, batch, batch * q, 0, StepShape(PREFILL, batch, q, blocks))


# -- calibrated ---------------------------------------------------------------------------
def test_calibrated_reproduces_measured_points():
    cost = make_cost()
    for m in synthetic_measurements():
        s = m.shape
        work = (
            decode_work(s.batch_size, s.num_blocks)
            if s.kind == DECODE
            else prefill_work(s.batch_size, s.query_len, s.num_blocks)
        )
        assert cost.step_s(work) == pytest.approx(m.median_s, rel=1e-12)


def test_calibrated_interpolates_between_buckets():
    cost = make_cost()
    # decode is linear in batch at fixed blocks: bilinear interpolation is exact there
    assert cost.step_s(decode_work(2, 4)) == pytest.approx(decode_time(2, 4))
    assert cost.step_s(decode_work(8, 8)) == pytest.approx(decode_time(8, 8), rel=0.02)
    lo, hi = cost.step_s(decode_work(4, 4)), cost.step_s(decode_work(16, 4))
    assert lo < cost.step_s(decode_work(8, 4)) < hi
    # prefill between measured token counts (fresh width), and a wider table costs more
    assert cost.step_s(prefill_work(2, 32, 2)) == pytest.approx(prefill_time(2, 32, 2), rel=0.02)
    assert cost.step_s(prefill_work(2, 32, 16)) > cost.step_s(prefill_work(2, 32, 2))


def test_calibrated_extrapolates_with_the_fit():
    cost = make_cost()
    # beyond the grid the fitted line continues the edge: exact for this linear data
    assert cost.step_s(decode_work(32, 16)) == pytest.approx(decode_time(32, 16), rel=1e-6)
    assert cost.step_s(prefill_work(8, 256, 16)) == pytest.approx(
        prefill_time(8, 256, 16), rel=1e-6
    )


def test_calibrated_is_monotone_in_size_even_with_noisy_points():
    noisy = synthetic_measurements()
    # a noisy run: the 4-row decode bucket at 4 blocks measured faster than 1 row
    noisy = [
        m._replace(median_s=0.0001) if m.shape == StepShape(DECODE, 4, 1, 4) else m for m in noisy
    ]
    cost = CalibratedStepCost.from_measurements({"block_size": BLOCK}, noisy)
    for blocks in (1, 2, 4, 8, 16, 32):
        times = [cost.step_s(decode_work(b, blocks)) for b in (1, 2, 4, 8, 16, 32)]
        assert times == sorted(times)
    for batch in (1, 2, 4, 8, 16):
        times = [cost.step_s(decode_work(batch, n)) for n in (1, 2, 4, 8, 16, 32)]
        assert times == sorted(times)
    tokens = [cost.step_s(prefill_work(1, q, -(-q // BLOCK))) for q in (16, 32, 64, 128, 256)]
    assert tokens == sorted(tokens)


def test_calibrated_adds_host_overhead_per_row():
    host = {DECODE: HostOverhead(0.001, 0.0001), PREFILL: HostOverhead(0.002, 0.0)}
    cost = make_cost(host)
    # 3 real rows padded to the 4-row bucket: the forward of the bucket, host per real row
    work = decode_work(4, 4, rows=3)
    assert cost.step_s(work) == pytest.approx(decode_time(4, 4) + 0.001 + 0.0003)


def test_calibrated_prices_eager_steps_at_real_sizes():
    cost = make_cost()
    eager = StepWork(DECODE, 4, 4, 4 * (4 * BLOCK - 1), None)  # 4 rows, 4 blocks of context
    assert cost.step_s(eager) == pytest.approx(decode_time(4, 4))


def test_calibrated_needs_a_full_decode_grid():
    ms = [m for m in synthetic_measurements() if m.shape != StepShape(DECODE, 4, 1, 16)]
    with pytest.raises(ValueError, match=r"missing \[\(4, 16\)\]"):
        CalibratedStepCost.from_measurements({"block_size": BLOCK}, ms)


def test_calibration_file_round_trip(tmp_path):
    cost = make_cost({DECODE: HostOverhead(0.001, 2e-5)})
    path = tmp_path / "calib.json"
    save_calibration(cost, path, {"engine_check": {"decode": {"num_steps": 3}}})
    loaded = load_calibration(path)
    assert loaded.metadata == cost.metadata
    assert loaded.raw == cost.raw
    assert loaded.host == cost.host
    assert loaded.fits == cost.fits
    for work in (decode_work(8, 8), prefill_work(2, 32, 16), decode_work(64, 64)):
        assert loaded.step_s(work) == cost.step_s(work)
    assert json.loads(path.read_text())["model"]["engine_check"]["decode"]["num_steps"] == 3


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.update(version=99), "version"),
        (lambda d: d["metadata"].pop("block_size"), "metadata.block_size"),
        (lambda d: d.update(measurements=[]), "measurements"),
        (lambda d: d["measurements"][2].update(kind="verify"), "measurements[2].kind"),
        (lambda d: d["measurements"][1].update(batch_size=0), "measurements[1].batch_size"),
        (lambda d: d["measurements"][0].update(median_s=-1), "measurements[0].median_s"),
        (
            lambda d: d["model"]["host_overhead"]["decode"].update(fixed_s="x"),
            "model.host_overhead.decode.fixed_s",
        ),
    ],
)
def test_bad_calibration_file_names_the_field(tmp_path, edit, field):
    doc = calibration_to_dict(make_cost())
    edit(doc)
    path = tmp_path / "calib.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(CalibrationError, match=re.escape(f"field '{field}'")) as info:
        load_calibration(path)
    assert str(path) in str(info.value)


def test_unreadable_calibration_file(tmp_path):
    with pytest.raises(CalibrationError, match="no such calibration file"):
        load_calibration(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="not a readable JSON file"):
        load_calibration(tmp_path / "bad.json")


def test_mismatched_calibration_is_refused():
    cost = make_cost()
    check_calibration(cost, model="toy", block_size=BLOCK, tp_size=1)
    with pytest.raises(CalibrationError, match=r"metadata.block_size is 16.*block_size 128"):
        check_calibration(cost, block_size=128)
    with pytest.raises(CalibrationError, match="no field 'device'"):
        check_calibration(cost, device="hpu")


# -- analytic -----------------------------------------------------------------------------
TOY = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 100,
    "tie_word_embeddings": True,
}
NO_EFFICIENCY = Efficiency(memory=1.0, compute=1.0, link=1.0, per_layer_s=0.0, per_step_s=0.0)


def toy_cost(tp: int = 1, card: str = "h100", **config) -> AnalyticStepCost:
    cost = analytic_cost_for({**TOY, **config}, card, tp, "bfloat16")
    return AnalyticStepCost(
        cost.spec, cost.card, tp, "bfloat16", block_size=BLOCK, efficiency=NO_EFFICIENCY
    )


def test_analytic_bytes_and_flops_by_hand():
    cost = toy_cost()
    # one decode row with 9 tokens of context (eager: real sizes)
    b = cost.breakdown(StepWork(DECODE, 1, 1, 9, None))
    # per layer: q,o 2 x 64 x 64 + k,v 2 x 64 x 32 = 12,288; MLP 3 x 64 x 128 = 24,576
    layer = 12_288 + 24_576
    lm_head = 100 * 64  # tied: one matrix, read once
    kv_per_token = 2 * 2 * 2 * 16 * 2  # K and V x layers x kv heads x head_dim x bytes
    assert b.bytes_read == 2 * (2 * layer + lm_head) + (9 + 1) * kv_per_token
    attention = 4 * 2 * 4 * 16 * (1 * 9 + 1)  # 4 x layers x heads x head_dim x (q, k) pairs
    assert b.flops == 2 * (2 * layer + lm_head) + attention
    card = CARD_PERF["h100"]
    assert b.memory_s == pytest.approx(b.bytes_read / card.hbm_bytes_per_s)
    assert b.compute_s == pytest.approx(b.flops / card.bf16_flops)
    assert b.all_reduce_s == 0 and b.fixed_s == 0


def test_analytic_padded_step_runs_at_its_bucket():
    cost = toy_cost()
    real = StepWork(DECODE, 3, 3, 3 * 20, None)
    padded = real._replace(padded=StepShape(DECODE, 4, 1, 4))  # 4 rows x 64 keys
    b = cost.breakdown(padded)
    kv_per_token = 2 * 2 * 2 * 16 * 2
    assert b.bytes_read == 2 * (2 * 36_864 + 6_400) + (4 * 64 + 4) * kv_per_token
    assert cost.step_s(padded) > cost.step_s(real)


def test_analytic_regimes():
    cost = analytic_cost_for(
        {**TOY, "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
         "num_key_value_heads": 8, "num_hidden_layers": 32, "vocab_size": 128256,
         "tie_word_embeddings": False},
        "gaudi2",
    )  # fmt: skip
    decode = cost.breakdown(StepWork(DECODE, 8, 8, 8 * 512, None))
    assert decode.memory_s > 5 * decode.compute_s
    prefill = cost.breakdown(StepWork(PREFILL, 4, 4 * 1024, 0, None))
    assert prefill.compute_s > 5 * prefill.memory_s
    # decode time grows with batch and context; a bigger prefill takes longer
    assert cost.step_s(StepWork(DECODE, 64, 64, 64 * 512, None)) > cost.step_s(
        StepWork(DECODE, 8, 8, 8 * 512, None)
    )
    assert cost.step_s(StepWork(DECODE, 8, 8, 8 * 4096, None)) > cost.step_s(
        StepWork(DECODE, 8, 8, 8 * 512, None)
    )


def test_analytic_tensor_parallel_splits_work_and_pays_all_reduce():
    work = StepWork(PREFILL, 1, 512, 0, None)
    one, two = toy_cost(1), toy_cost(2)
    b1, b2 = one.breakdown(work), two.breakdown(work)
    assert b2.flops == pytest.approx(b1.flops / 2)
    assert b2.bytes_read == pytest.approx(b1.bytes_read / 2)
    card = CARD_PERF["h100"]
    message = 512 * 64 * 2  # tokens x hidden x bf16
    one_all_reduce = card.link_latency_s + 2 * (2 - 1) / 2 * message / card.link_bytes_per_s
    assert b2.all_reduce_s == pytest.approx(2 * 2 * one_all_reduce)
    assert b1.all_reduce_s == 0
    big = analytic_cost_for(
        {**TOY, "hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64,
         "num_key_value_heads": 8, "num_hidden_layers": 80, "vocab_size": 32000},
        "gaudi2", 1, "fp8",
    )  # fmt: skip
    big_tp4 = AnalyticStepCost(big.spec, big.card, 4, "fp8")
    decode = StepWork(DECODE, 32, 32, 32 * 1024, None)
    assert big_tp4.step_s(decode) < big.step_s(decode)


def test_analytic_moe_counts_active_experts_only():
    moe = toy_cost(num_local_experts=8, num_experts_per_tok=2)
    dense = toy_cost()
    one_token = StepWork(DECODE, 1, 1, 0, None)
    expert = 3 * 64 * 128
    # one token: 2 experts' weights read and computed (8 held)
    assert moe.breakdown(one_token).bytes_read - dense.breakdown(one_token).bytes_read == (
        2 * 2 * (2 - 1) * expert  # bytes x layers x one expert more than dense
    )
    assert moe.breakdown(one_token).flops - dense.breakdown(one_token).flops == 2 * 2 * expert
    # many tokens touch every expert: weight bytes reach all 8, flops stay at 2 per token
    many = StepWork(PREFILL, 1, 512, 0, None)
    assert moe.experts_touched(512) == pytest.approx(8.0)
    assert moe.breakdown(many).flops - dense.breakdown(many).flops == 2 * 512 * 2 * expert


def test_analytic_fp8_halves_linear_bytes_and_doubles_h100_peak():
    config = {**TOY, "tie_word_embeddings": False}
    bf16 = analytic_cost_for(config, "h100", 1, "bfloat16")
    fp8 = analytic_cost_for(config, "h100", 1, "fp8")
    work = StepWork(DECODE, 1, 1, 0, None)
    linears = 2 * 36_864
    assert bf16.breakdown(work).bytes_read - fp8.breakdown(work).bytes_read == linears
    prefill = StepWork(PREFILL, 1, 512, 0, None)
    ratio = bf16.breakdown(prefill).compute_s / fp8.breakdown(prefill).compute_s
    assert ratio == pytest.approx(2.0, rel=0.01)  # 1979 vs 989 TFLOP/s


@pytest.mark.parametrize("card", ["gaudi2", "gaudi3", "h100", "h200"])
def test_every_card_is_priced(card):
    assert card in CARDS and get_card_perf(card).family in FAMILY_EFFICIENCY
    cost = analytic_cost_for(TOY, card, 2, "bfloat16")
    assert cost.step_s(StepWork(DECODE, 4, 4, 64, StepShape(DECODE, 4, 1, 2))) > 0


def test_analytic_rejects_unknown_card_and_dtype():
    with pytest.raises(ValueError, match="card must be one of"):
        analytic_cost_for(TOY, "tpu", 1)
    with pytest.raises(ValueError, match="dtype must be one of"):
        analytic_cost_for(TOY, "h100", 1, "int4")


def test_published_comparison_is_reproducible():
    rows = compare_rows()
    assert [row.run for row in rows] == list(PUBLISHED)
    assert all(row.predicted_tok_s > 0 and row.batch >= 1 for row in rows)
    assert {row.run.card for row in rows} >= {"gaudi2", "gaudi3", "h100", "h200"}


def test_docstring_examples():
    import doctest

    import autoscale.sim.calibrate
    import autoscale.sim.step_calibrated

    for module in (autoscale.sim.step_calibrated, autoscale.sim.calibrate):
        assert doctest.testmod(module).failed == 0


def test_a_noisy_point_is_averaged_not_propagated_and_the_fastest_repeat_counts():
    import doctest

    from autoscale.sim import step_calibrated
    from autoscale.sim.step_calibrated import monotone

    assert doctest.testmod(step_calibrated).failed == 0
    # one contended shape (0.8 s among ~0.1 s ones) no longer lifts every larger one to 0.8
    smoothed = monotone([0.04, 0.8, 0.15, 0.3, 0.6, 1.2, 2.4])
    assert smoothed.tolist() == sorted(smoothed.tolist())
    assert smoothed[-1] == 2.4 and smoothed[-3] < 0.8
    noisy = Measurement(StepShape("decode", 1, 1, 1), median_s=0.9, min_s=0.01, max_s=1.3)
    assert noisy.seconds == 0.01
    assert Measurement(StepShape("decode", 1, 1, 1), median_s=0.02).seconds == 0.02
