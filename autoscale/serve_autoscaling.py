"""The SLO autoscaling policy (autoscale/slo_policy.py) as a Ray Serve autoscaling policy.

Serve imports `SloAutoscalingPolicy` in its controller (`AutoscalingPolicy(policy_function=
"autoscale.serve_autoscaling:SloAutoscalingPolicy", policy_kwargs=...)`), builds it once
with `policy_kwargs` (the SloPolicyConfig fields as JSON: `policy_kwargs(config)`) and
calls it with an AutoscalingContext on every control-loop tick. The call only translates:

- each running replica's latest custom metrics (`record_autoscaling_stats`, encoded by
  `encode_replica_stats`) -> a ReplicaMetrics stamped with the time the replica took them;
  a replica that has not reported yet is left out (the policy counts it as starting);
- ctx.target_num_replicas, and the requests queued at handles while no replica runs ->
  FleetMetrics;
- `decide(fleet, config, state, now)` with the PolicyState kept in ctx.policy_state;
- its count clamped to ctx.capacity_adjusted_min/max_replicas, and the new policy state.

Serve wraps a custom policy in its own delay logic (upscale_delay_s, downscale_delay_s):
the config gives Serve 0 for the downscale delay, as the policy has its own. A decision
that changes the count is logged (reason, replicas serving/starting, demand vs capacity
in tokens/s); the last decision's figures stay in the policy state under DECISION_KEY and
are published for the ingress's /metrics (autoscale/decision_board.py).

Serve reads the metrics as floats: a value the replica does not know (no request in its
latency window, no step fitted, start-up not measured) is left out of its report, and a
key counts only when it comes from the same report as the counters.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from autoscale.decision_board import DecisionBoard
from autoscale.slo_config import SloPolicyConfig
from autoscale.slo_policy import Decision, FleetMetrics, PolicyState, ReplicaMetrics, decide
from autoscale.step_time import StepTimePrior

logger = logging.getLogger("ray.serve")

__all__ = [
    "DECISION_KEY",
    "POLICY_FUNCTION",
    "STATE_KEY",
    "SloAutoscalingPolicy",
    "decode_replica_stats",
    "encode_replica_stats",
    "policy_kwargs",
]

POLICY_FUNCTION = "autoscale.serve_autoscaling:SloAutoscalingPolicy"
STATE_KEY = "slo_policy_state"  # ctx.policy_state[STATE_KEY]: the PolicyState
DECISION_KEY = "slo_decision"  # ctx.policy_state[DECISION_KEY]: the last decision, plain

# Replica metric keys: ReplicaMetrics fields, and the step-time lines as four floats.
COUNTER_KEYS = ("prompt_tokens_total", "generated_tokens_total")
GAUGE_KEYS = ("num_queued_prompt_tokens", "num_waiting", "num_running", "kv_usage")
OPTIONAL_KEYS = ("ttft_p95_s", "tpot_p95_s", "startup_s")
STEP_TIME_PREFIX = "step_time_"  # + a StepTimePrior field: step_time_decode_fixed_s
STEP_TIME_FIELDS = tuple(f.name for f in dataclasses.fields(StepTimePrior))
INT_KEYS = ("num_queued_prompt_tokens", "num_waiting", "num_running", *COUNTER_KEYS)


def encode_replica_stats(
    *,
    prompt_tokens_total: int,
    generated_tokens_total: int,
    num_queued_prompt_tokens: int,
    num_waiting: int,
    num_running: int,
    kv_usage: float,
    ttft_p95_s: float | None,
    tpot_p95_s: float | None,
    step_time: StepTimePrior | None,
    startup_s: float | None,
) -> dict[str, float]:
    """A replica's ReplicaMetrics fields as Serve custom metrics; unknown ones left out."""
    values = {
        "prompt_tokens_total": prompt_tokens_total,
        "generated_tokens_total": generated_tokens_total,
        "num_queued_prompt_tokens": num_queued_prompt_tokens,
        "num_waiting": num_waiting,
        "num_running": num_running,
        "kv_usage": kv_usage,
        "ttft_p95_s": ttft_p95_s,
        "tpot_p95_s": tpot_p95_s,
        "startup_s": startup_s,
    }
    if step_time is not None:
        for name in STEP_TIME_FIELDS:
            values[STEP_TIME_PREFIX + name] = getattr(step_time, name)
    return {key: float(value) for key, value in values.items() if value is not None}


