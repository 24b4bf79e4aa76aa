"""The calibrated step-time model: step times measured on a device (autoscale.sim.calibrate,
`gaudi-serve calibrate`), looked up and interpolated for any step.

A step's time is its forward at the padded bucket plus the engine's host work around it:

    step_s = forward_s(padded shape) + host_fixed_s[kind] + host_per_row_s[kind] * rows

forward_s, by where the shape lies:

- a measured shape: the table (exact for graph-mode devices, where a step replays the
  graph of its bucket, so every step of one bucket costs the same);
- decode, inside the measured (batch x blocks) grid: bilinear interpolation in
  (batch, blocks);
- prefill, fresh width (no context before the chunk): linear interpolation in padded
  tokens (batch x query length) along the measured fresh shapes; a wider block table adds
  the fitted attention term `per_token_context_s * tokens * (extra context tokens)`;
- outside the measured range: the nearest edge of the table plus the difference of a
  least-squares fit between the shape and that edge, so the prediction stays continuous
  and keeps growing with size:

      decode:  t = fixed + per_row * rows + per_row_context * rows * context_tokens
      prefill: t = fixed + per_token * tokens + per_token_context * tokens * context_tokens

  (context_tokens: the padded block-table width x block_size; coefficients kept >= 0).

Each shape's time is its fastest repeat (`Measurement.seconds`: noise from other processes
only adds time). The table is made monotone before use (a larger bucket never predicts
less time than a smaller one), by least squares (pool adjacent violators along each
dimension: a noisy point is averaged with its neighbours rather than lifting every larger
shape, as a running maximum would); `raw` keeps what was measured. An eager step
(`work.padded` None) is priced at its real sizes on the same continuous model. Decode-like
steps with several query tokens per row (speculative verify) are priced as rows x query
tokens decode rows.

Worked example (a 2 x 2 decode grid, 16-token blocks, no host overhead):

>>> from engine.shapes import StepShape
>>> from autoscale.sim.step_cost import StepWork
>>> ms = [Measurement(StepShape("decode", b, 1, n), t)
...       for b, n, t in [(1, 1, 0.010), (1, 4, 0.013), (4, 1, 0.016), (4, 4, 0.028)]]
>>> ms += [Measurement(StepShape("prefill", 1, 16, 1), 0.02),
...        Measurement(StepShape("prefill", 1, 64, 4), 0.05)]
>>> cost = CalibratedStepCost.from_measurements({"block_size": 16}, ms)
>>> cost.step_s(StepWork("decode", 4, 4, 40, StepShape("decode", 4, 1, 4)))  # measured
0.028
>>> round(cost.step_s(StepWork("decode", 2, 2, 40, StepShape("decode", 2, 1, 4))), 4)
0.018
>>> round(cost.step_s(StepWork("prefill", 1, 32, 0, StepShape("prefill", 1, 32, 2))), 4)
0.03
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from autoscale.sim.step_cost import DECODE, PREFILL, StepWork
from engine.shapes import StepShape

__all__ = ["CalibratedStepCost", "HostOverhead", "LinearFit", "Measurement"]


class Measurement(NamedTuple):
    """One shape's timing: median seconds over the kept repeats, and their spread."""

    shape: StepShape
    median_s: float
    min_s: float | None = None
    max_s: float | None = None
    num_repeats: int = 1

    @property
    def seconds(self) -> float:
        """The shape's forward time: the fastest repeat (another process sharing the host
        only ever adds time, so the minimum is the least noisy estimate), or the median
        when the spread is not known."""
        return self.min_s if self.min_s is not None else self.median_s


