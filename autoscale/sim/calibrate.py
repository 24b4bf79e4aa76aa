"""Measure a model's step times on the local device through the real engine, for the
calibrated step-time model (autoscale.sim.step_calibrated; `gaudi-serve calibrate`).

Two passes over one built `Engine` (the serving config's model, dtype, TP degree, buckets
and graphs, warmed exactly as a replica warms):

1. Forward at fixed shapes. Each grid shape runs `repeats + 1` times through the engine's
   own executor with the all-padding input that warm-up uses (`dummy_model_input`): the
   same padded forward and sampling a real step of that bucket runs (graph replay where
   the device captured graphs), and `execute` returns host-side token ids, so the timer
   stops only when the device is done. The first run is dropped (a lazy-mode compile, a
   cold cache); the median of the rest is kept with its min and max. Padding rows read
   and write only the padding block, and attention covers the whole padded block table
   whatever it holds, so a padded step costs what a real step of its bucket costs.
2. Engine check. Waves of real requests (random token-id prompts, greedy, `ignore_eos`,
   `max_tokens`) run through `Engine.step` with a step observer; each `StepRecord`'s wall
   time (scheduling to outputs processed) minus the pass-1 forward of its bucket is the
   host overhead, fitted per kind as fixed + per row. Its prediction error on those steps
   is written beside the model ("engine_check").

Why not only the engine? Steps through the engine cannot be aimed at a bucket (chunking,
growing context), and most buckets would need long prompts to reach; fixed shapes cover
every warmed bucket in seconds, the engine pass adds what fixed shapes leave out.

The grid: every warmed decode bucket (batch x blocks, one query token a row) and every
prefill bucket (batch x query length) at both block-table widths the engine warms (fresh,
and the full table of a chunk after cached context), each dimension thinned to at most
`max_values_per_dim` values (smallest, largest, spread between; None: all).
"""

from __future__ import annotations

import datetime
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from autoscale.sim.step_calibrated import CalibratedStepCost, HostOverhead, Measurement
from autoscale.sim.step_cost import DECODE, PREFILL, StepWork
from engine.buckets import (
    block_buckets,
    decode_batch_buckets,
    length_buckets,
    prefill_batch_buckets,
    prefill_buckets,
)
from engine.shapes import StepShape, StepShaper

