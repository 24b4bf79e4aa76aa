"""Adaptive speculation: how many tokens to propose this step (0 = a plain decode step).

The rule. Let a be the per-token acceptance probability (each proposal is accepted with
probability a, independently, until the first rejection). A verify step with k proposals
then emits on average

    E(a, k) = 1 + a + a^2 + ... + a^k = (1 - a^(k+1)) / (1 - a)

tokens per sequence (the accepted prefix plus the target's own token), against exactly 1
for a plain decode step. With B sequences in the (padded) batch, the step costs

    plain:        T(B)                                  one target step of B tokens
    speculative:  T(B (k + 1)) + D(2 B) + (k - 1) D(B)  verify + draft sync + k - 1 draft steps

where T(n) and D(n) are the target's and the draft's forward time over n tokens,
interpolated between measured points (`StepCosts`); for the n-gram proposer D = 0. Both
kinds of step also pay the engine's host time H (scheduling, inputs, outputs; measured on
every decode step). The predicted speedup of k is

    mean over the batch's sequences b of E(a_b, k)  *  (T(B) + H) / (S(B, k) + H)

with S(B, k) = T(B (k+1)) + D(2B) + (k-1) D(B)

and `choose_k` picks the k with the largest one among the warmed choices (1, 2, 4, ... up
to num_speculative_tokens), or 0 when none reaches MIN_SPEEDUP. Both ways speculation
loses follow from it: once the batch is large enough for the target to be compute-bound,
T(B (k+1)) ~ (k+1) T(B) and no acceptance rate pays for the verify step; and when a is low,
E(a, k) ~ 1 and the draft's k forwards are pure cost. While the batch is small, steps are
bound by fixed costs (weights read once, launch and host overhead), T(B (k+1)) ~ T(B), and
speculation wins whenever a is not tiny.

Acceptance is tracked as an EWMA per model and per request (`AcceptanceTracker`): a verify
row with n proposals of which m were accepted adds m successes and, when m < n, one
failure; a = successes / (successes + failures) is the maximum-likelihood estimate under
the model above, shrunk towards an optimistic prior (0.8, worth 4 rows) so that a new
engine speculates and measures. A request starts from the model's estimate. While
speculation is off the model's observations fade (PLAIN_STEP_DECAY per decode step), so
after a long stretch the prior brings speculation back for a fresh measurement, but only
at batch sizes where it would pay at the prior's acceptance: a large batch never pays for
the draft's catch-up just to re-measure.

Measured step costs. The engine calibrates `StepCosts` at start-up (after warmup) by
timing warmed all-padding steps at every decode batch bucket; without warmup it uses
DEFAULT_DRAFT_COSTS, measured for the bundled pycoder (5.5M parameters, 6 layers) and
pycoder-draft (0.9M, 2 layers) on this repository's CPU machine (2 cores, 1 torch thread,
fp32, 20 context blocks of 16 tokens per row, median CPU time of 40 steps; the machine is
shared, so the figures are good to ~15%), in units of the target's 1-token step (5.3 ms):

    tokens per step:  1     2     3     5     16    32    80
    target          1.00  1.25  1.30  1.40  3.40  4.20  9.0
    draft           0.22  0.27    -     -   0.96  1.37    -

On a CPU the first extra token is the dear one (a matrix-vector product becomes a
matrix-matrix one: +25-45%), and 16 rows cost 2-3.4x one row (runs differ; each row's
attention reads its own 320-token context). So at batch 1, k = 2 costs
1.30 + 0.27 + 0.22 = 1.8 plain steps and k = 4 costs 1.40 + 0.27 + 3 x 0.22 = 2.3:
speculation pays from a ~ 0.6 on, and a = 0.75 predicts 1.3x. At batch 16 even k = 1
costs 1.6 plain steps (4.2 + 1.37 vs 3.4) and needs a > 0.72; larger k need a > 0.85.
The draft is far costlier than its 1/6 of the target's parameters suggests: tiny models
on a CPU are bound by per-op overhead, not by weight reads. (The speculative section of
benchmarks/RESULTS.md has the end-to-end figures.)
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

MIN_SPEEDUP = 1.05  # speculate only for a predicted gain of at least 5%
PLAIN_STEP_DECAY = 0.995  # the model estimate's memory while not speculating (~140 steps)


def k_choices(max_k: int, adaptive: bool) -> tuple[int, ...]:
    """Proposal counts a verify step may use (each warms its own verify buckets).

    >>> k_choices(5, adaptive=True)
    (1, 2, 4, 5)
    >>> k_choices(5, adaptive=False)
    (5,)
    """
    if not adaptive:
        return (max_k,)
    values = {max_k}
    value = 1
    while value < max_k:
        values.add(value)
        value *= 2
    return tuple(sorted(values))


def expected_tokens(alpha: float, k: int) -> float:
    """Mean tokens a sequence emits in a verify step with k proposals.

    >>> expected_tokens(0.5, 2)
    1.75
    >>> expected_tokens(1.0, 4)
    5.0
    """
    if alpha >= 1.0 - 1e-9:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


Points = tuple[tuple[int, float], ...]  # (tokens per step, forward time), ascending


@dataclass(frozen=True)
class StepCosts:
    """Forward time by tokens per step, piecewise linear between measured points (any
    unit: the rule uses ratios), for the target and the draft. No draft points = n-gram
    (proposing costs nothing next to a forward).

    >>> costs = StepCosts(((1, 1.0), (5, 1.4), (80, 5.0)), draft_points=((1, 0.2), (16, 0.5)))
    >>> round(costs.target(3), 3), round(costs.target(100), 3), costs.draft(1)
    (1.2, 5.96, 0.2)
    """

    target_points: Points
    draft_points: Points = ()

    def target(self, num_tokens: int) -> float:
        return _interpolate(self.target_points, num_tokens)

    def draft(self, num_tokens: int) -> float:
        return _interpolate(self.draft_points, num_tokens)

    def speculative_step(self, batch_size: int, k: int) -> float:
        """Verify + draft sync + k - 1 draft steps, for a padded batch of batch_size."""
        drafting = self.draft(2 * batch_size) + (k - 1) * self.draft(batch_size)
        return self.target(batch_size * (k + 1)) + drafting


def _interpolate(points: Points, num_tokens: int) -> float:
    """Linear between neighbouring points; past either end, the nearest segment's slope."""
    if not points or num_tokens <= 0:
        return 0.0
    if len(points) == 1:
        return points[0][1]
    index = bisect.bisect_left([x for x, _ in points], num_tokens)
    index = min(max(index, 1), len(points) - 1)
    (x0, y0), (x1, y1) = points[index - 1], points[index]
    return max(y0 + (y1 - y0) * (num_tokens - x0) / (x1 - x0), 0.0)


