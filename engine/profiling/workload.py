"""Profile an engine on a synthetic workload: waves of random-token prompts, greedy, no
EOS stop, until N steps are captured. `profile_engine` profiles the engine's whole steps
in this process (tp_size 1: scheduling included) and writes `trace.json` and
`report.json`; `profile_ranks` has every rank of the executor profile its part of the
same steps (engine.profiling.session; any tp_size) and writes `trace.rank<r>.json` and
`report.rank<r>.json` per rank."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.profiling.capture import StepRecord, capture_steps
from engine.profiling.report import analyze, load_trace

TRACE_FILE = "trace.json"
REPORT_FILE = "report.json"
# profile_ranks gives up after this many engine steps per step asked for
MAX_ENGINE_STEPS_PER_PROFILED = 4


@dataclass(frozen=True)
class Workload:
    """A wave of `num_prompts` prompts of `prompt_len` random tokens, `max_tokens` new
    tokens each; a new wave starts whenever the last one has finished."""

    num_prompts: int = 4
    prompt_len: int = 32
    max_tokens: int = 16
    seed: int = 0

    def check(self) -> None:
        for name in ("num_prompts", "prompt_len", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def profile_engine(
    engine: Any,
    num_steps: int,
    out_dir: str | Path,
    workload: Workload = Workload(),
    modules: bool = True,
) -> dict[str, Any]:
    """Capture `num_steps` steps of `engine` on `workload`; write out_dir/trace.json and
    out_dir/report.json; return the report. `modules`: record module ranges (see
    capture_steps). Requests left in flight are aborted."""
    refill = _refiller(engine, workload)
    out_dir = Path(out_dir)
    trace_path = out_dir / TRACE_FILE
    device_name = engine.executor.device.name if hasattr(engine.executor, "device") else "cpu"
    try:
        records = capture_steps(engine, num_steps, trace_path, refill, device_name, modules)
    finally:
        for request_id in list(engine.requests):
            engine.abort_request(request_id)
    report = analyze(load_trace(trace_path))
    report |= {
        "device": device_name,
        "model": str(engine.model_path),
        "workload": workload.__dict__,
        "runner": _runner_summary(records),
        "module_ranges": modules,
        "trace": TRACE_FILE,
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def profile_ranks(
    engine: Any,
    num_steps: int,
    out_dir: str | Path,
    workload: Workload = Workload(),
    modules: bool = True,
) -> list[dict[str, Any]]:
    """Run `num_steps` steps of `engine` on `workload` while every rank of its executor
    profiles them (executor.start_profile); each rank writes out_dir/trace.rank<r>.json
    and out_dir/report.rank<r>.json. Returns the reports in rank order (with the model
    and workload). Requests left in flight are aborted."""
    refill = _refiller(engine, workload)
    executor = engine.executor
    executor.start_profile(str(out_dir), num_steps, modules)
    try:
        # a step that runs no forward (nothing schedulable) profiles nothing: bounded
        for _ in range(num_steps * MAX_ENGINE_STEPS_PER_PROFILED):
            if executor.num_profiled_steps >= num_steps:
                break
            if not engine.has_unfinished:
                refill()
            engine.step_deltas()
    finally:
        ranks = executor.stop_profile()
        for request_id in list(engine.requests):
            engine.abort_request(request_id)
    if any(rank.num_steps < num_steps for rank in ranks):
        counts = [rank.num_steps for rank in ranks]
        raise RuntimeError(
            f"the ranks profiled {counts} of {num_steps} steps: the engine "
            "ran no forward in most steps (is its KV cache too small?)"
        )
    reports = []
    for rank in ranks:
        report = rank.report | {"model": str(engine.model_path), "workload": workload.__dict__}
        Path(rank.report_path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        reports.append(report)
    return reports


def _refiller(engine: Any, workload: Workload) -> Callable[[], None]:
    """refill(): add the workload's next wave of requests to `engine`. Raises ValueError
    when the workload does not fit the engine."""
    from engine.sampling_params import SamplingParams

    workload.check()
    max_len = engine.config.max_model_len
    if workload.prompt_len + workload.max_tokens > max_len:
        raise ValueError(
            f"prompt_len {workload.prompt_len} + max_tokens {workload.max_tokens} exceeds the "
            f"engine's max_model_len {max_len}"
        )
    rng = random.Random(workload.seed)
    vocab = engine.text_config.vocab_size
    params = SamplingParams(max_tokens=workload.max_tokens, temperature=0.0, ignore_eos=True)
    waves = [0]

    def refill() -> None:
        wave = waves[0]
        waves[0] += 1
        for i in range(workload.num_prompts):
            prompt = [rng.randrange(vocab) for _ in range(workload.prompt_len)]
            engine.add_request(f"profile-{wave}-{i}", prompt, params)

    return refill


def _runner_summary(records: list[StepRecord]) -> dict[str, int]:
    return {
        "eager_steps": sum(r.mode == "eager" for r in records),
        "graph_steps": sum(r.mode == "graph" for r in records),
        "idle_steps": sum(r.kind == "idle" for r in records),
    }
