"""Where each profiled step's time went, from a trace of `capture_steps` or a ProfileSession.

A step's wall time (its "step ..." range on the host) is cut into elementary segments,
each counted once:
- a device op runs (several at once: the first of classify.PRIORITY): its category,
  "matmul", "attention", "elementwise" or "communication" (engine.profiling.classify).
  Device ops are the kernels on the device's timeline where the trace has one (CUDA,
  HPU); on the CPU they are the host thread's torch ops, nested ones included, so a
  collective inside a wrapper op (DeepSpeed AutoTP's RowParallel runs its all-reduce)
  counts as communication (nested ops overlap: the PRIORITY rule picks one);
- no device op runs and the host thread is inside a torch op (launching, waiting on the
  device): "idle";
- no device op runs and the host thread runs no torch op (scheduling, building inputs,
  processing outputs, Python between ops): "host".
So the six shares of a step add up to its wall time. On the CPU "idle" is zero: the device
is the host thread itself.
"""

from __future__ import annotations

import bisect
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.profiling.capture import MODULE_PREFIX, STEP_PREFIX
from engine.profiling.classify import CATEGORIES, PRIORITY, SHARE_CATEGORIES, classify

# trace categories of device work (CUDA's kernels and copies; the Gaudi profiler's engines)
_DEVICE_CATEGORY = re.compile(r"kernel|gpu_mem|hpu|mme|tpc|dma", re.IGNORECASE)
TOP_N = 10


@dataclass
class StepTime:
    """One step: its identity from the range name, wall time and shares, in ms."""

    index: int
    kind: str
    bucket: str
    mode: str
    wall_ms: float
    shares_ms: dict[str, float] = field(default_factory=dict)


def load_trace(path: str | Path) -> dict[str, Any]:
    with Path(path).open(encoding="utf-8") as stream:
        return json.load(stream)


def _complete(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("ph") == "X" and "dur" in e and "ts" in e]


def _is_device(event: dict) -> bool:
    cat = str(event.get("cat", ""))
    return cat not in ("cpu_op", "user_annotation", "python_function", "cuda_runtime") and bool(
        _DEVICE_CATEGORY.search(cat)
    )


def _parse_step(name: str) -> tuple[int, str, str, str] | None:
    parts = name[len(STEP_PREFIX) :].split(" ")
    if not name.startswith(STEP_PREFIX) or not parts[0].isdigit():
        return None
    kind, bucket, mode = [*parts[1:], "unknown", "unknown", "unknown"][:3]
    return int(parts[0]), kind, bucket, mode


@dataclass
class _HostOp:
    name: str
    start: float
    end: float
    module: str | None
    category: str


def _host_ops(events: list[dict]) -> tuple[list[_HostOp], list[_HostOp], dict[Any, _HostOp]]:
    """Top-level torch ops per host thread, each with the innermost module range around
    it; every op (nested ones too); and every op by its external id, for device kernels."""
    by_tid: dict[Any, list[dict]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "cpu_op" or (
            e.get("cat") == "user_annotation" and e["name"].startswith(MODULE_PREFIX)
        ):
            by_tid[(e.get("pid"), e.get("tid"))].append(e)
    top: list[_HostOp] = []
    every: list[_HostOp] = []
    by_id: dict[Any, _HostOp] = {}
    for thread_events in by_tid.values():
        thread_events.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[dict] = []
        for e in thread_events:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            if e["cat"] == "cpu_op":
                module = next(
                    (
                        s["name"][len(MODULE_PREFIX) :]
                        for s in reversed(stack)
                        if s["cat"] != "cpu_op"
                    ),
                    None,
                )
                op = _HostOp(
                    e["name"], e["ts"], e["ts"] + e["dur"], module, classify(e["name"], module)
                )
                every.append(op)
                external = (e.get("args") or {}).get("External id")
                if external is not None:
                    by_id[external] = op
                if not any(s["cat"] == "cpu_op" for s in stack):
                    top.append(op)
            stack.append(e)
    return top, every, by_id


class _Intervals:
    """Intervals (start, end, label) sorted by start, to find those overlapping a step."""

    def __init__(self, intervals: list[tuple[float, float, str]]):
        self.items = sorted(intervals)
        self.starts = [a for a, _, _ in self.items]
        self.longest = max((b - a for a, b, _ in self.items), default=0.0)

    def overlapping(self, start: float, end: float) -> list[tuple[float, float, str]]:
        lo = bisect.bisect_left(self.starts, start - self.longest)
        hi = bisect.bisect_left(self.starts, end)
        return [item for item in self.items[lo:hi] if item[1] > start]


def _shares(
    start: float, end: float, busy: list[tuple[float, float, str]], host: list[tuple[float, float]]
) -> dict[str, float]:
    """Microseconds of [start, end) per share category (see the module docstring)."""
    points: list[tuple[float, int, str]] = []
    for a, b, category in busy:
        a, b = max(a, start), min(b, end)
        if a < b:
            points += [(a, 1, category), (b, -1, category)]
    for a, b in host:
        a, b = max(a, start), min(b, end)
        if a < b:
            points += [(a, 1, "_op"), (b, -1, "_op")]
    points.sort(key=lambda p: p[0])
    active: dict[str, int] = defaultdict(int)
    totals = dict.fromkeys(SHARE_CATEGORIES, 0.0)
    cursor = start
    for at, delta, category in [*points, (end, 0, "_end")]:
        if at > cursor:
            running = next((c for c in PRIORITY if active[c] > 0), None)
            share = running or ("idle" if active["_op"] > 0 else "host")
            totals[share] += at - cursor
            cursor = at
        active[category] += delta
    return totals


def analyze(trace: dict[str, Any]) -> dict[str, Any]:
    """The report of a trace (see the module docstring): every step's shares, their means
    by step kind and by kind and bucket, the top ops and modules, eager vs graph steps."""
    events = _complete(trace.get("traceEvents", []))
    steps_ev = [
        e
        for e in events
        if e.get("cat") == "user_annotation" and _parse_step(e["name"]) is not None
    ]
    top_ops, every_op, by_id = _host_ops(events)
    device_events = [e for e in events if _is_device(e)]
    if device_events:
        busy = []
        for e in device_events:
            op = by_id.get((e.get("args") or {}).get("External id"))
            name = f"{e['name']} {op.name}" if op else e["name"]
            busy.append((e["ts"], e["ts"] + e["dur"], classify(name, op.module if op else None)))
    else:
        busy = [(op.start, op.end, op.category) for op in every_op]
    busy_index = _Intervals(busy)
    host_index = _Intervals([(op.start, op.end, "") for op in top_ops])
    steps = []
    for e in sorted(steps_ev, key=lambda e: e["ts"]):
        index, kind, bucket, mode = _parse_step(e["name"])
        start, end = e["ts"], e["ts"] + e["dur"]
        host = [(a, b) for a, b, _ in host_index.overlapping(start, end)]
        shares = _shares(start, end, busy_index.overlapping(start, end), host)
        steps.append(
            StepTime(
                index, kind, bucket, mode, e["dur"] / 1e3, {k: v / 1e3 for k, v in shares.items()}
            )
        )
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in steps_ev]
    return {
        "device_timeline": bool(device_events),
        "num_steps": len(steps),
        "steps": [s.__dict__ for s in steps],
        "by_kind": _groups(steps, lambda s: s.kind),
        "by_bucket": _groups(steps, lambda s: f"{s.kind} {s.bucket}"),
        "top_ops": _top_ops(top_ops, windows),
        "top_modules": _top_modules(events, windows),
    }


