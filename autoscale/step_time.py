"""How long a replica's engine steps take: a small model fitted online from its own steps.

A router asks it how long a prompt's prefill will take and how long a decode step of a
given batch takes; [autoscale] and [fleet] reuse it for capacity. Each replica gets its own
model, fed with the steps it ran (`observe`), so a slow device, a big model or a padded
bucket shows up in its own numbers.

The model, per step kind (t in seconds, n tokens fed by a prefill step, b rows of a decode
step, c context tokens attended to):

    prefill step: t = fixed + per_token * n  [+ per_context_token * c]
    decode step:  t = fixed + per_seq * b    [+ per_context_token * c]

fitted by least squares over a sliding window of the latest `window` observations. The
context term is fitted only where the window's context varies enough to tell it apart
(otherwise it is folded into `fixed`). Robust to outliers (a graph compile, a GC pause):
a Theil-Sen line (median of pairwise slopes, over at most 48 points spread across the
sizes) picks the inliers first, and points over 3 robust standard deviations (1.4826 x
the median absolute residual) from it are dropped. A refit runs on the first prediction
after new observations (once a window holds REFIT_FULL_BELOW, only after every
REFIT_EVERY new ones) and costs ~0.05-0.2 ms (window 128, one core).

Before the data supports a fit (fewer than `min_fit_observations` of a kind, or all of one
size, or a fit with a negative slope), predictions are the prior's shape scaled by the
median ratio observed / prior of the window (with no observation at all, the prior as is).
The default prior (`StepTimePrior`) is a ~1B model on one accelerator: 10 ms per step plus
0.2 ms per prefill token (5k tokens/s), 15 ms per decode step plus 0.2 ms per row. It only
sets the scale until a replica's own steps replace it; `has_data` says whether they have.

Worked example (a prior that is 2x too slow, then three prefill steps that fit exactly):

    >>> model = StepTimeModel(StepTimePrior(prefill_fixed_s=0.02, prefill_per_token_s=4e-4),
    ...                       min_fit_observations=3)
    >>> round(model.prefill_s(1000), 3)  # the prior: 0.02 + 1000 * 4e-4
    0.42
    >>> model.observe(PREFILL, 100, 0.03)  # one point: the prior's shape, scaled by 0.5
    >>> round(model.prefill_s(1000), 3)
    0.21
    >>> model.observe(PREFILL, 200, 0.05)
    >>> model.observe(PREFILL, 400, 0.09)  # three sizes: a fit, 10 ms + 0.2 ms per token
    >>> round(model.prefill_s(1000), 3)
    0.21
    >>> model.observe(PREFILL, 300, 9.0)  # a compile: dropped as an outlier
    >>> round(model.prefill_s(1000), 3)
    0.21
    >>> model.prefill_s(0)  # nothing to compute costs nothing
    0.0
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

PREFILL = "prefill"
DECODE = "decode"
STEP_KINDS = (PREFILL, DECODE)

OUTLIER_MADS = 3.0  # residuals beyond this many robust standard deviations are dropped
MAD_TO_STD = 1.4826  # a normal distribution's standard deviation per median absolute deviation
MIN_RELATIVE_SPREAD = 0.1  # a feature is fitted only if its std is over this x its mean
MAX_THEIL_SEN_POINTS = 48  # pairwise slopes over at most this many points (1,128 pairs)
# A window of at least REFIT_FULL_BELOW observations is refitted after every REFIT_EVERY new
# ones (a smaller one after each): 8 new steps of 128 barely move a fit, and a router asking
# 16 replicas after each arrival would otherwise refit ~10 of them every decision.
REFIT_FULL_BELOW = 16
REFIT_EVERY = 8


@dataclass(frozen=True)
class StepTimePrior:
    """Step times assumed before a replica's own steps are known (see the module doc)."""

    prefill_fixed_s: float = 0.010
    prefill_per_token_s: float = 2e-4
    decode_fixed_s: float = 0.015
    decode_per_seq_s: float = 2e-4
    per_context_token_s: float = 0.0

    def step_s(self, kind: str, size: float, num_context_tokens: float) -> float:
        if kind == PREFILL:
            fixed, per_unit = self.prefill_fixed_s, self.prefill_per_token_s
        else:
            fixed, per_unit = self.decode_fixed_s, self.decode_per_seq_s
        return fixed + per_unit * size + self.per_context_token_s * num_context_tokens


