"""The knobs of the SLO autoscaling policy (autoscale/slo_policy.py), validated once."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from autoscale.step_time import StepTimePrior


@dataclass(frozen=True)
class SloPolicyConfig:
    """Per-model settings of `slo_policy.decide`. Times in seconds."""

    min_replicas: int = 1
    max_replicas: int = 8
    ttft_s: float = 2.0  # SLO: time to first token, at p95
    tpot_s: float = 0.1  # SLO: time per output token, at p95
    target_utilization: float = 0.7  # scale up when the forecast load needs more than this
    scale_down_utilization: float = 0.5  # remove one only if the peak fits N-1 at this
    downscale_delay_s: float = 300.0  # every signal agrees this long before each removal
    demand_window_s: float = 600.0  # the peak of this window must fit after a removal
    forecast_window_s: float = 120.0  # the demand trend is fitted over this window
    rate_window_s: float = 30.0  # demand rates: averaged over this much of the counters
    kv_high: float = 0.85  # a replica's KV usage over this asks for one more replica
    kv_low: float = 0.5  # every replica under this, or no removal
    default_startup_s: float = 120.0  # load + warm-up, until a replica reports its own
    stuck_startup_factor: float = 3.0  # starting longer than this x start-up: not capacity
    settle_s: float = 60.0  # breaches ignored this long after the serving count rises
    max_scale_up_step: int | None = None  # replicas added per decision at most (None: any)
    max_num_seqs: int = 256  # the engine's decode batch limit
    prefill_chunk_tokens: int = 2048  # the engine's prefill tokens per step
    step_time_prior: StepTimePrior = field(default_factory=StepTimePrior)  # before any fit

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError(f"min_replicas must be at least 0, got {self.min_replicas}")
        if self.max_replicas < max(1, self.min_replicas):
            raise ValueError(
                f"max_replicas must be at least 1 and at least min_replicas "
                f"({self.min_replicas}), got {self.max_replicas}"
            )
        for name in (
            "ttft_s",
            "tpot_s",
            "default_startup_s",
            "demand_window_s",
            "forecast_window_s",
            "rate_window_s",
        ):
            _require(name, getattr(self, name), "a positive finite number", _positive)
        for name in ("downscale_delay_s", "settle_s"):
            _require(name, getattr(self, name), "a finite number >= 0", _non_negative)
        if not 0 < self.scale_down_utilization < self.target_utilization <= 1:
            raise ValueError(
                "scale_down_utilization and target_utilization must satisfy "
                "0 < scale_down_utilization < target_utilization <= 1, got "
                f"{self.scale_down_utilization} and {self.target_utilization}"
            )
        if not 0 <= self.kv_low < self.kv_high <= 1:
            raise ValueError(
                "kv_low and kv_high must satisfy 0 <= kv_low < kv_high <= 1, "
                f"got {self.kv_low} and {self.kv_high}"
            )
        _require("stuck_startup_factor", self.stuck_startup_factor, "a number > 1", _over_one)
        if self.max_scale_up_step is not None and self.max_scale_up_step < 1:
            raise ValueError(
                f"max_scale_up_step must be None or at least 1, got {self.max_scale_up_step}"
            )
        for name in ("max_num_seqs", "prefill_chunk_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _non_negative(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def _over_one(value: float) -> bool:
    return math.isfinite(value) and value > 1


def _require(name: str, value: float, expected: str, check) -> None:
    if not check(value):
        raise ValueError(f"{name} must be {expected}, got {value}")