# See the module docstring: the bundled pair on a 2-core CPU, in units of the target's
# 1-token step.
DEFAULT_DRAFT_COSTS = StepCosts(
    target_points=((1, 1.0), (2, 1.25), (3, 1.3), (5, 1.4), (16, 3.4), (32, 4.2), (80, 9.0)),
    draft_points=((1, 0.22), (2, 0.27), (16, 0.96), (32, 1.37)),
)
DEFAULT_NGRAM_COSTS = StepCosts(DEFAULT_DRAFT_COSTS.target_points)


def speedup(
    alphas: Sequence[float], batch_size: int, k: int, costs: StepCosts, host_s: float = 0.0
) -> float:
    """Predicted tokens per second with k proposals over a plain decode step's; host_s:
    the engine's own time per step (either kind), in the costs' unit."""
    if k == 0 or not alphas:
        return 1.0
    tokens = sum(expected_tokens(a, k) for a in alphas) / len(alphas)
    return step_speedup(tokens, batch_size, k, costs, host_s)


def step_speedup(
    mean_tokens: float,
    batch_size: int,
    k: int,
    costs: StepCosts,
    host_s: float = 0.0,
    is_drafting: bool = True,
) -> float:
    """A verify step emitting mean_tokens per sequence, over a plain decode step;
    is_drafting=False: no draft forwards (n-gram proposals only)."""
    plain = costs.target(batch_size) + host_s
    verify = (
        costs.speculative_step(batch_size, k) if is_drafting else costs.target(batch_size * (k + 1))
    )
    return mean_tokens * plain / (verify + host_s)


