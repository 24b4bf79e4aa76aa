"""Profiling on the HPU path against the fake Gaudi bridge: the calls the real bridge
would receive (torch's profiler asking `torch.hpu.is_available()`, a trace started with
the HPU activity, a mark_step per step, the device synchronized before the trace stops),
and a capture that still works, host side only, where torch sees no HPU profiler."""

from __future__ import annotations

import json

import pytest

from engine.devices import get_device
from engine.profiling.classify import SHARE_CATEGORIES
from engine.profiling.workload import Workload, profile_ranks

PROFILER_CALLS = ("hpu.is_available", "profiler.start", "mark_step", "hpu.synchronize")


@pytest.fixture
def hpu_llm(fake_habana, make_llm, tiny_model_dir):
    """An engine whose executor runs on the fake HPU (the runner computes on the CPU)."""
    llm = make_llm(tiny_model_dir("llama"), max_num_seqs=2, max_model_len=64, warmup=False)
    llm.engine.executor.device = get_device("hpu")
    return llm


def profiler_calls(fake_habana) -> list[tuple[str, tuple]]:
    names = (*PROFILER_CALLS, "profiler.stop")
    return [(name, args) for name, args in fake_habana.calls if name in names]


def test_profile_asks_the_bridge_for_hpu_activity(hpu_llm, fake_habana, monkeypatch, tmp_path):
    from habana_frameworks.torch import activity_profiler

    activity_profiler.install(monkeypatch.setattr)
    fake_habana.clear()
    (report,) = profile_ranks(hpu_llm.engine, 3, tmp_path, Workload(2, 8, 4))
    calls = profiler_calls(fake_habana)
    assert calls == [
        ("hpu.is_available", ()),  # torch.profiler checks the device first
        ("profiler.start", (("CPU", "HPU"),)),
        *[("mark_step", ())] * 3,  # one per profiled step
        ("hpu.synchronize", ()),  # the last step's device work is in the trace
        ("hpu.synchronize", ()),  # torch.profiler's own, through torch.hpu
        ("profiler.stop", ()),
    ]
    assert report["device"] == "hpu" and report["activities"] == ["CPU", "HPU"]
    assert report["num_steps"] == 3
    for step in report["steps"]:
        assert set(step["shares_ms"]) == set(SHARE_CATEGORIES)
        assert sum(step["shares_ms"].values()) == pytest.approx(step["wall_ms"], rel=0.05)
    trace = json.loads((tmp_path / "trace.rank0.json").read_text())
    assert sum(e.get("name", "").startswith("step ") for e in trace["traceEvents"]) == 3


def test_torch_without_an_hpu_profiler_profiles_the_host(hpu_llm, fake_habana, tmp_path):
    # without the bridge's profiler plugin torch warns and traces the host side only
    fake_habana.clear()
    with pytest.warns(UserWarning, match="HPU is not available, disabling HPU profiling"):
        (report,) = profile_ranks(hpu_llm.engine, 2, tmp_path, Workload(2, 8, 4))
    assert report["num_steps"] == 2 and not report["device_timeline"]
    assert fake_habana.count("mark_step") == 2 and fake_habana.count("hpu.synchronize") == 1
    assert fake_habana.count("profiler.start") == 0
