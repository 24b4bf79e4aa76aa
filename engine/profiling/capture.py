"""Run N engine steps under torch.profiler and write a Chrome/Perfetto JSON trace.

Each step is one "step ..." range named `step <index> <kind> <bucket> <mode>`: kind is
prefill, decode or verify (a decode step feeding several tokens per row), bucket the
padded shape (`bs<batch>-q<query_len>-blk<num_blocks>`) and mode "graph" when the step's
forward replayed a captured graph, else "eager". The step is wrapped from outside the
engine (the shape is read from the executor's input, the mode from the runner's counters)
and the range is named once the step is known, when the trace is written. Eager forwards
also get one "module <path>" range per module call, for the report's module split.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STEP_PREFIX = "step "
MODULE_PREFIX = "module "
# trace categories of record_function ranges: on the host, and mirrored on a GPU's timeline
_ANNOTATIONS = ("user_annotation", "gpu_user_annotation")


@dataclass(frozen=True)
class StepRecord:
    """What one profiled step ran: its kind, bucket and forward mode."""

    index: int
    kind: str  # "prefill" | "decode" | "verify" | "idle" (nothing was scheduled)
    bucket: str
    mode: str  # "eager" | "graph" | "none"

    @property
    def name(self) -> str:
        return f"{STEP_PREFIX}{self.index} {self.kind} {self.bucket} {self.mode}"


def step_kind(shape: Any) -> str:
    """prefill, decode, or verify (a decode step that feeds several tokens per row)."""
    if shape.kind == "decode" and shape.query_len > 1:
        return "verify"
    return shape.kind


def bucket_label(shape: Any) -> str:
    return f"bs{shape.batch_size}-q{shape.query_len}-blk{shape.num_blocks}"


def profiler_activities(device_name: str) -> list:
    """torch.profiler activities for `device_name`: CPU always, CUDA on cuda, HPU on hpu
    (the Gaudi bridge's profiler plugs in as ProfilerActivity.HPU; where this torch has no
    such activity, the trace holds the host side only and a warning says so)."""
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU]
    if device_name == "cuda":
        activities.append(ProfilerActivity.CUDA)
    elif device_name == "hpu":
        hpu = getattr(ProfilerActivity, "HPU", None)
        if hpu is None:
            logger.warning("this torch has no ProfilerActivity.HPU: profiling the host only")
        else:
            activities.append(hpu)
    return activities


class _RecordingExecutor:
    """The engine's executor, noting the shape of each step's input."""

    def __init__(self, executor: Any):
        self._executor = executor
        self.last_shape = None

    def execute(self, inp: Any) -> Any:
        self.last_shape = inp.shape
        return self._executor.execute(inp)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._executor, name)


@contextmanager
def module_ranges(model: Any) -> Iterator[None]:
    """Open a "module <path>" profiler range around every submodule's forward (eager
    runs only: a replayed graph calls no module)."""
    from torch.autograd.profiler import record_function

    stack: list[Any] = []

    def enter(path: str) -> Callable:
        def hook(module, args):
            rf = record_function(MODULE_PREFIX + path)
            rf.__enter__()
            stack.append(rf)

        return hook

    def leave(module, args, output):
        if stack:
            stack.pop().__exit__(None, None, None)

    handles = []
    for path, module in model.named_modules():
        if path:
            handles.append(module.register_forward_pre_hook(enter(path)))
            handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        while stack:
            stack.pop().__exit__(None, None, None)


def _runner_counts(executor: Any) -> tuple[int, int]:
    stats = executor.runner_stats()
    return stats["num_eager_runs"], stats["num_graph_replays"]


def _model_of(executor: Any) -> Any:
    runner = getattr(executor, "runner", None)
    return getattr(runner, "model", None)


def capture_steps(
    engine: Any,
    num_steps: int,
    trace_path: str | Path,
    refill: Callable[[], None],
    device_name: str = "cpu",
    modules: bool = True,
) -> list[StepRecord]:
    """Profile `num_steps` engine steps (`engine.step_deltas()`); write the trace to
    `trace_path`.

    `refill()` is called before a step whenever the engine has nothing left to do; it must
    add requests. `modules` adds the module ranges (their hooks cost host time). Returns
    each step's record (its name is its range in the trace).
    """
    from torch.autograd.profiler import record_function
    from torch.profiler import profile

    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    executor = engine.executor
    recording = _RecordingExecutor(executor)
    model = _model_of(executor) if modules else None
    records: list[StepRecord] = []
    engine.executor = recording
    try:
        with (
            profile(activities=profiler_activities(device_name)) as prof,
            module_ranges(model) if model is not None else _nothing(),
        ):
            for index in range(num_steps):
                if not engine.has_unfinished:
                    refill()
                recording.last_shape = None
                eager, replays = _runner_counts(executor)
                with record_function(f"{STEP_PREFIX}{index}"):
                    engine.step_deltas()  # what a server runs (no cumulative outputs)
                records.append(_record(index, recording.last_shape, executor, eager, replays))
    finally:
        engine.executor = executor
    write_trace(prof, trace_path, {f"{STEP_PREFIX}{r.index}": r.name for r in records})
    return records


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _record(index: int, shape: Any, executor: Any, eager: int, replays: int) -> StepRecord:
    if shape is None:
        return StepRecord(index, "idle", "none", "none")
    eager_now, replays_now = _runner_counts(executor)
    mode = "graph" if replays_now > replays else "eager" if eager_now > eager else "none"
    return StepRecord(index, step_kind(shape), bucket_label(shape), mode)


def write_trace(prof: Any, trace_path: str | Path, renames: dict[str, str]) -> None:
    """Export `prof`'s Chrome trace to `trace_path`, renaming the step ranges."""
    trace_path = Path(trace_path)
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=trace_path.parent)
    os.close(fd)
    try:
        prof.export_chrome_trace(tmp)
        with open(tmp, encoding="utf-8") as stream:
            trace = json.load(stream)
    finally:
        os.unlink(tmp)
    for event in trace.get("traceEvents", []):
        if event.get("cat") in _ANNOTATIONS and event.get("name") in renames:
            event["name"] = renames[event["name"]]
    with trace_path.open("w", encoding="utf-8") as stream:
        json.dump(trace, stream)