def choose_k(
    alphas: Sequence[float],
    batch_size: int,
    choices: Sequence[int],
    costs: StepCosts,
    min_speedup: float = MIN_SPEEDUP,
    host_s: float = 0.0,
) -> int:
    """The k of `choices` with the best predicted speedup, or 0 when none reaches
    min_speedup. alphas: each running sequence's acceptance; batch_size: padded.

    >>> costs = StepCosts(((1, 1.0), (100, 2.0)), draft_points=((1, 0.3), (100, 0.5)))
    >>> choose_k([0.9], 1, (1, 2, 4), costs), choose_k([0.1], 1, (1, 2, 4), costs)
    (4, 0)
    >>> choose_k([0.8] * 256, 256, (1, 2, 4), costs)  # compute-bound: verify costs (k+1)x
    0
    """
    gains = {k: speedup(alphas, batch_size, k, costs, host_s) for k in choices}
    best = max(gains, key=gains.__getitem__)
    return best if gains[best] >= min_speedup else 0


def choose_hybrid(
    ngram_alphas: Sequence[float],
    draft_alphas: Sequence[float],
    hit_rate: float,
    batch_size: int,
    choices: Sequence[int],
    costs: StepCosts,
    min_speedup: float = MIN_SPEEDUP,
    host_s: float = 0.0,
) -> tuple[int, bool]:
    """(k, use_draft) for the hybrid proposer, or (0, False). A share hit_rate of rows
    finds a full n-gram proposal (acceptance ngram_alphas); the others get the draft's
    (draft_alphas) at the draft's cost, or nothing: n-gram alone costs no draft forwards.

    >>> costs = StepCosts(((1, 1.0), (100, 2.0)), draft_points=((1, 0.5), (100, 0.6)))
    >>> choose_hybrid([0.9], [0.6], 0.5, 1, (1, 2, 4), costs)  # the draft does not pay
    (4, False)
    """
    options = {}
    for k in choices:
        looked_up = [hit_rate * expected_tokens(a, k) for a in ngram_alphas]
        alone = sum(n + 1.0 - hit_rate for n in looked_up) / len(looked_up)
        drafted = [expected_tokens(a, k) for a in draft_alphas]
        both = sum(n + (1.0 - hit_rate) * d for n, d in zip(looked_up, drafted, strict=True))
        both /= len(looked_up)
        options[k, False] = step_speedup(alone, batch_size, k, costs, host_s, False)
        options[k, True] = step_speedup(both, batch_size, k, costs, host_s, hit_rate < 1.0)
    best = max(options, key=options.__getitem__)
    return best if options[best] >= min_speedup else (0, False)


class AcceptanceTracker:
    """EWMA acceptance per model and per request (see the module docstring).

    prior: the model's acceptance before any observation (weight prior_weight rows).
    model_decay / request_decay: the weight an observation keeps per later verify row.
    """

    def __init__(
        self,
        prior: float = 0.8,
        prior_weight: float = 4.0,
        model_decay: float = 0.99,
        request_decay: float = 0.8,
    ):
        self.prior = prior
        self.prior_weight = prior_weight
        self.model_decay = model_decay
        self.request_decay = request_decay
        self._model = [0.0, 0.0]  # decayed successes, failures
        self._requests: dict[str, list[float]] = {}

    def record(self, request_id: str, num_proposed: int, num_accepted: int) -> None:
        if num_proposed <= 0:
            return
        failures = 1.0 if num_accepted < num_proposed else 0.0
        request = self._requests.setdefault(request_id, [0.0, 0.0])
        for counts, decay in ((self._model, self.model_decay), (request, self.request_decay)):
            counts[0] = decay * counts[0] + num_accepted
            counts[1] = decay * counts[1] + failures

    def on_plain_step(self, decay: float = PLAIN_STEP_DECAY) -> None:
        """A decode step without speculation: the model's observations fade."""
        self._model = [c * decay for c in self._model]

    @property
    def model_alpha(self) -> float:
        return self._estimate(self._model, self.prior)

    def alpha(self, request_id: str) -> float:
        model = self.model_alpha
        counts = self._requests.get(request_id)
        return model if counts is None else self._estimate(counts, model)

    def release(self, request_id: str) -> None:
        self._requests.pop(request_id, None)

    def _estimate(self, counts: list[float], prior: float) -> float:
        successes, failures = counts
        weight = self.prior_weight
        return (successes + prior * weight) / (successes + failures + weight)
