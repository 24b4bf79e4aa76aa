"""Profiling one rank's next N steps, while it keeps serving.

An executor (engine.executor.LocalExecutor, or each rank of sharding's TPWorker) holds a
`RankProfiler`. `start` arms a `ProfileSession` for the rank's next `num_steps` executed
steps; the executor runs every step through `RankProfiler.run`; the session opens
torch.profiler at the first step, names one "step ..." range per step (engine.profiling.
capture: kind, bucket, eager/graph) and closes the profiler right after the last one;
`finish` ends the capture early if fewer steps came (an idle engine), writes
`trace.rank<r>.json` and `report.rank<r>.json` and returns a `RankProfile`.

torch.profiler records, and must be started and stopped on, one thread. The steps of a
serving engine run on its stepping thread while a capture is asked for (and may have to
end) from another, so a session runs the steps it profiles on a thread of its own: the
profiler starts, records and stops there whichever thread calls. The step's range covers
what the executor does on the rank (the forward, sampling on rank 0, mark_step), not the
scheduler's work on the driver. Importing this module loads no torch.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from engine.profiling.capture import (
    STEP_PREFIX,
    StepRecord,
    bucket_label,
    module_ranges,
    profiler_activities,
    step_kind,
    write_trace,
)

T = TypeVar("T")

RANK_TRACE_FILE = "trace.rank{tp_rank}.json"
RANK_REPORT_FILE = "report.rank{tp_rank}.json"


class ProfileBusyError(RuntimeError):
    """A capture is already running on this executor (one at a time)."""


@dataclass(frozen=True)
class RankProfile:
    """One rank's capture: the steps it profiled, where its files are (on the rank's
    node; None when no step ran, so nothing was recorded) and its report (the JSON of
    engine.profiling.report.analyze, plus who and what was profiled)."""

    tp_rank: int
    num_steps: int
    trace_path: str | None
    report_path: str | None
    report: dict[str, Any] | None


class ProfileSession:
    """The capture of one rank's next `num_steps` steps (see the module docstring).

    device: the rank's engine.devices.Device (its name picks the profiler activities; it
        is synchronized before the profiler stops, so the last step's device work is in).
    runner: the rank's ModelRunner (eager/graph counters; its model for module ranges).
    modules: add a "module <path>" range per module call of eager forwards (host cost).
    """

    def __init__(
        self,
        out_dir: str | Path,
        num_steps: int,
        *,
        tp_rank: int,
        tp_size: int,
        device: Any,
        runner: Any,
        modules: bool = True,
    ):
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        self.out_dir = Path(out_dir)
        self.num_steps = num_steps
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.device, self.runner, self.modules = device, runner, modules
        self.activities = profiler_activities(device.name)
        self.records: list[StepRecord] = []
        self._profiler: Any = None
        self._hooks = contextlib.ExitStack()
        self._is_stopped = False
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"profile-rank{tp_rank}"
        )

    @property
    def is_capturing(self) -> bool:
        """True until the last step ran or the capture was ended."""
        return not self._is_stopped and len(self.records) < self.num_steps

    def run_step(self, shape: Any, step: Callable[[], T]) -> T:
        """Run `step()`, one step of input shape `shape` (a StepShape), under the profiler
        on the session's thread; returns what it returns."""
        return self._thread.submit(self._profiled_step, shape, step).result()

    def _profiled_step(self, shape: Any, step: Callable[[], T]) -> T:
        from torch.autograd.profiler import record_function

        if not self.is_capturing:  # ended while this step waited for the thread
            return step()
        if self._profiler is None:
            self._open()
        index = len(self.records)
        eager, replays = self._counts()
        with record_function(f"{STEP_PREFIX}{index}"):
            out = step()
        eager_now, replays_now = self._counts()
        mode = "graph" if replays_now > replays else "eager" if eager_now > eager else "none"
        self.records.append(StepRecord(index, step_kind(shape), bucket_label(shape), mode))
        if len(self.records) == self.num_steps:
            self._stop()
        return out

    def _counts(self) -> tuple[int, int]:
        return self.runner.num_eager_runs, self.runner.num_graph_replays

    def _open(self) -> None:
        from torch.profiler import profile

        self._profiler = profile(activities=self.activities)
        self._profiler.__enter__()
        if self.modules:
            self._hooks.enter_context(module_ranges(self.runner.model))

    def _stop(self) -> None:
        """On the session's thread: close the profiler (the device's queued work first)."""
        self._is_stopped = True
        if self._profiler is None:
            return
        try:
            self.device.synchronize()
        finally:
            self._hooks.close()
            self._profiler.__exit__(None, None, None)

    def finish(self) -> RankProfile:
        """End the capture (at once if steps are missing), write this rank's trace and
        report into out_dir, return them. Call once."""
        if not self._is_stopped:
            self._thread.submit(self._stop).result()
        self._thread.shutdown(wait=True)
        if self._profiler is None:
            return RankProfile(self.tp_rank, 0, None, None, None)
        from engine.profiling.report import analyze, load_trace

        trace_path = self.out_dir / RANK_TRACE_FILE.format(tp_rank=self.tp_rank)
        report_path = self.out_dir / RANK_REPORT_FILE.format(tp_rank=self.tp_rank)
        write_trace(
            self._profiler, trace_path, {f"{STEP_PREFIX}{r.index}": r.name for r in self.records}
        )
        report = analyze(load_trace(trace_path)) | self._about()
        report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        return RankProfile(
            self.tp_rank, len(self.records), str(trace_path), str(report_path), report
        )

    def _about(self) -> dict[str, Any]:
        return {
            "device": self.device.name,
            "activities": [a.name for a in self.activities],
            "tp_rank": self.tp_rank,
            "tp_size": self.tp_size,
            "num_steps_requested": self.num_steps,
            "runner": {
                "eager_steps": sum(r.mode == "eager" for r in self.records),
                "graph_steps": sum(r.mode == "graph" for r in self.records),
                "idle_steps": 0,
            },
            "module_ranges": self.modules,
            "trace": RANK_TRACE_FILE.format(tp_rank=self.tp_rank),
        }