def decode_replica_stats(
    replica_id: Any, at: float, values: Mapping[str, float]
) -> ReplicaMetrics | None:
    """The ReplicaMetrics of one report (None without its counters)."""
    if any(key not in values for key in COUNTER_KEYS):
        return None
    fields: dict[str, Any] = {
        key: values[key] for key in (*COUNTER_KEYS, *GAUGE_KEYS, *OPTIONAL_KEYS) if key in values
    }
    for key in INT_KEYS:
        if key in fields:
            fields[key] = round(fields[key])
    step_keys = [STEP_TIME_PREFIX + name for name in STEP_TIME_FIELDS]
    if all(key in values for key in step_keys):
        fields["step_time"] = StepTimePrior(*(values[key] for key in step_keys))
    return ReplicaMetrics(replica_id, at, **fields)


def policy_kwargs(config: SloPolicyConfig) -> dict[str, Any]:
    """SloPolicyConfig as Serve's policy_kwargs (JSON-serializable)."""
    return dataclasses.asdict(config)


def _latest_report(series_by_key: Mapping[str, list]) -> tuple[float, dict[str, float]] | None:
    """(when, values) of a replica's latest report: every key whose last point has the
    counters' last timestamp. series_by_key: key -> Serve TimeSeries (TimeStampedValue)."""
    counters = series_by_key.get(COUNTER_KEYS[0])
    if not counters:
        return None
    at = counters[-1].timestamp
    values = {
        key: series[-1].value
        for key, series in series_by_key.items()
        if series and series[-1].timestamp == at
    }
    return at, values


def fleet_metrics(ctx: Any) -> FleetMetrics:
    """FleetMetrics of a Serve AutoscalingContext (module doc)."""
    raw = ctx.raw_metrics or {}
    replicas = []
    for replica in ctx.running_replicas:
        report = _latest_report({key: raw[key][replica] for key in raw if replica in raw[key]})
        if report is None:
            continue
        metrics = decode_replica_stats(replica.unique_id, *report)
        if metrics is not None:
            replicas.append(metrics)
    waiting = 0
    if ctx.current_num_replicas == 0:
        waiting = math.ceil(ctx.total_queued_requests or 0)
    return FleetMetrics(tuple(replicas), ctx.target_num_replicas, num_waiting_at_callers=waiting)


class SloAutoscalingPolicy:
    """Serve's policy callable for one deployment: `SloAutoscalingPolicy(**policy_kwargs)`,
    then `policy(ctx) -> (num_replicas, policy_state)` (module doc)."""

    def __init__(self, **kwargs: Any):
        prior = kwargs.get("step_time_prior")
        if isinstance(prior, Mapping):
            kwargs = {**kwargs, "step_time_prior": StepTimePrior(**prior)}
        self.config = SloPolicyConfig(**kwargs)
        self._board: DecisionBoard | None = None

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        state = ctx.policy_state.get(STATE_KEY) or PolicyState()
        now = ctx.current_time if ctx.current_time is not None else time.time()
        decision = decide(fleet_metrics(ctx), self.config, state, now)
        num_replicas = min(
            max(decision.num_replicas, ctx.capacity_adjusted_min_replicas),
            ctx.capacity_adjusted_max_replicas,
        )
        if num_replicas != ctx.target_num_replicas:
            _log(ctx, num_replicas, decision)
        summary = _summary(num_replicas, decision)
        if num_replicas != decision.num_replicas and summary["limited_by"] is None:
            summary["limited_by"] = "cluster_capacity"  # Serve's capacity-adjusted bounds
        policy_state = {**ctx.policy_state, STATE_KEY: decision.state, DECISION_KEY: summary}
        if self._board is None:
            self._board = DecisionBoard(ctx.app_name, ctx.deployment_name)
        self._board.offer(summary)
        return num_replicas, policy_state


def _summary(num_replicas: int, decision: Decision) -> dict[str, Any]:
    f = decision.figures
    return {
        "num_replicas": num_replicas,
        "reason": decision.reason,
        "limited_by": f.limited_by,
        "num_serving": f.num_serving,
        "num_starting": f.num_starting,
        "num_stuck": f.num_stuck,
        "demand_tokens_s": f.demand_tokens_s,
        "forecast_tokens_s": f.forecast_tokens_s,
        "capacity_tokens_s": f.capacity_tokens_s,
        "utilization": f.utilization,
        "startup_s": f.startup_s,
    }


def _log(ctx: Any, num_replicas: int, decision: Decision) -> None:
    f = decision.figures
    logger.info(
        "slo autoscaling %s: %d -> %d replicas (%s%s); serving %d, starting %d (stuck %d); "
        "demand %.0f tokens/s (forecast %.0f) vs capacity %.0f tokens/s at the SLO, "
        "utilization %.2f, start-up %.0f s",
        ctx.deployment_name,
        ctx.target_num_replicas,
        num_replicas,
        decision.reason,
        f", limited by {f.limited_by}" if f.limited_by else "",
        f.num_serving,
        f.num_starting,
        f.num_stuck,
        f.demand_tokens_s,
        f.forecast_tokens_s,
        f.capacity_tokens_s,
        f.utilization,
        f.startup_s,
    )
