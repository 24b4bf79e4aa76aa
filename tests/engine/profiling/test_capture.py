"""Capturing engine steps on a tiny model: a Chrome trace with named step ranges, and a
report whose shares add up to each step's wall time."""

from __future__ import annotations

import json

import pytest
from torch.profiler import ProfilerActivity

from engine.profiling.capture import profiler_activities
from engine.profiling.classify import SHARE_CATEGORIES
from engine.profiling.workload import REPORT_FILE, TRACE_FILE, Workload, profile_engine


@pytest.fixture
def report_dir(tiny_model_dir, make_llm, tmp_path):
    llm = make_llm(tiny_model_dir("llama"), max_num_seqs=4, max_model_len=64)
    workload = Workload(num_prompts=3, prompt_len=12, max_tokens=4)
    report = profile_engine(llm.engine, 9, tmp_path, workload)
    return tmp_path, report


def test_trace_is_chrome_json_with_named_steps(report_dir):
    out, _ = report_dir
    trace = json.loads((out / TRACE_FILE).read_text())
    complete = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    assert complete and all(e["name"] and e["dur"] >= 0 for e in complete)
    steps = [e["name"] for e in complete if e["name"].startswith("step ")]
    assert len(steps) == 9
    # step <index> <kind> <bucket> <mode>
    index, kind, bucket, mode = steps[0].split(" ")[1:]
    assert (index, kind, mode) == ("0", "prefill", "eager")
    assert bucket.startswith("bs") and "-q" in bucket and "-blk" in bucket
    assert any(e["name"].startswith("module model.layers.0") for e in complete)


def test_report_shares_sum_to_step_time(report_dir):
    out, report = report_dir
    assert json.loads((out / REPORT_FILE).read_text()) == json.loads(json.dumps(report))
    assert report["num_steps"] == 9
    for step in report["steps"]:
        assert set(step["shares_ms"]) == set(SHARE_CATEGORIES)
        assert sum(step["shares_ms"].values()) == pytest.approx(step["wall_ms"], rel=0.05)
        assert step["shares_ms"]["idle"] == 0  # on the CPU the device is the host thread
    # 3 prompts, 4 new tokens each: a prefill step, then decode steps, then a new wave
    assert {"prefill", "decode"} <= set(report["by_kind"])
    for group in report["by_kind"].values():
        assert sum(group["percent"].values()) == pytest.approx(100, rel=0.05)
    assert report["by_kind"]["decode"]["eager_steps"] == report["by_kind"]["decode"]["steps"]
    assert report["runner"]["graph_steps"] == 0
    categories = {op["category"] for op in report["top_ops"]}
    assert {"matmul", "attention"} <= categories
    assert any(m["module"].endswith("self_attn") for m in report["top_modules"])


def test_without_module_ranges(tiny_model_dir, make_llm, tmp_path):
    llm = make_llm(tiny_model_dir("llama"), max_num_seqs=2, max_model_len=64)
    report = profile_engine(llm.engine, 3, tmp_path, Workload(2, 8, 2), modules=False)
    assert report["top_modules"] == [] and report["module_ranges"] is False
    for step in report["steps"]:
        assert sum(step["shares_ms"].values()) == pytest.approx(step["wall_ms"], rel=0.05)


def test_workload_must_fit_the_engine(tiny_model_dir, make_llm, tmp_path):
    llm = make_llm(tiny_model_dir("llama"), max_num_seqs=2, max_model_len=32)
    with pytest.raises(ValueError, match="max_model_len 32"):
        profile_engine(llm.engine, 2, tmp_path, Workload(prompt_len=30, max_tokens=8))
    with pytest.raises(ValueError, match="num_prompts must be at least 1"):
        profile_engine(llm.engine, 2, tmp_path, Workload(num_prompts=0))


def test_activities_follow_the_device(monkeypatch, caplog):
    assert profiler_activities("cpu") == [ProfilerActivity.CPU]
    assert profiler_activities("cuda") == [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    assert profiler_activities("hpu") == [ProfilerActivity.CPU, ProfilerActivity.HPU]
    # a torch without Habana's activity: the host side only, said in a warning
    monkeypatch.delattr(ProfilerActivity, "HPU", raising=False)
    assert profiler_activities("hpu") == [ProfilerActivity.CPU]
    assert "no ProfilerActivity.HPU" in caplog.text