class RankProfiler:
    """A rank's profiling state: idle, or one ProfileSession. Thread-safe: steps run
    through `run` on one thread while `start`/`finish` come from another."""

    def __init__(self, tp_rank: int = 0, tp_size: int = 1):
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self._session: ProfileSession | None = None
        self._lock = threading.Lock()

    def start(
        self, out_dir: str | Path, num_steps: int, device: Any, runner: Any, modules: bool
    ) -> None:
        """Profile the next `num_steps` steps. Raises ProfileBusyError while a capture
        runs, ValueError for num_steps < 1."""
        with self._lock:
            if self._session is not None:
                raise ProfileBusyError(
                    f"TP rank {self.tp_rank} is already profiling "
                    f"({len(self._session.records)} of {self._session.num_steps} steps)"
                )
            self._session = ProfileSession(
                out_dir,
                num_steps,
                tp_rank=self.tp_rank,
                tp_size=self.tp_size,
                device=device,
                runner=runner,
                modules=modules,
            )

    @property
    def num_captured(self) -> int:
        """Steps the running capture has profiled so far (0 when none runs)."""
        session = self._session
        return len(session.records) if session is not None else 0

    def run(self, shape: Any, step: Callable[[], T]) -> T:
        """Run one step: under the profiler while a capture wants it, else as is."""
        if self._session is None:  # the usual case: no lock taken
            return step()
        with self._lock:
            session = self._session
            if session is not None and session.is_capturing:
                return session.run_step(shape, step)
        return step()

    def finish(self) -> RankProfile:
        """End the running capture and write its files (see ProfileSession.finish).
        Raises RuntimeError when none runs."""
        with self._lock:
            session, self._session = self._session, None
        if session is None:
            raise RuntimeError(f"TP rank {self.tp_rank} has no capture running: start one")
        return session.finish()


__all__ = [
    "RANK_REPORT_FILE",
    "RANK_TRACE_FILE",
    "ProfileBusyError",
    "ProfileSession",
    "RankProfile",
    "RankProfiler",
]