class _Window:
    """The latest observations of one step kind, as a ring buffer of rows
    (size, context, seconds); order does not matter to the fit."""

    def __init__(self, capacity: int):
        self.data = np.zeros((capacity, 3), dtype=np.float64)  # [capacity, 3]
        self._cells = memoryview(self.data.reshape(-1))  # data's cells, row after row
        self.count = 0
        self.next = 0

    def append(self, size: int, context: int, seconds: float) -> None:
        # Written cell by cell through a memoryview (a router observes every step of every
        # replica): the same float64 values numpy's row assignment stores.
        cells, i = self._cells, 3 * self.next
        cells[i], cells[i + 1], cells[i + 2] = float(size), float(context), float(seconds)
        self.next = (self.next + 1) % len(self.data)
        self.count = min(self.count + 1, len(self.data))

    def rows(self) -> np.ndarray:  # [count, 3]
        return self.data[: self.count]


class _Fit(NamedTuple):
    """t = fixed + per_unit * size + per_context * context (per_context 0 if not fitted)."""

    fixed: float
    per_unit: float
    per_context: float


class StepTimeModel:
    """One replica's step times: `observe` its steps, then ask `prefill_s`/`decode_step_s`."""

    def __init__(
        self,
        prior: StepTimePrior | None = None,
        window: int = 128,
        min_fit_observations: int = 8,
    ):
        if window < 2:
            raise ValueError(f"window must be at least 2 observations, got {window}")
        if min_fit_observations < 2:
            raise ValueError(f"min_fit_observations must be at least 2, got {min_fit_observations}")
        self.prior = prior or StepTimePrior()
        self.min_fit_observations = min_fit_observations
        self._windows = {kind: _Window(window) for kind in STEP_KINDS}
        self._fits: dict[str, _Fit | float | None] = {}  # kind -> fit, or prior scale
        self._unfitted = dict.fromkeys(STEP_KINDS, 0)  # observations since the last fit
        self._decode_context_per_row: float | None = None

    # -- feeding ------------------------------------------------------------------------
    def observe(self, kind: str, size: int, seconds: float, num_context_tokens: int = 0) -> None:
        """Record one step. kind: PREFILL (size = tokens fed) or DECODE (size = rows).
        num_context_tokens: tokens already in the KV cache that the step attended to
        (summed over rows)."""
        if kind not in STEP_KINDS:
            raise ValueError(f"kind must be one of {STEP_KINDS}, got {kind!r}")
        if size < 1:
            raise ValueError(f"size must be at least 1 (tokens or rows), got {size}")
        if not seconds >= 0:
            raise ValueError(f"seconds must be a non-negative number, got {seconds}")
        window = self._windows[kind]
        window.append(size, num_context_tokens, seconds)
        self._unfitted[kind] += 1
        if window.count < REFIT_FULL_BELOW or self._unfitted[kind] >= REFIT_EVERY:
            self._fits.pop(kind, None)
            self._decode_context_per_row = None

    def num_observations(self, kind: str) -> int:
        return self._windows[kind].count

    @property
    def has_data(self) -> bool:
        """Whether any step has been observed (predictions no longer the bare prior)."""
        windows = self._windows
        return bool(windows[PREFILL].count or windows[DECODE].count)

    # -- predicting ---------------------------------------------------------------------
    def prefill_s(self, num_tokens: int, num_context_tokens: int = 0) -> float:
        """Seconds to prefill num_tokens uncached tokens (as one step's worth of work;
        0 for none). num_context_tokens: cached tokens they attend to."""
        if num_tokens <= 0:
            return 0.0
        return self._predict(PREFILL, num_tokens, num_context_tokens)

    def decode_step_s(self, num_seqs: int, num_context_tokens: int | None = None) -> float:
        """Seconds of one decode step over num_seqs rows (0 for none). num_context_tokens:
        their total context; None assumes the window's typical context per row."""
        if num_seqs <= 0:
            return 0.0
        if num_context_tokens is None:
            num_context_tokens = round(self._context_per_row() * num_seqs)
        return self._predict(DECODE, num_seqs, num_context_tokens)

    def _context_per_row(self) -> float:
        """The decode window's mean context per row (cached until the next observation)."""
        if self._decode_context_per_row is None:
            rows = self._windows[DECODE].rows()
            per_row = _mean(rows[:, 1] / rows[:, 0]) if len(rows) else 0.0
            self._decode_context_per_row = per_row
        return self._decode_context_per_row

    def _predict(self, kind: str, size: int, num_context_tokens: int) -> float:
        if kind not in self._fits:
            self._fits[kind] = self._fit(kind)
            self._unfitted[kind] = 0
        fit = self._fits[kind]
        if isinstance(fit, _Fit):
            t = fit.fixed + fit.per_unit * size + fit.per_context * num_context_tokens
        else:
            t = self.prior.step_s(kind, size, num_context_tokens) * (fit or 1.0)
        return max(t, 0.0)

    # -- fitting ------------------------------------------------------------------------
    def _fit(self, kind: str) -> _Fit | float | None:
        """A least-squares fit if the window supports one, else the prior's scale (None:
        no observation)."""
        rows = self._windows[kind].rows()
        if not len(rows):
            return None
        if len(rows) >= self.min_fit_observations:
            fit = _robust_fit(rows)
            if fit is not None:
                return fit
        return _median(rows[:, 2] / self.prior.step_s(kind, rows[:, 0], rows[:, 1]))