__all__ = ["CalibrationGrid", "calibrate_engine", "grid_shapes", "measure_shape"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CalibrationGrid:
    """What to measure. max_values_per_dim: values kept per bucket dimension (None: every
    warmed bucket); repeats: timed runs per shape after the dropped first one;
    check_waves_tokens: max_tokens of each engine-check request (0: no engine check)."""

    max_values_per_dim: int | None = 4
    repeats: int = 3
    check_tokens: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_values_per_dim is not None and self.max_values_per_dim < 2:
            raise ValueError(
                f"max_values_per_dim must be at least 2 (or None for all), "
                f"got {self.max_values_per_dim}"
            )
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")
        if self.check_tokens < 0:
            raise ValueError(f"check_tokens must be >= 0, got {self.check_tokens}")


def _spread(values: Sequence[int], limit: int | None) -> tuple[int, ...]:
    """At most `limit` of the ascending `values`: the first, the last, evenly between.

    >>> _spread((1, 2, 4, 8, 16, 32), 3)
    (1, 4, 32)
    """
    if limit is None or len(values) <= limit:
        return tuple(values)
    picks = np.linspace(0, len(values) - 1, limit).round().astype(int)
    return tuple(values[i] for i in sorted(set(picks.tolist())))


def grid_shapes(shaper: StepShaper, max_values_per_dim: int | None) -> list[StepShape]:
    """The shapes to measure: a product grid of decode buckets, and the prefill buckets
    of the thinned batch and length values at both warmed widths; largest first."""
    cfg, limit = shaper.buckets, max_values_per_dim
    shapes = {
        StepShape(DECODE, b, 1, n)
        for b in _spread(decode_batch_buckets(cfg), limit)
        for n in _spread(block_buckets(cfg), limit)
    }
    batches = set(_spread(prefill_batch_buckets(cfg), limit))
    lengths = set(_spread(length_buckets(cfg), limit))
    for bucket in prefill_buckets(cfg):
        if bucket.batch_size in batches and bucket.query_len in lengths:
            for blocks in (shaper.fresh_blocks(bucket.query_len), shaper.max_blocks):
                shapes.add(StepShape(PREFILL, bucket.batch_size, bucket.query_len, blocks))
    return sorted(shapes, key=lambda s: (s.num_tokens * s.num_blocks, s), reverse=True)


def measure_shape(executor: Any, shape: StepShape, repeats: int) -> Measurement:
    """Run `shape` repeats + 1 times through executor.execute (all padding); drop the
    first; the median, min and max of the rest."""
    from engine.model_input import dummy_model_input

    inp = dummy_model_input(shape)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        executor.execute(inp)
        times.append(time.perf_counter() - start)
    kept = times[1:]
    return Measurement(shape, float(np.median(kept)), min(kept), max(kept), len(kept))


def calibrate_engine(
    engine: Any, grid: CalibrationGrid = CalibrationGrid(), progress: Progress | None = None
) -> tuple[CalibratedStepCost, dict[str, Any]]:
    """Measure `engine` (a built, warmed Engine with no request in flight). Returns the
    model and the extra "model" entries of calib.json (the engine check)."""
    say = progress or (lambda _: None)
    shapes = grid_shapes(engine.shaper, grid.max_values_per_dim)
    say(f"measuring {len(shapes)} shapes x {grid.repeats + 1} runs")
    measurements = []
    for i, shape in enumerate(shapes):
        measurements.append(measure_shape(engine.executor, shape, grid.repeats))
        if (i + 1) % 10 == 0 or i + 1 == len(shapes):
            say(f"  {i + 1}/{len(shapes)} shapes")
    metadata = engine_metadata(engine, grid)
    forward_only = CalibratedStepCost.from_measurements(metadata, measurements)
    if not grid.check_tokens:
        return forward_only, {}
    say("engine check: real requests through Engine.step")
    records = run_check_waves(engine, grid)
    host = fit_host_overhead(engine.shaper, forward_only, records)
    cost = CalibratedStepCost.from_measurements(metadata, measurements, host)
    return cost, {"engine_check": check_summary(engine.shaper, cost, records)}


def engine_metadata(engine: Any, grid: CalibrationGrid) -> dict[str, Any]:
    """What the measurements depend on, for calib.json (and `check_calibration`)."""
    import torch

    config, shaper = engine.config, engine.shaper
    cfg = shaper.buckets
    device = getattr(getattr(engine.executor, "device", None), "name", config.device)
    try:
        gaudi_serve_version = version("gaudi-serve")
    except PackageNotFoundError:
        gaudi_serve_version = None
    return {
        "model": engine.model_path.name,
        "model_path": str(engine.model_path),
        "dtype": str(engine.executor.kv_spec.dtype).removeprefix("torch."),
        "tp_size": config.tp_size,
        "device": device,
        "block_size": config.block_size,
        "max_num_seqs": config.max_num_seqs,
        "max_model_len": config.max_model_len,
        "max_num_batched_tokens": config.max_num_batched_tokens,
        "buckets": {
            "prefill_batch_sizes": list(prefill_batch_buckets(cfg)),
            "prefill_lengths": list(length_buckets(cfg)),
            "decode_batch_sizes": list(decode_batch_buckets(cfg)),
            "decode_num_blocks": list(block_buckets(cfg)),
        },
        "graph_kinds": list(engine.executor.graph_kinds) if config.enable_graphs else [],
        "warmup": config.warmup,
        "grid": "full" if grid.max_values_per_dim is None else grid.max_values_per_dim,
        "repeats": grid.repeats,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gaudi_serve_version": gaudi_serve_version,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# -- the engine check -------------------------------------------------------------------
def run_check_waves(engine: Any, grid: CalibrationGrid) -> list[Any]:
    """One wave of equal requests per checked batch size (smallest, middle, largest
    decode bucket that a single prefill step holds); the StepRecords of every step."""
    from engine.sampling_params import SamplingParams

    config, shaper = engine.config, engine.shaper
    prompt_len = max(1, min(2 * config.block_size, config.max_model_len // 2))
    max_tokens = max(1, min(grid.check_tokens, config.max_model_len - prompt_len))
    fitting = [
        b
        for b in decode_batch_buckets(shaper.buckets)
        if b <= config.max_num_seqs and shaper.max_prefill_len(b) >= prompt_len
    ]
    batches = _spread(fitting, 3)
    records: list[Any] = []
    previous = engine.step_observer
    engine.step_observer = records.append
    rng = random.Random(grid.seed)
    vocab = engine.text_config.vocab_size
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    try:
        for wave, batch in enumerate(batches):
            for i in range(batch):
                prompt = [rng.randrange(vocab) for _ in range(prompt_len)]
                engine.add_request(f"calibrate-{wave}-{i}", prompt, params)
            while engine.has_unfinished:
                engine.step(stream=False)
    finally:
        engine.step_observer = previous
        for request_id in list(engine.requests):
            engine.abort_request(request_id)
    return records


def record_work(shaper: StepShaper, record: Any) -> StepWork | None:
    """The StepWork of a check step whose rows are alike (same tokens and context each);
    None for a step of unlike rows (its bucket is not known from the sums)."""
    rows = record.num_rows
    if rows < 1 or record.num_tokens % rows or record.num_context_tokens % rows:
        return None
    q, c = record.num_tokens // rows, record.num_context_tokens // rows
    blocks = -(-(c + q) // shaper.block_size)
    if record.kind == DECODE:
        shape = shaper.decode_shape(rows, blocks)
    else:
        shape = shaper.prefill_shape(rows, q, blocks)
    return StepWork(record.kind, rows, record.num_tokens, record.num_context_tokens, shape)


def fit_host_overhead(
    shaper: StepShaper, forward_only: CalibratedStepCost, records: list[Any]
) -> dict[str, HostOverhead]:
    """Per kind: the median of (step wall time - predicted forward) per row count, then
    a line fixed + per_row through those medians (both kept >= 0)."""
    residuals: dict[str, dict[int, list[float]]] = {PREFILL: {}, DECODE: {}}
    for record in records:
        work = record_work(shaper, record)
        if work is not None:
            extra = record.seconds - forward_only.forward_s(work)
            residuals[work.kind].setdefault(work.num_rows, []).append(extra)
    host = {}
    for kind, by_rows in residuals.items():
        if not by_rows:
            continue
        rows = np.array(sorted(by_rows), dtype=np.float64)
        medians = np.array([np.median(by_rows[int(r)]) for r in rows])
        per_row, fixed = np.polyfit(rows, medians, 1) if len(rows) > 1 else (0.0, medians[0])
        if per_row < 0:
            per_row, fixed = 0.0, float(np.median(medians))
        host[kind] = HostOverhead(max(float(fixed), 0.0), float(per_row))
    return host


def check_summary(
    shaper: StepShaper, cost: CalibratedStepCost, records: list[Any]
) -> dict[str, Any]:
    """How well the model predicts the check steps: per kind, the steps compared, the
    median absolute relative error, and total predicted / total measured seconds."""
    out: dict[str, Any] = {}
    for kind in (PREFILL, DECODE):
        pairs = [
            (cost.step_s(work), record.seconds)
            for record in records
            if record.kind == kind and (work := record_work(shaper, record)) is not None
        ]
        if not pairs:
            continue
        predicted, measured = np.array(pairs).T
        out[kind] = {
            "num_steps": len(pairs),
            "median_abs_rel_error": float(np.median(np.abs(predicted / measured - 1))),
            "total_ratio": float(predicted.sum() / measured.sum()),
        }
    return out
