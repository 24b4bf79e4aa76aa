"""The one thing the simulator does not run: the forward. A step-time model says how many
seconds an engine step of a given shape takes on a replica.

Two implementations (autoscale/sim/step_models.py): calibrated (measured on a device
through the real engine, `gaudi-serve calibrate`) and analytic (from a model's config, its
dtype, the TP degree and a card's specification). The simulated replica builds a
`StepWork` for every step its real `Scheduler` schedules, with the bucket the engine would
pad it to (`engine.shapes.StepShape`, from the engine's own `StepShaper`), and advances
virtual time by `step_s(work)`.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from engine.shapes import StepShape

PREFILL = "prefill"
DECODE = "decode"


class StepWork(NamedTuple):
    """One engine step: what it computes and the bucket it runs in."""

    kind: str  # PREFILL or DECODE
    num_rows: int  # sequences in the step
    num_tokens: int  # real tokens fed (a decode step: one a row)
    num_context_tokens: int  # tokens already in the KV cache the rows attend to, summed
    padded: StepShape | None  # the bucket (batch_size x query_len, num_blocks); None: eager


class StepCost(Protocol):
    """Seconds one step takes (a pure function of the step)."""

    def step_s(self, work: StepWork) -> float: ...


class ServingStepCost:
    """A StepCost plus what serving adds to each decode step on this host: `per_step_s`
    + `per_row_s` x rows (streaming each row's token out through the replica, the ingress
    and the proxy). On a host whose CPU also runs the forward (CPU serving) that work
    competes with it; on an accelerator it runs beside it and both are ~0. Measured by
    comparing real and simulated TPOT at two batch sizes (`fit_serving_step`)."""

    def __init__(self, inner: StepCost, per_step_s: float = 0.0, per_row_s: float = 0.0):
        if per_step_s < 0 or per_row_s < 0:
            raise ValueError(
                f"per_step_s and per_row_s must be >= 0, got {per_step_s} and {per_row_s}"
            )
        self.inner = inner
        self.per_step_s = per_step_s
        self.per_row_s = per_row_s

    def __getattr__(self, name: str):  # the inner model's extras (kv_cache_tokens, ...)
        return getattr(self.inner, name)

    def step_s(self, work: StepWork) -> float:
        seconds = self.inner.step_s(work)
        if work.kind == DECODE:
            seconds += self.per_step_s + self.per_row_s * work.num_rows
        return seconds


def fit_serving_step(
    rows_a: float, gap_a_s: float, rows_b: float, gap_b_s: float
) -> tuple[float, float]:
    """(per_step_s, per_row_s) through two measured (mean rows, TPOT real - simulated)
    points, each clipped at 0.

    >>> fit_serving_step(1, 0.004, 8, 0.018)
    (0.002, 0.002)
    """
    if rows_a == rows_b:
        return max(0.0, min(gap_a_s, gap_b_s)), 0.0
    per_row = max(0.0, (gap_b_s - gap_a_s) / (rows_b - rows_a))
    per_step = max(0.0, gap_a_s - per_row * rows_a)
    return round(per_step, 9), round(per_row, 9)
