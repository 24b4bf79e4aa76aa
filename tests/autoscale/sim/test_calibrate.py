"""`gaudi-serve calibrate` on a tiny model: a real engine, a tiny grid, the file it writes
and the model loaded back from it."""

from __future__ import annotations

import json

import pytest

from autoscale.sim.calibrate import grid_shapes
from autoscale.sim.step_cost import DECODE, PREFILL, StepWork
from autoscale.sim.step_models import check_calibration, load_calibration
from cluster.commands.cli import main
from engine.buckets import BucketConfig
from engine.shapes import StepShaper


def write_config(path, model_dir) -> None:
    path.write_text(
        f"""
models:
  - name: tiny
    path: {model_dir}
    device: cpu
    engine:
      max_num_seqs: 4
      max_model_len: 64
      max_num_batched_tokens: 64
"""
    )


@pytest.fixture(scope="module")
def calibrated(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    config, out = root / "serve.yaml", root / "calib.json"
    write_config(config, tiny_model_dir("llama"))
    args = ["--max-values-per-dim", "2", "--repeats", "2", "--check-tokens", "3"]
    code = main(["calibrate", "--config", str(config), "--out", str(out), *args])
    assert code == 0
    return out


def test_calibrate_writes_measurements_metadata_and_model(calibrated):
    doc = json.loads(calibrated.read_text())
    meta = doc["metadata"]
    assert meta["model"].startswith("tiny-llama")
    assert (meta["device"], meta["tp_size"], meta["block_size"]) == ("cpu", 1, 16)
    assert meta["buckets"]["decode_batch_sizes"] == [1, 2, 4]
    assert meta["gaudi_serve_version"] and meta["date"]
    # 2 batch x 2 block values of decode; prefill at both widths of the kept pairs
    kinds = [m["kind"] for m in doc["measurements"]]
    assert kinds.count(DECODE) == 4 and kinds.count(PREFILL) >= 2
    for m in doc["measurements"]:
        assert m["num_repeats"] == 2 and 0 < m["min_s"] <= m["median_s"] <= m["max_s"]
    assert set(doc["model"]["host_overhead"]) == {PREFILL, DECODE}
    assert doc["model"]["engine_check"][DECODE]["num_steps"] >= 1


def test_calibrated_model_reproduces_its_measurements(calibrated):
    cost = load_calibration(calibrated)
    check_calibration(cost, device="cpu", block_size=16, tp_size=1)
    for m in cost.raw:
        s = m.shape
        work = StepWork(s.kind, s.batch_size, s.num_tokens, 0, s)
        # the table is the fastest repeat, made monotone (pool adjacent violators)
        assert m.min_s <= m.median_s
        assert cost.forward_s(work) == cost.table[s]
    shaper = StepShaper(
        BucketConfig.from_limits(
            max_num_seqs=4, max_model_len=64, block_size=16, max_num_batched_tokens=64
        ),
        block_size=16,
    )
    assert {m.shape for m in cost.raw} == set(grid_shapes(shaper, 2))
    assert set(grid_shapes(shaper, 2)) <= set(shaper.warmup_shapes())


def test_calibrate_bad_arguments_exit_2(tmp_path, tiny_model_dir, capsys):
    config = tmp_path / "serve.yaml"
    write_config(config, tiny_model_dir("llama"))
    code = main(["calibrate", "--config", str(config), "--model", "nope", "--out", "x.json"])
    assert code == 2
    assert "no model 'nope'" in capsys.readouterr().err


def test_a_noisy_calibration_is_flagged():
    from cluster.commands.calibrate import noise_warnings

    noisy = {
        "engine_check": {"prefill": {"num_steps": 3, "total_ratio": 10.5}},
    }
    cost = _noisy_cost()
    warnings = noise_warnings(cost, noisy, load_average=9.0, num_cpus=2)
    assert len(warnings) == 3
    assert "repeats over 2x apart" in warnings[0]
    assert "engine check's prefill steps took 0.10x" in warnings[1]
    assert "load average 9.0 on 2 CPUs" in warnings[2]
    quiet = {"engine_check": {"decode": {"num_steps": 9, "total_ratio": 1.02}}}
    assert noise_warnings(_quiet_cost(), quiet, load_average=1.0, num_cpus=2) == []


def _cost(spread: float):
    from autoscale.sim.step_calibrated import CalibratedStepCost, Measurement
    from engine.shapes import StepShape

    ms = [
        Measurement(
            StepShape("decode", b, 1, n), 0.01 * b * n, 0.01 * b * n, 0.01 * b * n * spread, 3
        )
        for b in (1, 4)
        for n in (1, 4)
    ]
    ms += [
        Measurement(StepShape("prefill", 1, q, q // 16), 1e-4 * q, 1e-4 * q, 1e-4 * q * spread, 3)
        for q in (16, 64)
    ]
    return CalibratedStepCost.from_measurements({"block_size": 16}, ms)


def _noisy_cost():
    return _cost(spread=5.0)


def _quiet_cost():
    return _cost(spread=1.1)
