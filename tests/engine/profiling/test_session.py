"""The executor-level capture (engine.profiling.session) on the local executor: the next N
steps profiled into trace.rank0.json + report.rank0.json, whichever threads start, run
and end it; one capture at a time."""

from __future__ import annotations

import json
import threading

import pytest

from engine import SamplingParams
from engine.profiling.session import ProfileBusyError
from engine.profiling.workload import Workload, profile_ranks


@pytest.fixture
def llm(tiny_model_dir, make_llm):
    return make_llm(tiny_model_dir("llama"), max_num_seqs=3, max_model_len=64)


def test_profile_ranks_writes_the_rank_files(llm, tmp_path):
    (report,) = profile_ranks(llm.engine, 4, tmp_path, Workload(3, 12, 3))
    assert json.loads((tmp_path / "report.rank0.json").read_text()) == report
    assert (report["tp_rank"], report["tp_size"], report["num_steps"]) == (0, 1, 4)
    assert report["num_steps_requested"] == 4 and report["trace"] == "trace.rank0.json"
    assert report["runner"]["eager_steps"] == 4 and report["device"] == "cpu"
    assert {"prefill", "decode"} <= set(report["by_kind"])
    for step in report["steps"]:
        assert sum(step["shares_ms"].values()) == pytest.approx(step["wall_ms"], rel=0.05)
    trace = json.loads((tmp_path / "trace.rank0.json").read_text())
    names = [e["name"] for e in trace["traceEvents"] if e.get("ph") == "X"]
    steps = [n for n in names if n.startswith("step ")]
    assert len(steps) == 4 and steps[0].startswith("step 0 prefill bs")
    assert any(n.startswith("module model.layers.0") for n in names)
    assert llm.engine.executor.num_profiled_steps == 0


def test_capture_ended_early_from_another_thread(llm, tmp_path):
    # a server: steps on a stepping thread, the capture asked for and ended from another
    executor = llm.engine.executor
    executor.start_profile(str(tmp_path), 100, modules=False)
    with pytest.raises(ProfileBusyError, match="already profiling"):
        executor.start_profile(str(tmp_path), 1)
    params = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    stepping = threading.Thread(target=lambda: llm.generate([[5, 6, 7]], params))
    stepping.start()
    stepping.join()
    num_steps = executor.num_profiled_steps
    assert num_steps == 3  # a prefill and two decodes, of the 100 asked for
    (rank,) = executor.stop_profile()
    assert rank.num_steps == num_steps == rank.report["num_steps"]
    assert rank.report["top_modules"] == [] and rank.report["module_ranges"] is False
    with pytest.raises(RuntimeError, match="no capture running"):
        executor.stop_profile()
    llm.generate([[5, 6, 7]], params)  # not profiled any more
    assert executor.num_profiled_steps == 0


@pytest.mark.parametrize("num_steps", [0, -1])
def test_capture_needs_a_step(llm, tmp_path, num_steps):
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1"):
        llm.engine.executor.start_profile(str(tmp_path), num_steps)
    with pytest.raises(RuntimeError, match="no capture running"):
        llm.engine.executor.stop_profile()
