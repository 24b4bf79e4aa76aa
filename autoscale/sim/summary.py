"""One summary of a run, simulated or replayed: `summarize(records, samples, ...)` turns
what was measured (autoscale/sim/records.py) into the dict that goes to summary.json, so a
simulation and a real replay of one trace compare key by key (`compare`).

Percentiles interpolate linearly between the closest ranks (numpy's default, "linear",
Hyndman and Fan's type 7): for sorted values x[0..n-1] and q in [0, 100], the position is
p = q / 100 * (n - 1) and the percentile x[floor p] + (p - floor p) * (x[ceil p] - x[floor p]).
Worked example: the p95 of [1, 2, 3, 4] sits at p = 2.85, 3 + 0.85 * (4 - 3) = 3.85.

A key with no data (no completed request, no fleet sample) is None (null in JSON), never 0.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from autoscale.sim.records import FleetSample, RequestRecord

SUMMARY_FILE = "summary.json"
RECORDS_FILE = "records.jsonl"
SAMPLES_FILE = "samples.jsonl"

__all__ = [
    "RECORDS_FILE",
    "SAMPLES_FILE",
    "SUMMARY_FILE",
    "compare",
    "percentile",
    "summarize",
    "write_measurements",
    "write_summary",
]


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (q in [0, 100]) by linear interpolation (see the module doc);
    None for no values."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q!r}")
    xs = sorted(values)
    if not xs:
        return None
    position = q / 100.0 * (len(xs) - 1)
    low = math.floor(position)
    high = min(low + 1, len(xs) - 1)
    return xs[low] + (position - low) * (xs[high] - xs[low])


def summarize(
    records: Sequence[RequestRecord],
    samples: Sequence[FleetSample],
    slo_ttft_s: float,
    slo_tpot_s: float,
    duration_s: float | None = None,
) -> dict[str, float | int | None]:
    """The summary of one run. The run spans [0, duration_s] (default: up to its last
    event, the latest arrival, token, finish or sample time). Keys:

    requests, completed, rejected, lost   counts; lost = accepted and not completed
    ttft_{p50,p95,p99,mean}_s             over requests that got a first token
    tpot_{p50,p95,mean}_s                 over completed requests with 2+ output tokens
    e2e_{p50,p95}_s                       finish - arrival, over completed requests
    output_tokens, output_tok_s           output tokens of completed requests, and per
                                          second of duration_s
    slo_attainment                        of ALL requests (rejected and lost ones miss),
                                          the share that completed with TTFT <= slo_ttft_s
                                          and TPOT <= slo_tpot_s (a one-token answer has
                                          no TPOT and meets it)
    prefix_hit_rate                       cached / prompt tokens of the accepted requests
    replica_seconds                       the integral over time of serving + starting
                                          replicas: samples sorted by time, each one's
                                          count held from its time to the next sample's,
                                          the last one's up to duration_s (a step
                                          function, no interpolation)
    mean_replicas                         replica_seconds / (duration_s - first sample time)
    num_scale_events                      samples whose target_replicas differs from the
                                          previous sample's
    max_replicas, kv_usage_max, kv_usage_mean   over the samples (mean over every replica
                                          of every sample)
    duration_s, slo_ttft_s, slo_tpot_s    as used
    """
    _check_positive("slo_ttft_s", slo_ttft_s)
    _check_positive("slo_tpot_s", slo_tpot_s)
    samples = sorted(samples, key=lambda s: s.time_s)
    if duration_s is None:
        duration_s = _last_event_s(records, samples)
    elif not (math.isfinite(duration_s) and duration_s >= 0):
        raise ValueError(f"duration_s must be a number >= 0, got {duration_s!r}")
    accepted = [r for r in records if not r.rejected]
    completed = [r for r in accepted if r.finish_s is not None]
    ttfts = [r.ttft_s for r in accepted if r.first_token_s is not None]
    tpots = [r.tpot_s for r in completed if r.tpot_s is not None]
    e2es = [r.finish_s - r.arrival_s for r in completed]
    output_tokens = sum(r.output_tokens for r in completed)
    prompt_tokens = sum(r.prompt_tokens for r in accepted)
    met = sum(1 for r in completed if _meets_slo(r, slo_ttft_s, slo_tpot_s))
    replica_seconds = _replica_seconds(samples, duration_s)
    span_s = duration_s - samples[0].time_s if samples else 0.0
    kv = [u for s in samples for u in s.kv_usage]
    return {
        "requests": len(records),
        "completed": len(completed),
        "rejected": len(records) - len(accepted),
        "lost": len(accepted) - len(completed),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "ttft_p99_s": percentile(ttfts, 99),
        "ttft_mean_s": _mean(ttfts),
        "tpot_p50_s": percentile(tpots, 50),
        "tpot_p95_s": percentile(tpots, 95),
        "tpot_mean_s": _mean(tpots),
        "e2e_p50_s": percentile(e2es, 50),
        "e2e_p95_s": percentile(e2es, 95),
        "output_tokens": output_tokens,
        "output_tok_s": output_tokens / duration_s if duration_s > 0 else None,
        "slo_attainment": met / len(records) if records else None,
        "prefix_hit_rate": (
            sum(r.num_cached_tokens for r in accepted) / prompt_tokens if prompt_tokens else None
        ),
        "replica_seconds": replica_seconds,
        "mean_replicas": replica_seconds / span_s if samples and span_s > 0 else None,
        "num_scale_events": _num_scale_events(samples),
        "max_replicas": max((s.num_replicas + s.num_starting for s in samples), default=None),
        "kv_usage_max": max(kv, default=None),
        "kv_usage_mean": _mean(kv),
        "duration_s": duration_s,
        "slo_ttft_s": slo_ttft_s,
        "slo_tpot_s": slo_tpot_s,
    }


def write_summary(out_dir: str | Path, summary: dict) -> Path:
    """Write `summary` to out_dir/summary.json (sorted keys, indented); returns the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / SUMMARY_FILE
    path.write_text(json.dumps(summary, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    return path


def write_measurements(
    out_dir: str | Path, records: Sequence[RequestRecord], samples: Sequence[FleetSample]
) -> list[Path]:
    """Write every record to out_dir/records.jsonl and every sample to samples.jsonl, one
    JSON object a line (the NamedTuples' fields); returns the two paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in ((RECORDS_FILE, records), (SAMPLES_FILE, samples)):
        path = out / name
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row._asdict()) + "\n")
        paths.append(path)
    return paths


def compare(a: dict, b: dict, keys: Iterable[str]) -> dict[str, dict[str, float | None]]:
    """Key by key, `a` (e.g. simulated) against the reference `b` (e.g. measured):
    {key: {"a", "b", "rel_error"}} with rel_error = (a - b) / |b|; None where either value
    is missing or None, or b is 0."""
    out = {}
    for key in keys:
        va, vb = a.get(key), b.get(key)
        rel = None
        if va is not None and vb is not None and vb != 0:
            rel = (va - vb) / abs(vb)
        out[key] = {"a": va, "b": vb, "rel_error": rel}
    return out


def _meets_slo(record: RequestRecord, slo_ttft_s: float, slo_tpot_s: float) -> bool:
    tpot = record.tpot_s
    return record.ttft_s <= slo_ttft_s and (tpot is None or tpot <= slo_tpot_s)


def _replica_seconds(samples: list[FleetSample], duration_s: float) -> float | None:
    if not samples:
        return None
    total = 0.0
    ends = [s.time_s for s in samples[1:]] + [max(duration_s, samples[-1].time_s)]
    for sample, end_s in zip(samples, ends, strict=True):
        total += (sample.num_replicas + sample.num_starting) * (end_s - sample.time_s)
    return total


def _num_scale_events(samples: list[FleetSample]) -> int | None:
    if not samples:
        return None
    return sum(1 for a, b in itertools.pairwise(samples) if a.target_replicas != b.target_replicas)


def _last_event_s(records: Sequence[RequestRecord], samples: Sequence[FleetSample]) -> float:
    times = [s.time_s for s in samples]
    for r in records:
        times.extend(t for t in (r.arrival_s, r.first_token_s, r.finish_s) if t is not None)
    return max(times, default=0.0)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