def _groups(steps: list[StepTime], key) -> dict[str, dict[str, Any]]:
    grouped: dict[str, list[StepTime]] = defaultdict(list)
    for step in steps:
        grouped[key(step)].append(step)
    out = {}
    for name, group in sorted(grouped.items()):
        wall = sum(s.wall_ms for s in group)
        ms = {c: sum(s.shares_ms[c] for s in group) for c in SHARE_CATEGORIES}
        out[name] = {
            "steps": len(group),
            "mean_wall_ms": wall / len(group),
            "mean_ms": {c: v / len(group) for c, v in ms.items()},
            "percent": {c: 100 * v / wall if wall else 0.0 for c, v in ms.items()},
            "eager_steps": sum(s.mode == "eager" for s in group),
            "graph_steps": sum(s.mode == "graph" for s in group),
        }
    return out


def _inside(start: float, windows: list[tuple[float, float]]) -> bool:
    return any(a <= start < b for a, b in windows)


def _top_ops(ops: list[_HostOp], windows) -> list[dict[str, Any]]:
    totals: dict[tuple[str, str], list] = {}
    for op in ops:
        if _inside(op.start, windows):
            entry = totals.setdefault((op.name, op.category), [0, 0.0])
            entry[0] += 1
            entry[1] += op.end - op.start
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][1])[:TOP_N]
    return [
        {"name": name, "category": cat, "calls": n, "total_ms": us / 1e3}
        for (name, cat), (n, us) in ranked
    ]


def _top_modules(events: list[dict], windows) -> list[dict[str, Any]]:
    totals: dict[str, list] = {}
    modules = [
        e
        for e in events
        if e.get("cat") == "user_annotation"
        and e["name"].startswith(MODULE_PREFIX)
        and _inside(e["ts"], windows)
    ]
    for e in modules:
        # one row per module of every layer: model.layers.*.mlp
        path = re.sub(r"\.\d+(?=\.|$)", ".*", e["name"][len(MODULE_PREFIX) :])
        entry = totals.setdefault(path, [0, 0.0])
        entry[0] += 1
        entry[1] += e["dur"]
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][1])[:TOP_N]
    return [{"module": path, "calls": n, "total_ms": us / 1e3} for path, (n, us) in ranked]


def format_report(report: dict[str, Any]) -> str:
    """The report as text: one row per step kind and bucket (mean ms per step and the
    share of each category), then the top ops and modules."""
    cols = " | ".join(f"{c} %" for c in SHARE_CATEGORIES)
    lines = [
        f"| step kind / bucket | steps | eager | graph | wall ms | {cols} |",
        "|" + "---|" * (5 + len(SHARE_CATEGORIES)),
    ]
    rows = [(k, v) for k, v in report["by_kind"].items()]
    rows += [(f"  {k}", v) for k, v in report["by_bucket"].items()]
    for name, g in rows:
        pct = " | ".join(f"{g['percent'][c]:.1f}" for c in SHARE_CATEGORIES)
        lines.append(
            f"| {name} | {g['steps']} | {g['eager_steps']} | {g['graph_steps']} "
            f"| {g['mean_wall_ms']:.2f} | {pct} |"
        )
    lines += ["", "top ops (inclusive ms over the profiled steps):"]
    lines += [
        f"  {o['total_ms']:9.2f}  {o['calls']:6d}  {o['category']:<11}  {o['name']}"
        for o in report["top_ops"]
    ]
    lines += ["", "top modules (inclusive ms, eager forwards):"]
    lines += [
        f"  {m['total_ms']:9.2f}  {m['calls']:6d}  {m['module']}" for m in report["top_modules"]
    ]
    return "\n".join(lines)


__all__ = ["CATEGORIES", "SHARE_CATEGORIES", "analyze", "format_report", "load_trace"]
