"""PNG plots of a run, simulated or replayed (`write_plots`):

    replicas.png   serving, starting and target replicas over time (step lines)
    latency.png    TTFT and TPOT p50/p95 per time window (requests by arrival time), with
                   the SLO as a dashed line
    kv_usage.png   mean and max KV-cache usage over the serving replicas, over time

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend
switch), so plotting never needs a display nor changes another caller's backend.
matplotlib is an optional dependency (the `bench` extra): without it `write_plots` raises
ImportError saying so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from autoscale.sim.records import FleetSample, RequestRecord
from autoscale.sim.summary import percentile

PLOT_FILES = ("replicas.png", "latency.png", "kv_usage.png")
MAX_WINDOWS = 40  # latency windows over a run, at most

__all__ = ["MAX_WINDOWS", "PLOT_FILES", "latency_windows", "write_plots"]


def write_plots(
    out_dir: str | Path,
    records: Sequence[RequestRecord],
    samples: Sequence[FleetSample],
    slo_ttft_s: float | None = None,
    slo_tpot_s: float | None = None,
    window_s: float | None = None,
) -> list[Path]:
    """Write PLOT_FILES into `out_dir` and return their paths. `window_s` is the latency
    window (default: the run's span / MAX_WINDOWS, at least one second). A plot with no
    data says so in its title."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "plots need matplotlib, which is not installed (pip install 'gaudi-serve[bench]')"
        ) from exc
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = sorted(samples, key=lambda s: s.time_s)
    drawers = (
        lambda ax: _replicas(ax, samples),
        lambda axes: _latency(axes, records, slo_ttft_s, slo_tpot_s, window_s),
        lambda ax: _kv_usage(ax, samples),
    )
    paths = []
    for name, draw, num_rows in zip(PLOT_FILES, drawers, (1, 2, 1), strict=True):
        fig = Figure(figsize=(9, 3.2 * num_rows), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(num_rows, 1, sharex=True)
        draw(axes)
        path = out / name
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def latency_windows(
    records: Sequence[RequestRecord], window_s: float | None = None
) -> list[dict[str, float | None]]:
    """Per window of arrival time: {"start_s", "ttft_p50_s", "ttft_p95_s", "tpot_p50_s",
    "tpot_p95_s"} over the requests that arrived in it (None where none had the value)."""
    accepted = [r for r in records if not r.rejected]
    if not accepted:
        return []
    end_s = max(r.arrival_s for r in accepted)
    if window_s is None:
        window_s = max(1.0, end_s / MAX_WINDOWS)
    if not (math.isfinite(window_s) and window_s > 0):
        raise ValueError(f"window_s must be a number > 0, got {window_s!r}")
    num_windows = int(end_s // window_s) + 1
    ttfts: list[list[float]] = [[] for _ in range(num_windows)]
    tpots: list[list[float]] = [[] for _ in range(num_windows)]
    for r in accepted:
        index = int(r.arrival_s // window_s)
        if r.ttft_s is not None:
            ttfts[index].append(r.ttft_s)
        if r.finish_s is not None and r.tpot_s is not None:
            tpots[index].append(r.tpot_s)
    return [
        {
            "start_s": i * window_s,
            "ttft_p50_s": percentile(ttfts[i], 50),
            "ttft_p95_s": percentile(ttfts[i], 95),
            "tpot_p50_s": percentile(tpots[i], 50),
            "tpot_p95_s": percentile(tpots[i], 95),
        }
        for i in range(num_windows)
    ]


def _replicas(ax, samples: list[FleetSample]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title("replicas" if samples else "replicas (no fleet samples)")
    if samples:
        times = [s.time_s for s in samples]
        for label, values, style in (
            ("serving", [s.num_replicas for s in samples], "-"),
            ("starting", [s.num_starting for s in samples], "-"),
            ("target", [s.target_replicas for s in samples], "--"),  # dashed: over serving
        ):
            ax.step(times, values, where="post", label=label, linestyle=style)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("replicas")


def _latency(axes, records, slo_ttft_s, slo_tpot_s, window_s) -> None:
    windows = latency_windows(records, window_s)
    for ax, metric, slo in ((axes[0], "ttft", slo_ttft_s), (axes[1], "tpot", slo_tpot_s)):
        ax.set_title(f"{metric.upper()} by arrival window" + ("" if windows else " (no data)"))
        starts = [w["start_s"] for w in windows]
        for q in ("p50", "p95"):
            values = [_nan(w[f"{metric}_{q}_s"]) for w in windows]
            ax.plot(starts, values, marker=".", label=q)
        if slo is not None:
            ax.axhline(slo, linestyle="--", color="gray", label="SLO")
        ax.set_ylabel(f"{metric.upper()} (s)")
        ax.legend(loc="upper left")
    axes[1].set_xlabel("arrival time (s)")


def _kv_usage(ax, samples: list[FleetSample]) -> None:
    with_kv = [s for s in samples if s.kv_usage]
    ax.set_title("KV-cache usage" if with_kv else "KV-cache usage (no data)")
    if with_kv:
        times = [s.time_s for s in with_kv]
        ax.plot(times, [sum(s.kv_usage) / len(s.kv_usage) for s in with_kv], label="mean")
        ax.plot(times, [max(s.kv_usage) for s in with_kv], label="max")
        ax.legend(loc="upper left")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("usage (0..1)")


def _nan(value: float | None) -> float:
    return math.nan if value is None else value
