"""Synthetic traces: seeded arrival processes, token-length distributions and shared-prefix
groups, composed by `synthesize(SynthSpec)` into a list of TraceRequests.

Arrivals (requests per second `rate`, over [0, duration_s)):
    poisson   exponential inter-arrivals, mean 1/rate (coefficient of variation 1)
    bursty    Gamma inter-arrivals with shape 1/cv**2 and mean 1/rate: the same mean rate,
              burstier than Poisson for cv > 1, smoother for cv < 1
    diurnal   a Poisson process whose rate swings sinusoidally,
              rate(t) = rate * (1 + amplitude * sin(2 pi t / period_s)), drawn by thinning:
              candidates at the peak rate rate * (1 + amplitude), each kept with
              probability rate(t) / peak (Lewis and Shedler)

Lengths: Fixed(n), Uniform(low, high) (inclusive), or LogNormal(mean, cv, min, max):
exp(N(mu, sigma)) with sigma**2 = ln(1 + cv**2) and mu = ln(mean) - sigma**2 / 2, so the
unclipped mean is `mean` and its std `cv * mean`; rounded and clipped to [min, max].

Prefix groups: each request joins a group with probability `fraction`; group i of
`num_groups` is picked with weight 1 / (i + 1)**zipf_s ("zipf") or evenly ("uniform").
A grouped request's prompt is the group's `prefix_tokens` followed by its own sampled
prompt length: `prompt_tokens = prefix_tokens + sampled`, so the prompt distribution
describes the part after the shared prefix (a system prompt plus a question).

Determinism: arrivals, lengths and groups each draw from their own `random.Random` seeded
from (seed, purpose), so the same spec always gives the same trace, and changing the
length distribution leaves the arrival times as they were.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from autoscale.sim.trace import TraceRequest

ARRIVAL_KINDS = ("poisson", "bursty", "diurnal")
POPULARITIES = ("zipf", "uniform")

__all__ = [
    "ARRIVAL_KINDS",
    "POPULARITIES",
    "Fixed",
    "LogNormal",
    "PrefixGroups",
    "SynthSpec",
    "Uniform",
    "bursty_arrivals",
    "diurnal_arrivals",
    "parse_lengths",
    "parse_prefix_groups",
    "poisson_arrivals",
    "synthesize",
]


class Fixed(NamedTuple):
    """Every request has `tokens` tokens."""

    tokens: int

    def sample(self, rng: random.Random) -> int:
        return self.tokens

    def check(self, name: str) -> None:
        _check_int(name, self.tokens, 1)


class Uniform(NamedTuple):
    """Token counts uniform over [low, high], both included."""

    low: int
    high: int

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)

    def check(self, name: str) -> None:
        _check_int(f"{name} low", self.low, 1)
        _check_int(f"{name} high", self.high, self.low)


class LogNormal(NamedTuple):
    """Log-normal token counts with mean `mean` and coefficient of variation `cv` before
    rounding and clipping to [min_tokens, max_tokens] (see the module doc)."""

    mean: float
    cv: float
    min_tokens: int = 1
    max_tokens: int = 1 << 20

    def sample(self, rng: random.Random) -> int:
        sigma = math.sqrt(math.log1p(self.cv**2))
        mu = math.log(self.mean) - sigma**2 / 2
        value = round(rng.lognormvariate(mu, sigma))
        return min(max(value, self.min_tokens), self.max_tokens)

    def check(self, name: str) -> None:
        if not (self.mean > 0 and math.isfinite(self.mean)):
            raise ValueError(f"{name} mean must be a number > 0, got {self.mean!r}")
        if not (self.cv >= 0 and math.isfinite(self.cv)):
            raise ValueError(f"{name} cv must be a number >= 0, got {self.cv!r}")
        _check_int(f"{name} min", self.min_tokens, 1)
        _check_int(f"{name} max", self.max_tokens, self.min_tokens)


Lengths = Fixed | Uniform | LogNormal
DEFAULT_PROMPT = Fixed(512)
DEFAULT_OUTPUT = Fixed(128)


class PrefixGroups(NamedTuple):
    """Shared-prefix groups: `fraction` of the requests share one of `num_groups` prefixes
    of `prefix_tokens` tokens; popularity "zipf" (weight 1 / (i + 1)**zipf_s) or "uniform"."""

    num_groups: int
    prefix_tokens: int
    fraction: float = 1.0
    popularity: str = "zipf"
    zipf_s: float = 1.0

    def check(self) -> None:
        _check_int("prefix groups num_groups", self.num_groups, 1)
        _check_int("prefix groups prefix_tokens", self.prefix_tokens, 1)
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"prefix groups fraction must be in [0, 1], got {self.fraction!r}")
        if self.popularity not in POPULARITIES:
            raise ValueError(
                f"prefix groups popularity must be one of {list(POPULARITIES)}, "
                f"got {self.popularity!r}"
            )
        if not (self.zipf_s >= 0 and math.isfinite(self.zipf_s)):
            raise ValueError(f"prefix groups zipf_s must be a number >= 0, got {self.zipf_s!r}")

    def weights(self) -> list[float]:
        if self.popularity == "uniform":
            return [1.0] * self.num_groups
        return [1.0 / (i + 1) ** self.zipf_s for i in range(self.num_groups)]


@dataclass(frozen=True)
class SynthSpec:
    """What `synthesize` draws: the arrival process (`kind` of ARRIVAL_KINDS at `rate`
    requests/s over `duration_s`; `cv` for bursty, `period_s` and `amplitude` for
    diurnal), the prompt and output lengths, optional prefix groups, and the seed."""

    kind: str
    rate: float
    duration_s: float
    seed: int = 0
    cv: float = 2.0
    period_s: float = 3600.0
    amplitude: float = 0.5
    prompt: Lengths = DEFAULT_PROMPT
    output: Lengths = DEFAULT_OUTPUT
    prefix: PrefixGroups | None = None

    def __post_init__(self):
        if self.kind not in ARRIVAL_KINDS:
            raise ValueError(f"kind must be one of {list(ARRIVAL_KINDS)}, got {self.kind!r}")
        _check_positive("rate", self.rate)
        _check_positive("duration_s", self.duration_s)
        _check_positive("cv", self.cv)
        _check_positive("period_s", self.period_s)
        if not 0.0 <= self.amplitude <= 1.0:
            raise ValueError(f"amplitude must be in [0, 1], got {self.amplitude!r}")
        self.prompt.check("prompt tokens")
        self.output.check("output tokens")
        if self.prefix is not None:
            self.prefix.check()


def poisson_arrivals(rate: float, duration_s: float, rng: random.Random) -> list[float]:
    """Arrival times of a Poisson process at `rate` per second over [0, duration_s)."""
    return _renewal(lambda: rng.expovariate(rate), duration_s)


def bursty_arrivals(rate: float, cv: float, duration_s: float, rng: random.Random) -> list[float]:
    """Arrival times with Gamma inter-arrivals of mean 1/rate and coefficient of variation
    `cv` (shape k = 1/cv**2, scale 1/(rate k)) over [0, duration_s)."""
    shape = 1.0 / cv**2
    scale = 1.0 / (rate * shape)
    return _renewal(lambda: rng.gammavariate(shape, scale), duration_s)


def diurnal_arrivals(
    rate: float, duration_s: float, period_s: float, amplitude: float, rng: random.Random
) -> list[float]:
    """Arrival times of a Poisson process with rate(t) = rate (1 + amplitude sin(2 pi t /
    period_s)) over [0, duration_s), by thinning a process at the peak rate."""
    peak = rate * (1.0 + amplitude)
    kept = []
    for t in poisson_arrivals(peak, duration_s, rng):
        now_rate = rate * (1.0 + amplitude * math.sin(2.0 * math.pi * t / period_s))
        if rng.random() * peak < now_rate:
            kept.append(t)
    return kept


def synthesize(spec: SynthSpec) -> list[TraceRequest]:
    """The trace `spec` describes (see the module doc); the same spec, the same trace."""
    arrival_rng = random.Random(f"{spec.seed}:arrivals")
    if spec.kind == "poisson":
        times = poisson_arrivals(spec.rate, spec.duration_s, arrival_rng)
    elif spec.kind == "bursty":
        times = bursty_arrivals(spec.rate, spec.cv, spec.duration_s, arrival_rng)
    else:
        times = diurnal_arrivals(
            spec.rate, spec.duration_s, spec.period_s, spec.amplitude, arrival_rng
        )
    length_rng = random.Random(f"{spec.seed}:lengths")
    group_rng = random.Random(f"{spec.seed}:groups")
    weights = spec.prefix.weights() if spec.prefix else []
    requests = []
    for t in times:
        prompt_tokens = spec.prompt.sample(length_rng)
        output_tokens = spec.output.sample(length_rng)
        prefix_id, prefix_tokens = None, 0
        if spec.prefix is not None and group_rng.random() < spec.prefix.fraction:
            group = group_rng.choices(range(spec.prefix.num_groups), weights)[0]
            prefix_id, prefix_tokens = f"group-{group}", spec.prefix.prefix_tokens
            prompt_tokens += prefix_tokens
        requests.append(
            TraceRequest(round(t, 6), prompt_tokens, output_tokens, prefix_id, prefix_tokens)
        )
    return requests


def parse_lengths(text: str, name: str = "lengths") -> Lengths:
    """A length distribution from its command-line form:

        128                        Fixed(128)  (also "fixed:128")
        uniform:64:256             Uniform(64, 256)
        lognormal:512:0.5          LogNormal(mean 512, cv 0.5)
        lognormal:512:0.5:16:2048  ... clipped to [16, 2048]

    Raises ValueError naming `name` and the accepted forms."""
    forms = "N, fixed:N, uniform:LOW:HIGH or lognormal:MEAN:CV[:MIN:MAX]"
    kind, *fields = text.strip().split(":")
    try:
        if not fields and kind.isdigit():
            lengths: Lengths = Fixed(int(kind))
        elif kind == "fixed" and len(fields) == 1:
            lengths = Fixed(int(fields[0]))
        elif kind == "uniform" and len(fields) == 2:
            lengths = Uniform(int(fields[0]), int(fields[1]))
        elif kind == "lognormal" and len(fields) in (2, 4):
            mean, cv = float(fields[0]), float(fields[1])
            bounds = [int(f) for f in fields[2:]]
            lengths = LogNormal(mean, cv, *bounds)
        else:
            raise ValueError(f"expected {forms}")
        lengths.check(name)
    except ValueError as exc:
        raise ValueError(f"{name}: bad value {text!r}: {exc}") from None
    return lengths


def parse_prefix_groups(text: str) -> PrefixGroups:
    """Prefix groups from `NUM_GROUPS:PREFIX_TOKENS[:FRACTION[:zipf|uniform]]`, e.g.
    `8:256:0.75:zipf`. Raises ValueError naming the accepted form."""
    form = "NUM_GROUPS:PREFIX_TOKENS[:FRACTION[:zipf|uniform]]"
    fields = text.strip().split(":")
    try:
        if not 2 <= len(fields) <= 4:
            raise ValueError(f"expected {form}")
        groups = PrefixGroups(
            int(fields[0]),
            int(fields[1]),
            float(fields[2]) if len(fields) > 2 else 1.0,
            fields[3] if len(fields) > 3 else "zipf",
        )
        groups.check()
    except ValueError as exc:
        raise ValueError(f"prefix groups: bad value {text!r}: {exc}") from None
    return groups


def _renewal(draw: Callable[[], float], duration_s: float) -> list[float]:
    times, t = [], draw()
    while t < duration_s:
        times.append(t)
        t += draw()
    return times


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
