"""Simulate one model of a serving config over a trace: `simulate(model, trace, cost)`.

The model's config (deployments.config.ModelConfig) sets what production would run:
- each replica's engine: the `engine:` options as `deployments.engine_config` maps them to
  an EngineConfig, max_model_len resolved as the engine resolves it (the model's
  max_position_embeddings from its config.json when the folder is here, else the
  engine's default cap);
- its KV cache: engine.kv_cache_tokens, else the step model's `kv_cache_tokens` (when it
  has one), else the engine's cap max_num_seqs x max_model_len (the engine sizes it from
  free device memory, which the simulator does not have);
- the router: serve.request_router (or `router=`);
- the replica count: serve.num_replicas, or serve.autoscaling (policy slo: the production
  `decide` with the config's SloPolicyConfig; ongoing_requests: Ray Serve's default,
  autoscale/sim/policies.py), starting at initial_replicas (default min_replicas; 0
  scales from zero at the first request);
- serve.max_ongoing_requests and serve.max_queued_requests;
- serve.max_queue_wait_s (admission control, decided by the kv_aware router's production
  code: autoscale/sim/policies.py), serve.cold_start_timeout_s (a request that arrives
  while no replica serves is refused after that long without one) and
  serve.drain_timeout_s (a replica removed on scale-down is stopped that long after,
  its unfinished requests lost): autoscale/sim/fleet.py.
Speculative decoding is not simulated: a model with `speculative` set runs as plain
decoding. The run is deterministic: the only randomness (the router's draws) comes from
`seed`.
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from autoscale.router_choice import REQUEST_ROUTERS
from autoscale.sim.fleet import Fleet, FleetConfig, ScaleEvent
from autoscale.sim.policies import (
    SERVE_DOWNSCALE_DELAY_S,
    SERVE_UPSCALE_DELAY_S,
    OngoingRequestsSimAutoscaler,
    ServeDelay,
    SimAutoscaler,
    SloSimAutoscaler,
    make_router,
)
from autoscale.sim.records import FleetSample, RequestRecord
from autoscale.sim.replica import kv_cache_blocks
from autoscale.sim.step_cost import StepCost
from autoscale.sim.trace import TraceRequest
from deployments.config import ModelConfig
from deployments.engine_config import engine_config_for
from engine.config import EngineConfig, resolve_max_model_len

DEFAULT_VOCAB_SIZE = 32000  # prompt ids when the model's config.json is not here
DEFAULT_STARTUP_S = 120.0  # the slo policy's default_startup_s


class SimResult(NamedTuple):
    records: list[RequestRecord]
    samples: list[FleetSample]
    duration_s: float
    stats: dict  # counts of the run (steps, preemptions, ...), replica_seconds, scale events
    scale_events: list[ScaleEvent]


def model_json(model: ModelConfig) -> dict:
    """The model's config.json when its folder is here, else {}."""
    if model.path is None:
        return {}
    path = Path(model.path) / "config.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def sim_engine_config(model: ModelConfig, model_max_len: int | None = None) -> EngineConfig:
    """The EngineConfig a replica of model runs (module doc), max_model_len resolved."""
    max_len = resolve_max_model_len(model.engine.max_model_len, model_max_len)
    engine = model.engine.model_copy(update={"max_model_len": max_len})
    # A placeholder path: engine_config_for only names the folder, the simulator loads nothing.
    path = model.path or Path(model.name)
    config = engine_config_for(model.model_copy(update={"engine": engine, "path": path}), "cpu")
    return config.replace(speculative=None) if config.speculative is not None else config


def make_autoscaler(model: ModelConfig) -> tuple[SimAutoscaler | None, int]:
    """The model's autoscaler (None: a fixed count) and its replicas at start."""
    scaling = model.serve.autoscaling
    if scaling is None:
        return None, model.serve.num_replicas or 1
    initial = scaling.initial_replicas
    initial = scaling.min_replicas if initial is None else initial
    if scaling.policy == "ongoing_requests":
        delay = ServeDelay(
            SERVE_UPSCALE_DELAY_S if scaling.upscale_delay_s is None else scaling.upscale_delay_s,
            SERVE_DOWNSCALE_DELAY_S
            if scaling.downscale_delay_s is None
            else scaling.downscale_delay_s,
        )
        autoscaler = OngoingRequestsSimAutoscaler(
            scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests, delay
        )
        return autoscaler, initial
    config = scaling.slo_policy_config(model.serve.slo, model.engine)
    delay = ServeDelay(scaling.upscale_delay_s or 0.0, 0.0)  # as to_serve sets them
    return SloSimAutoscaler(config, delay), initial