# np.mean, np.std and np.median of a 1-D float64 array, computed with the very operations
# numpy's own use (the same sums, in the same order, so bit for bit the same results)
# without their per-call overhead: a router refits up to 16 replicas' models per request.
_add_reduce = np.add.reduce


def _mean(values: np.ndarray) -> float:
    """np.mean(values): their sum over their count."""
    return float(_add_reduce(values)) / len(values)


def _std(values: np.ndarray) -> float:
    """np.std(values) (ddof 0): the root of the mean squared deviation from the mean."""
    deviations = values - _add_reduce(values) / len(values)
    return math.sqrt(float(_add_reduce(deviations * deviations)) / len(values))


def _median(values: np.ndarray) -> float:
    """np.median(values) of finite values: the middle one, or the mean of the two middle
    ones (a sum that starts at 0.0, as numpy's does)."""
    half = len(values) // 2
    if len(values) % 2:
        return 0.0 + float(np.partition(values, half)[half])
    middle = np.partition(values, (half - 1, half))
    return (0.0 + float(middle[half - 1]) + float(middle[half])) / 2


def _varies(values: np.ndarray) -> bool:
    mean = _mean(np.abs(values))
    return mean > 0 and _std(values) > MIN_RELATIVE_SPREAD * mean


@functools.cache
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, k=1)


@functools.cache
def _spread(n: int) -> np.ndarray:
    """MAX_THEIL_SEN_POINTS indices evenly spread over range(n)."""
    return np.linspace(0, n - 1, MAX_THEIL_SEN_POINTS).round().astype(int)


def _theil_sen_slope(size: np.ndarray, seconds: np.ndarray) -> float:
    """The median of pairwise slopes (robust to nearly 30% outliers), over at most
    MAX_THEIL_SEN_POINTS points evenly spread across the sizes."""
    order = np.argsort(size, kind="stable")
    if len(order) > MAX_THEIL_SEN_POINTS:
        order = order[_spread(len(order))]
    x, y = size[order], seconds[order]
    i, j = _pairs(len(order))
    dx = x[j] - x[i]
    distinct = dx != 0  # (finite sizes: exactly where x[i] != x[j])
    return _median((y[j] - y[i])[distinct] / dx[distinct])


def _robust_fit(data: np.ndarray) -> _Fit | None:
    """Least squares on [1, size (, context)] over the inliers of a Theil-Sen line; None
    when the sizes do not vary or a slope comes out negative. data: [n, 3] rows of
    (size, context, seconds)."""
    size, context, seconds = data[:, 0], data[:, 1], data[:, 2]
    if not _varies(size):
        return None
    slope = _theil_sen_slope(size, seconds)
    residuals = seconds - slope * size
    residuals = np.abs(residuals - _median(residuals))
    limit = max(OUTLIER_MADS * MAD_TO_STD * _median(residuals), 1e-9)
    keep = residuals <= limit
    use_context = _varies(context[keep])
    columns = [np.ones(int(keep.sum())), size[keep]] + ([context[keep]] if use_context else [])
    x = np.stack(columns, axis=1)  # [inliers, features]
    coef, _, rank, _ = np.linalg.lstsq(x, seconds[keep], rcond=None)
    if rank < x.shape[1]:
        return None
    per_context = float(coef[2]) if use_context else 0.0
    if coef[1] < 0 or per_context < 0:
        return None
    return _Fit(float(coef[0]), float(coef[1]), per_context)
