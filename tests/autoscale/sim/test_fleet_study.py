"""The fleet study's pure helpers (benchmarks/fleet_study_setup.py): the config builder,
the planner's deployments, the first guess of replicas and the cards-needed search."""

from __future__ import annotations

import json

import pytest

from autoscale.sim.step_models import analytic_cost_for
from benchmarks.fleet_study_setup import (
    MODELS,
    choose_deployment,
    estimate_replicas,
    llama_config,
    smallest_passing,
    study_trace,
    write_model_config,
)
from sharding.model_spec import ModelSpec


@pytest.mark.parametrize(("name", "params_b"), [("Llama-3.1-70B", 70.6), ("Llama-3.1-405B", 405.9)])
def test_configs_have_the_published_sizes(name, params_b):
    spec = ModelSpec.from_config(MODELS[name].config)
    assert spec.num_params / 1e9 == pytest.approx(params_b, rel=0.01)


def test_llama_config_names_a_bad_dimension():
    with pytest.raises(ValueError, match="num_kv_heads"):
        llama_config(8192, 80, 64, 5, 28672)
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        llama_config(0, 80, 64, 8, 28672)


def test_write_model_config_round_trips(tmp_path):
    model = MODELS["Llama-3.1-70B"]
    folder = write_model_config(tmp_path, model)
    assert json.loads((folder / "config.json").read_text()) == model.config


def test_deployments_follow_the_planner():
    big = MODELS["Llama-3.1-405B"].config
    gaudi2 = choose_deployment(big, "gaudi2")
    assert (gaudi2.dtype, gaudi2.tp_size, gaudi2.replicas_per_node) == ("fp8", 8, 1)
    assert "bfloat16 does not fit" in gaudi2.note
    gaudi3 = choose_deployment(big, "gaudi3")
    assert (gaudi3.dtype, gaudi3.tp_size) == ("bfloat16", 8)
    # 70B on h100: tp 2 holds too little KV for 16 sequences of 8,192 tokens.
    h100 = choose_deployment(MODELS["Llama-3.1-70B"].config, "h100")
    assert (h100.dtype, h100.tp_size, h100.replicas_per_node) == ("bfloat16", 4, 2)
    assert h100.kv_cache_tokens >= 16 * 8192


def test_estimate_grows_with_the_rate():
    model = MODELS["Llama-3.1-70B"]
    cost = analytic_cost_for(model.config, "gaudi3", 2, "bfloat16")
    guesses = [estimate_replicas(cost, rate, 1000, 250, model.slo_tpot_s) for rate in (1, 8, 32)]
    assert guesses == sorted(guesses)
    assert guesses[0] >= 1 and guesses[-1] > guesses[0]


@pytest.mark.parametrize("start", [1, 3, 7, 12, 20])
@pytest.mark.parametrize("answer", [1, 2, 5, 11, 16, None])
def test_smallest_passing_finds_the_threshold_from_any_start(start, answer):
    calls = []

    def passes(n):
        calls.append(n)
        return answer is not None and n >= answer

    found, tried = smallest_passing(passes, start, 1, 16)
    assert found == answer
    assert tried == calls and len(set(calls)) == len(calls)  # each count simulated once
    assert len(tried) <= 10


def test_smallest_passing_from_a_good_start_is_cheap():
    found, tried = smallest_passing(lambda n: n >= 6, 6, 1, 32)
    assert (found, tried) == (6, [6, 5])


def test_smallest_passing_rejects_an_empty_range():
    with pytest.raises(ValueError, match="low"):
        smallest_passing(lambda n: True, 1, 5, 4)


def test_trace_is_a_chat_workload():
    trace = study_trace(rate=8.0, duration_s=600.0)
    num = len(trace)
    assert 8.0 * 600 * 0.8 < num < 8.0 * 600 * 1.2
    assert 850 < sum(r.prompt_tokens for r in trace) / num < 1150
    assert 200 < sum(r.output_tokens for r in trace) / num < 300
    assert 0.4 < sum(r.prefix_id is not None for r in trace) / num < 0.6
    assert trace == study_trace(rate=8.0, duration_s=600.0)