def monotone(values: Iterable[float]) -> np.ndarray:
    """The non-decreasing sequence closest to values in least squares (pool adjacent
    violators): a noisy high point is averaged with its neighbours instead of lifting
    every larger shape to it, as a running maximum would.

    >>> monotone([1.0, 3.0, 2.0, 4.0]).tolist()
    [1.0, 2.5, 2.5, 4.0]
    """
    blocks: list[list[float]] = []  # [sum, count] of pooled runs
    for value in values:
        blocks.append([float(value), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    # rounded to a picosecond: pools of equal values stay exactly equal across rows
    return np.round(np.concatenate([np.full(int(n), total / n) for total, n in blocks]), 12)


def monotone_grid(grid: np.ndarray) -> np.ndarray:
    """A matrix made non-decreasing along both axes by alternating `monotone` over rows
    and columns until it holds (a few passes)."""
    out = np.array(grid, dtype=float)
    for _ in range(50):
        out = np.apply_along_axis(monotone, 0, out)
        out = np.apply_along_axis(monotone, 1, out)
        if (np.diff(out, axis=0) >= -1e-15).all() and (np.diff(out, axis=1) >= -1e-15).all():
            break
    return np.maximum.accumulate(np.maximum.accumulate(out, axis=0), axis=1)  # exact


class LinearFit(NamedTuple):
    """t = fixed + per_size * size + per_size_context * size * context_tokens; size is
    rows for decode, tokens for prefill."""

    fixed_s: float
    per_size_s: float
    per_size_context_s: float

    def __call__(self, size: float, context_tokens: float) -> float:
        return (
            self.fixed_s + self.per_size_s * size + self.per_size_context_s * size * context_tokens
        )


class HostOverhead(NamedTuple):
    """Engine time around the forward (scheduling, inputs, outputs) of one step kind."""

    fixed_s: float = 0.0
    per_row_s: float = 0.0


@dataclass(frozen=True)
class CalibratedStepCost:
    """A StepCost (autoscale.sim.step_cost) from measurements; build it with
    `from_measurements` (or load a calib.json: autoscale.sim.step_models)."""

    metadata: Mapping[str, Any]
    raw: tuple[Measurement, ...]
    block_size: int
    host: Mapping[str, HostOverhead]
    fits: Mapping[str, LinearFit]
    table: Mapping[StepShape, float]  # monotone-adjusted forward seconds per shape
    _decode: _DecodeGrid = field(repr=False)
    _prefill: _PrefillCurve = field(repr=False)

    @classmethod
    def from_measurements(
        cls,
        metadata: Mapping[str, Any],
        measurements: Iterable[Measurement],
        host: Mapping[str, HostOverhead] | None = None,
    ) -> CalibratedStepCost:
        """metadata must hold block_size; measurements need at least one decode and one
        prefill shape, and the decode shapes (query_len 1) must form a full batch x
        blocks grid."""
        raw = tuple(measurements)
        block_size = metadata.get("block_size")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"metadata.block_size must be a positive integer, got {block_size!r}")
        decode = [m for m in raw if m.shape.kind == DECODE and m.shape.query_len == 1]
        prefill = [m for m in raw if m.shape.kind == PREFILL]
        if not decode or not prefill:
            raise ValueError(
                "measurements need at least one decode (query_len 1) and one prefill shape; "
                f"got {len(decode)} decode and {len(prefill)} prefill"
            )
        fits = {
            DECODE: _fit(
                [(m.shape.batch_size, _span(m.shape, block_size), m.seconds) for m in decode]
            ),
            PREFILL: _fit(
                [(m.shape.num_tokens, _span(m.shape, block_size), m.seconds) for m in prefill]
            ),
        }
        grid = _DecodeGrid.build(decode, block_size, fits[DECODE])
        curve = _PrefillCurve.build(prefill, block_size, fits[PREFILL])
        table = {**grid.table(), **curve.table}
        host = dict(host or {})
        for kind in (PREFILL, DECODE):
            host.setdefault(kind, HostOverhead())
        return cls(dict(metadata), raw, block_size, host, fits, table, grid, curve)

    def forward_s(self, work: StepWork) -> float:
        """The forward's seconds at the step's padded shape (real sizes when eager)."""
        shape = work.padded
        if shape is not None and shape in self.table:
            return self.table[shape]
        if work.kind == DECODE:
            if shape is not None:
                return self._decode(shape.batch_size * shape.query_len, shape.num_blocks)
            rows = max(work.num_tokens, 1)
            return self._decode(rows, (work.num_context_tokens / rows + 1) / self.block_size)
        if work.kind != PREFILL:
            raise ValueError(f"work.kind must be {PREFILL!r} or {DECODE!r}, got {work.kind!r}")
        if shape is not None:
            return self._prefill(shape.batch_size, shape.query_len, shape.num_blocks)
        rows = max(work.num_rows, 1)
        q = work.num_tokens / rows
        return self._prefill(rows, q, (work.num_context_tokens / rows + q) / self.block_size)

    def step_s(self, work: StepWork) -> float:
        host = self.host[work.kind] if work.kind in self.host else HostOverhead()
        return self.forward_s(work) + host.fixed_s + host.per_row_s * work.num_rows


def _span(shape: StepShape, block_size: int) -> int:
    """Context tokens a row of the shape attends over: its block-table width."""
    return shape.num_blocks * block_size


def _fit(points: list[tuple[float, float, float]]) -> LinearFit:
    """Least squares of t on [1, size, size * context], dropping any column whose
    coefficient comes out negative (then refitting), so the fit grows with size."""
    data = np.array(points, dtype=np.float64)  # [n, 3]: size, context, seconds
    size, context, seconds = data[:, 0], data[:, 1], data[:, 2]
    columns = {0: np.ones_like(size), 1: size, 2: size * context}
    active = [0, 1, 2]
    while True:
        x = np.stack([columns[c] for c in active], axis=1)
        coef, *_ = np.linalg.lstsq(x, seconds, rcond=None)
        negative = [c for c, v in zip(active, coef, strict=True) if v < 0]
        if not negative:
            break
        active = [c for c in active if c != negative[0]]
        if not active:
            return LinearFit(float(np.median(seconds)), 0.0, 0.0)
    values = dict.fromkeys((0, 1, 2), 0.0) | {
        c: float(v) for c, v in zip(active, coef, strict=True)
    }
    return LinearFit(values[0], values[1], values[2])


@dataclass(frozen=True)
class _DecodeGrid:
    """Decode forward seconds on the measured batch x blocks grid, monotone, with
    bilinear interpolation inside and the fit's difference outside."""

    batches: tuple[int, ...]
    blocks: tuple[int, ...]
    seconds: np.ndarray  # [len(batches), len(blocks)]
    block_size: int
    fit: LinearFit

    @classmethod
    def build(cls, measured: list[Measurement], block_size: int, fit: LinearFit) -> _DecodeGrid:
        batches = tuple(sorted({m.shape.batch_size for m in measured}))
        blocks = tuple(sorted({m.shape.num_blocks for m in measured}))
        by_shape = {(m.shape.batch_size, m.shape.num_blocks): m.seconds for m in measured}
        missing = [(b, n) for b in batches for n in blocks if (b, n) not in by_shape]
        if missing:
            raise ValueError(
                "decode measurements must cover every (batch_size, num_blocks) pair of their "
                f"batch sizes {list(batches)} x blocks {list(blocks)}; missing {missing[:4]}"
            )
        seconds = np.array([[by_shape[(b, n)] for n in blocks] for b in batches])
        seconds = monotone_grid(seconds)
        return cls(batches, blocks, seconds, block_size, fit)

    def table(self) -> dict[StepShape, float]:
        return {
            StepShape(DECODE, b, 1, n): float(self.seconds[i, j])
            for i, b in enumerate(self.batches)
            for j, n in enumerate(self.blocks)
        }

    def __call__(self, rows: float, num_blocks: float) -> float:
        b = min(max(rows, self.batches[0]), self.batches[-1])
        n = min(max(num_blocks, self.blocks[0]), self.blocks[-1])
        i, wi = _bracket(self.batches, b)
        j, wj = _bracket(self.blocks, n)
        s = self.seconds
        inside = (
            s[i, j] * (1 - wi) * (1 - wj)
            + s[i + 1 if wi else i, j] * wi * (1 - wj)
            + s[i, j + 1 if wj else j] * (1 - wi) * wj
            + s[i + 1 if wi else i, j + 1 if wj else j] * wi * wj
        )
        bs = self.block_size
        delta = self.fit(rows, num_blocks * bs) - self.fit(b, n * bs)
        return max(round(float(inside + delta), 12), 0.0)  # ps: equal pools stay equal


@dataclass(frozen=True)
class _PrefillCurve:
    """Prefill forward seconds: monotone in padded tokens along the fresh-width shapes,
    plus the fitted attention term for a wider block table."""

    tokens: tuple[int, ...]  # padded tokens of the fresh shapes, ascending
    seconds: tuple[float, ...]  # monotone
    table: dict[StepShape, float]
    block_size: int
    fit: LinearFit

    @classmethod
    def build(cls, measured: list[Measurement], block_size: int, fit: LinearFit) -> _PrefillCurve:
        # The curve holds each fresh shape's time less its fitted attention term
        # (per_token_context x tokens x span), so shapes of equal tokens but different
        # query lengths share one point; `fresh` adds the term back for the query length.
        fresh: dict[int, list[float]] = {}
        wide_only = not any(
            m.shape.num_blocks <= _fresh_blocks(m.shape.query_len, block_size) for m in measured
        )
        for m in measured:
            if wide_only or m.shape.num_blocks <= _fresh_blocks(m.shape.query_len, block_size):
                attention = fit.per_size_context_s * m.shape.num_tokens * _span(m.shape, block_size)
                fresh.setdefault(m.shape.num_tokens, []).append(m.seconds - attention)
        tokens = tuple(sorted(fresh))
        seconds = tuple(float(x) for x in monotone([float(np.mean(fresh[t])) for t in tokens]))
        curve = cls(tokens, seconds, {}, block_size, fit)
        # A measured shape keeps its own time, raised to what its fresh curve and any
        # smaller shape of the same width say (monotone), so lookups never go backwards.
        table: dict[StepShape, float] = {}
        for m in sorted(measured, key=lambda m: (m.shape.num_blocks, m.shape.num_tokens)):
            shape = m.shape
            floor = curve.fresh(shape.num_tokens, shape.query_len)
            if shape.num_blocks > _fresh_blocks(shape.query_len, block_size):
                smaller = [
                    t
                    for s, t in table.items()
                    if s.num_tokens <= shape.num_tokens and s.num_blocks <= shape.num_blocks
                ]
                floor = max([floor, *smaller])
            table[shape] = max(m.seconds, floor)
        object.__setattr__(curve, "table", table)
        return curve

    def fresh(self, tokens: float, query_len: float) -> float:
        """A fresh-width step of `tokens` padded tokens, rows of query_len each."""
        t = min(max(tokens, self.tokens[0]), self.tokens[-1])
        i, w = _bracket(self.tokens, t)
        inside = self.seconds[i] * (1 - w) + (self.seconds[i + 1] if w else 0.0) * w
        span = _fresh_blocks(query_len, self.block_size) * self.block_size
        delta = self.fit.per_size_s * (tokens - t) + self.fit.per_size_context_s * tokens * span
        return max(float(inside + delta), 0.0)

    def __call__(self, rows: float, query_len: float, num_blocks: float) -> float:
        tokens = rows * query_len
        extra = max(num_blocks - _fresh_blocks(query_len, self.block_size), 0) * self.block_size
        return float(self.fresh(tokens, query_len) + self.fit.per_size_context_s * tokens * extra)


def _fresh_blocks(query_len: float, block_size: int) -> float:
    return -(-query_len // block_size)


def _bracket(points: tuple[int, ...], value: float) -> tuple[int, float]:
    """(i, w): value lies between points[i] and points[i + 1] at weight w (w 0 when it
    is points[i] or points has one element). value must lie within the points."""
    i = max(bisect.bisect_right(points, value) - 1, 0)
    if i >= len(points) - 1:
        return len(points) - 1, 0.0
    return i, (value - points[i]) / (points[i + 1] - points[i])