def simulate(
    model: ModelConfig,
    trace: Sequence[TraceRequest],
    cost: StepCost,
    *,
    router: str | None = None,
    seed: int = 0,
    startup_s: float | None = None,
    kv_cache_tokens: int | None = None,
    vocab_size: int | None = None,
    publish_delay_s: float = 0.0,
    autoscaling_period_s: float = 1.0,
    sample_period_s: float = 1.0,
    collapse: bool = True,
    request_overhead_s: float = 0.0,
) -> SimResult:
    """Run the trace through a simulated fleet of `model` (module doc). startup_s: a new
    replica's load + warm-up (default: the slo policy's default_startup_s, 120 s);
    kv_cache_tokens and vocab_size override what the config and model say.
    request_overhead_s: what serving adds to each request outside the engine (HTTP proxy,
    ingress, tokenization, routing, the way back to the client): a constant shift of every
    request's path, so it adds to its first-token and finish times as a client sees them
    and changes nothing else (measure it: `serving_overhead_s`)."""
    if not request_overhead_s >= 0:
        raise ValueError(f"request_overhead_s must be >= 0 seconds, got {request_overhead_s}")
    info = model_json(model)
    engine = sim_engine_config(model, info.get("max_position_embeddings"))
    router = router or model.serve.request_router
    if router not in REQUEST_ROUTERS:
        raise ValueError(f"router must be one of {', '.join(REQUEST_ROUTERS)}, got {router!r}")
    tokens = (
        kv_cache_tokens
        or engine.kv_cache_tokens
        or getattr(cost, "kv_cache_tokens", None)
        or engine.max_num_seqs * engine.max_model_len
    )
    autoscaler, initial = make_autoscaler(model)
    if startup_s is None:
        scaling = model.serve.autoscaling
        startup_s = (scaling.default_startup_s if scaling else None) or DEFAULT_STARTUP_S
    config = FleetConfig(
        engine=engine,
        num_kv_blocks=kv_cache_blocks(engine, tokens),
        vocab_size=vocab_size or info.get("vocab_size") or DEFAULT_VOCAB_SIZE,
        initial_replicas=initial,
        startup_s=startup_s,
        max_ongoing_requests=model.serve.max_ongoing_requests,
        max_queued_requests=model.serve.max_queued_requests,
        publish_delay_s=publish_delay_s,
        autoscaling_period_s=autoscaling_period_s,
        sample_period_s=sample_period_s,
        collapse=collapse,
        max_queue_wait_s=model.serve.max_queue_wait_s,
        max_replicas=model.serve.max_replicas,
        cold_start_timeout_s=model.serve.cold_start_timeout_s,
        drain_timeout_s=model.serve.drain_timeout_s,
    )
    sim_router = make_router(
        router,
        block_size=engine.block_size,
        max_num_seqs=engine.max_num_seqs,
        rng=random.Random(seed),
    )
    result = Fleet(config, cost, sim_router, autoscaler).run(trace)
    stats = {
        **result.stats,
        "router": router,
        "replica_seconds": result.replica_seconds,
        "num_scale_events": len(result.scale_events),
        "num_kv_blocks": config.num_kv_blocks,
        "max_model_len": engine.max_model_len,
    }
    records = result.records
    if request_overhead_s:
        records = [_shifted(r, request_overhead_s) for r in records]
        stats["request_overhead_s"] = request_overhead_s
    return SimResult(records, result.samples, result.duration_s, stats, result.scale_events)


def _shifted(record: RequestRecord, seconds: float) -> RequestRecord:
    if record.first_token_s is None:
        return record
    finish = None if record.finish_s is None else record.finish_s + seconds
    return record._replace(first_token_s=record.first_token_s + seconds, finish_s=finish)


def serving_overhead_s(real: Sequence[RequestRecord], sim: Sequence[RequestRecord]) -> float:
    """What serving adds per request outside the engine: the median of (real - simulated)
    time to first token over the requests both completed (paired by trace index; 0 at
    least). Measure it on requests that meet an idle fleet, so queueing is not in it."""
    simulated = {r.index: r.ttft_s for r in sim if r.ttft_s is not None}
    gaps = [
        r.ttft_s - simulated[r.index] for r in real if r.ttft_s is not None and r.index in simulated
    ]
    if not gaps:
        raise ValueError("no request completed on both sides: nothing to measure the overhead on")
    return max(0.0, float(statistics.median(gaps)))
