"""The option sub-models of the serving config (see deployments.config): HTTP, engine,
buckets, speculative decoding, autoscaling and Serve options, and the helpers they share
with it. Engine options take their allowed values and defaults from the engine's own config
classes (EngineConfig, BucketConfig, SpeculativeConfig), so the two cannot drift; every
EngineConfig and SpeculativeConfig field a user may set has a key here (the test
tests/deployments/test_engine_config.py walks them). Importing this module imports neither
Ray nor torch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from autoscale.router_choice import (
    DEFAULT_REQUEST_ROUTER,
    DEFAULT_ROUTING_STATS_PERIOD_S,
    KV_AWARE,
    REQUEST_ROUTERS,
)
from autoscale.slo_config import SloPolicyConfig
from deployments.protocol.errors import describe_validation_errors
from engine import (
    BLOCK_SIZE_CHOICES,
    BUCKET_DIMS,
    BUCKET_STRATEGIES,
    MAX_SPECULATIVE_TOKENS,
    MODEL_NAMES,
    SPECULATIVE_METHODS,
    BucketConfig,
    EngineConfig,
    SpeculativeConfig,
    is_bucket_values,
)

_CONFIG = ConfigDict(extra="forbid", frozen=True)


def _default(config_class: type, name: str) -> Any:
    """The default of field `name` of an engine config dataclass: the one home of it."""
    return {f.name: f.default for f in dataclasses.fields(config_class)}[name]


class HttpOptions(BaseModel):
    """Where the HTTP server listens."""

    model_config = _CONFIG

    host: str = Field("127.0.0.1", min_length=1, description="Address to bind; 0.0.0.0 for all.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port, 1..65535.")


class BucketRangeOptions(BaseModel):
    """One bucket dimension: from `min` to `max` (both included), spaced by the strategy."""

    model_config = _CONFIG

    min: int = Field(ge=1, description="Smallest bucket.")
    max: int = Field(ge=1, description="Largest bucket (>= min).")
    step: int | None = Field(
        None, ge=1, description="Spacing for the 'linear' strategy (required there)."
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> BucketRangeOptions:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self


# A bucket dimension: a range, an explicit list of sizes, or None for the engine's default.
BucketDim = BucketRangeOptions | tuple[int, ...] | None


class BucketOptions(BaseModel):
    """The static shapes steps are padded to (engine.buckets). Each dimension is a range
    {min, max, step} expanded by the strategy, or an explicit strictly increasing list;
    unset dimensions are derived from the engine's limits."""

    model_config = _CONFIG

    strategy: Literal[BUCKET_STRATEGIES] = Field(
        _default(BucketConfig, "strategy"),
        description="'exponential': min, powers of two, max; 'linear': min, min+step, ..., max.",
    )
    prefill_batch_sizes: BucketDim = Field(
        None, description="Rows of a prefill step; default 1..max_num_seqs (within budget)."
    )
    prefill_lengths: BucketDim = Field(
        None, description="Padded tokens per prefill row; default block_size..the budget."
    )
    decode_batch_sizes: BucketDim = Field(
        None, description="Rows of a decode step; default 1..max_num_seqs."
    )
    decode_num_blocks: BucketDim = Field(
        None, description="Padded context blocks per decode row; default 1..the context."
    )

    @field_validator(*BUCKET_DIMS, mode="before")
    @classmethod
    def _range_or_list(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name
        if value is None or isinstance(value, BucketRangeOptions):
            return value
        if isinstance(value, dict):
            try:
                return BucketRangeOptions.model_validate(value)
            except ValidationError as exc:
                problems = describe_validation_errors(exc, BucketRangeOptions)
                raise ValueError("; ".join(problems)) from None
        if is_bucket_values(value):
            return tuple(value)
        raise ValueError(
            f"{name} must be a range {{min, max, step}} or a non-empty, strictly increasing "
            f"list of integers >= 1, got {value!r}"
        )

    @model_validator(mode="after")
    def _linear_needs_step(self) -> BucketOptions:
        if self.strategy == "linear":
            for name in BUCKET_DIMS:
                dim = getattr(self, name)
                if isinstance(dim, BucketRangeOptions) and dim.step is None:
                    raise ValueError(f"{name}.step is required with strategy 'linear'")
        return self


class EngineOptions(BaseModel):
    """The engine of each replica: batching, KV cache and shapes."""

    model_config = _CONFIG

    max_num_seqs: int = Field(
        _default(EngineConfig, "max_num_seqs"),
        ge=1,
        le=1024,
        description="Most sequences per batch, 1..1024.",
    )
    max_model_len: int | None = Field(
        None,
        ge=2,
        description="Context length (prompt + output); default: the model's, capped by the engine.",
    )
    block_size: Literal[BLOCK_SIZE_CHOICES] = Field(
        _default(EngineConfig, "block_size"), description="Tokens per KV-cache block."
    )
    kv_cache_tokens: int | None = Field(
        None,
        ge=1,
        description="KV-cache capacity in tokens (>= block_size); default: sized "
        "from free device memory.",
    )
    kv_cache_memory_fraction: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Share of free device memory for the KV cache when "
        "kv_cache_tokens is unset, in (0, 1]; default: the device's.",
    )
    max_num_batched_tokens: int = Field(
        _default(EngineConfig, "max_num_batched_tokens"),
        ge=1,
        description="Token budget of one step (>= block_size); longer prompts are "
        "prefilled in chunks.",
    )
    enable_prefix_caching: bool = Field(
        _default(EngineConfig, "enable_prefix_caching"),
        description="Reuse KV blocks of shared prefixes.",
    )
    buckets: BucketOptions = Field(
        default_factory=BucketOptions, description="Static shapes for graph capture."
    )
    strict_shapes: bool = Field(
        _default(EngineConfig, "strict_shapes"),
        description="Fail a step whose shape was not warmed up instead of compiling it.",
    )
    warmup: bool = Field(
        _default(EngineConfig, "warmup"),
        description="Run every bucket once (capturing graphs) before the replica is ready; "
        "false starts faster and compiles shapes on first use.",
    )
    enable_graphs: bool = Field(
        _default(EngineConfig, "enable_graphs"),
        description="Capture and replay graphs on devices that have them (hpu, cuda).",
    )
    seed: int = Field(
        _default(EngineConfig, "seed"),
        ge=0,
        description="Seed of the engine's sampling for requests that set none.",
    )

    @model_validator(mode="after")
    def _check_budgets(self) -> EngineOptions:
        if self.kv_cache_tokens is not None and self.kv_cache_tokens < self.block_size:
            raise ValueError(
                f"kv_cache_tokens ({self.kv_cache_tokens}) must be >= block_size "
                f"({self.block_size})"
            )
        if self.max_num_batched_tokens < self.block_size:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                f"block_size ({self.block_size})"
            )
        return self


class SpeculativeOptions(BaseModel):
    """Speculative decoding: proposals verified by the target model in one step."""

    model_config = _CONFIG

    method: Literal[SPECULATIVE_METHODS] = Field(
        description="'draft': a small model proposes; 'ngram': prompt lookup proposes; "
        "'hybrid': prompt lookup where it fills the budget, the draft model elsewhere."
    )
    num_speculative_tokens: int = Field(
        _default(SpeculativeConfig, "num_speculative_tokens"),
        ge=1,
        le=MAX_SPECULATIVE_TOKENS,
        description=f"Most tokens proposed per sequence and step, 1..{MAX_SPECULATIVE_TOKENS}.",
    )
    draft_model: Path | None = Field(
        None,
        description=(
            "Draft model (methods draft and hybrid): a folder, or the name of a model "
            "gaudi-serve provides (pycoder-draft, smollm2-135m-instruct-draft); default: "
            "the bundled pycoder-draft."
        ),
    )
    prompt_lookup_min: int = Field(
        _default(SpeculativeConfig, "prompt_lookup_min"),
        ge=1,
        description="Shortest n-gram prompt lookup matches (methods ngram and hybrid).",
    )
    prompt_lookup_max: int = Field(
        _default(SpeculativeConfig, "prompt_lookup_max"),
        ge=1,
        description="Longest n-gram prompt lookup tries first (>= prompt_lookup_min).",
    )
    adaptive: bool = Field(
        _default(SpeculativeConfig, "adaptive"),
        description="Lower the number of proposals while few are accepted.",
    )

    @field_validator("draft_model")
    @classmethod
    def _check_draft_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and value.name == str(value) and str(value) in MODEL_NAMES:
            return value  # a provided model: found where it runs (resolved_draft_model)
        return _model_dir(value, info)

    @model_validator(mode="after")
    def _check_with_the_engine(self) -> SpeculativeOptions:
        # The engine's own rules (ranges, which methods take a draft model), so that a
        # setting the engine cannot honour fails here, naming the field.
        self.to_engine()
        return self

    def to_engine(self) -> SpeculativeConfig:
        """The engine's SpeculativeConfig: every option maps to the field of its name.
        A ValueError names the field (without the engine's `speculative.` prefix)."""
        try:
            return SpeculativeConfig(
                **{
                    name: str(value) if isinstance(value, Path) else value
                    for name, value in self.model_dump().items()
                }
            )
        except ValueError as exc:
            raise ValueError(str(exc).removeprefix("speculative.")) from None

    def resolved_draft_model(self) -> Path | None:
        """The draft model folder (None for ngram, which takes none); a provided model's
        name is looked up in the models folder (FileNotFoundError when not prepared).
        Imports the engine's assets lazily."""
        if self.draft_model is not None and str(self.draft_model) not in MODEL_NAMES:
            return self.draft_model
        if self.method == "ngram":
            return None
        from cluster.env import models_dir
        from engine import default_draft_model_path, default_model_path

        if self.draft_model is not None:
            return Path(default_model_path(str(self.draft_model), models_dir()))
        return Path(default_draft_model_path())


AUTOSCALING_POLICIES = ("slo", "ongoing_requests")
# A replica being removed lets its requests finish for this long (Serve's default is 20 s,
# short for a long answer from a big model).
DEFAULT_DRAIN_TIMEOUT_S = 60.0
# A request waits this long for a model with no running replica (Ray measured 126-360 s
# from zero to first token for Llama-3-70B TP4: issue [autoscale]).
DEFAULT_COLD_START_TIMEOUT_S = 600.0
# Seconds between a replica's autoscaling metric reports under the slo policy (Serve's
# default, 10 s, would leave the policy deciding on stale counters).
SLO_METRICS_INTERVAL_S = 1.0
# The slo policy's knobs a user may set here (the rest keep SloPolicyConfig's defaults).
SLO_POLICY_KNOBS = (
    "target_utilization",
    "scale_down_utilization",
    "demand_window_s",
    "forecast_window_s",
    "rate_window_s",
    "default_startup_s",
    "settle_s",
)


def _slo_default(name: str) -> Any:
    return _default(SloPolicyConfig, name)


class SloOptions(BaseModel):
    """The latency the model's users are promised, at p95: what the slo autoscaling
    policy sizes replicas for."""

    model_config = _CONFIG

    ttft_s: float = Field(
        _slo_default("ttft_s"), gt=0, description="Time to first token, seconds, at p95."
    )
    tpot_s: float = Field(
        _slo_default("tpot_s"),
        gt=0,
        description="Time per output token after the first, seconds, at p95.",
    )


class AutoscalingOptions(BaseModel):
    """Replica autoscaling: by tokens against the SLO (policy slo, the default) or by
    ongoing requests per replica (Ray Serve's default policy)."""

    model_config = _CONFIG

    policy: Literal[AUTOSCALING_POLICIES] = Field(
        "slo",
        description="slo: replicas from token demand vs capacity at serve.slo, one start-up "
        "ahead (autoscale/slo_policy.py); ongoing_requests: Ray Serve's default, "
        "ongoing requests / target_ongoing_requests.",
    )
    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 allows scale to zero.")
    max_replicas: int = Field(ge=1, description="Most replicas (>= min_replicas).")
    initial_replicas: int | None = Field(
        None, ge=0, description="Replicas at start, in [min, max]; default min_replicas."
    )
    target_ongoing_requests: float = Field(
        16.0,
        gt=0,
        description="Ongoing requests per replica the ongoing_requests policy aims for "
        "(the slo policy does not use it).",
    )
    upscale_delay_s: float | None = Field(
        None,
        ge=0,
        description="Seconds a scale-up must be wanted before it happens; default: 0 for "
        "slo (its forecast already looks one start-up ahead), Serve's for ongoing_requests.",
    )
    downscale_delay_s: float | None = Field(
        None,
        ge=0,
        description="Seconds every signal must agree before each removal (slo; default "
        f"{_slo_default('downscale_delay_s'):g}), or of low load (ongoing_requests; default "
        "Serve's).",
    )
    target_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="slo: scale up when the forecast load needs more than this share of "
        f"the replicas' capacity at the SLO, in (0, 1]; default "
        f"{_slo_default('target_utilization'):g}.",
    )
    scale_down_utilization: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="slo: remove a replica only if the recent peak fits the others at this "
        f"share, below target_utilization; default {_slo_default('scale_down_utilization'):g}.",
    )
    demand_window_s: float | None = Field(
        None,
        gt=0,
        description="slo: seconds of demand whose peak must fit after a removal; default "
        f"{_slo_default('demand_window_s'):g}.",
    )
    forecast_window_s: float | None = Field(
        None,
        gt=0,
        description="slo: seconds the demand trend is fitted over; default "
        f"{_slo_default('forecast_window_s'):g}.",
    )
    rate_window_s: float | None = Field(
        None,
        gt=0,
        description="slo: seconds of each replica's counters its demand rates average over; "
        f"default {_slo_default('rate_window_s'):g}.",
    )
    default_startup_s: float | None = Field(
        None,
        gt=0,
        description="slo: a replica's start-up (load + warm-up) until replicas report "
        f"their own; default {_slo_default('default_startup_s'):g}.",
    )
    settle_s: float | None = Field(
        None,
        ge=0,
        description="slo: seconds SLO, KV and queue breaches are ignored after replicas "
        f"are added; default {_slo_default('settle_s'):g}.",
    )

    @model_validator(mode="after")
    def _check_order(self) -> AutoscalingOptions:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})"
            )
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(
                f"initial_replicas ({initial}) must be within min_replicas "
                f"({self.min_replicas}) and max_replicas ({self.max_replicas})"
            )
        if self.policy == "ongoing_requests":
            knobs = [name for name in SLO_POLICY_KNOBS if getattr(self, name) is not None]
            if knobs:
                raise ValueError(
                    f"{', '.join(knobs)}: only for policy 'slo' (policy is 'ongoing_requests')"
                )
        else:
            self.slo_policy_config(SloOptions(), EngineOptions())  # the policy's own rules
        return self

    def slo_policy_config(self, slo: SloOptions, engine: EngineOptions) -> SloPolicyConfig:
        """The slo policy's config for a model with these SLO targets and engine limits."""
        knobs = {name: getattr(self, name) for name in SLO_POLICY_KNOBS}
        if self.downscale_delay_s is not None:
            knobs["downscale_delay_s"] = self.downscale_delay_s
        return SloPolicyConfig(
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            ttft_s=slo.ttft_s,
            tpot_s=slo.tpot_s,
            max_num_seqs=engine.max_num_seqs,
            prefill_chunk_tokens=engine.max_num_batched_tokens,
            **{name: value for name, value in knobs.items() if value is not None},
        )

    def to_serve(
        self, slo: SloOptions | None = None, engine: EngineOptions | None = None
    ) -> dict[str, Any]:
        """Serve's `autoscaling_config` dict. ongoing_requests: the options as they are
        (unset ones keep Serve's defaults). slo: Serve's policy set to
        SloAutoscalingPolicy with the policy's config as its kwargs, Serve's downscale
        delay 0 (the policy has its own) and a short metrics interval."""
        scaling = self.model_dump(
            exclude_none=True, include={"min_replicas", "max_replicas", "initial_replicas"}
        )
        scaling["target_ongoing_requests"] = self.target_ongoing_requests
        if self.policy == "ongoing_requests":
            for name in ("upscale_delay_s", "downscale_delay_s"):
                if getattr(self, name) is not None:
                    scaling[name] = getattr(self, name)
            return scaling
        from autoscale.serve_autoscaling import POLICY_FUNCTION, policy_kwargs

        config = self.slo_policy_config(slo or SloOptions(), engine or EngineOptions())
        return scaling | {
            "upscale_delay_s": self.upscale_delay_s or 0.0,
            "downscale_delay_s": 0.0,
            "metrics_interval_s": SLO_METRICS_INTERVAL_S,
            "policy": {"policy_function": POLICY_FUNCTION, "policy_kwargs": policy_kwargs(config)},
        }


class ServeOptions(BaseModel):
    """How Ray Serve runs the model's replicas."""

    model_config = _CONFIG

    num_replicas: int | None = Field(
        None, ge=1, description="Fixed replica count (default 1); excludes autoscaling."
    )
    autoscaling: AutoscalingOptions | None = Field(
        None, description="Autoscale the replica count; excludes num_replicas."
    )
    slo: SloOptions = Field(
        default_factory=SloOptions,
        description="Latency targets at p95 (ttft_s, tpot_s): what the slo autoscaling "
        "policy sizes replicas for.",
    )
    max_ongoing_requests: int = Field(64, ge=1, description="Requests in flight per replica.")
    max_queued_requests: int | None = Field(
        None, ge=1, description="Requests queued per caller before rejecting; null: no limit."
    )
    health_check_period_s: float = Field(10.0, gt=0, description="Seconds between checks.")
    health_check_timeout_s: float = Field(30.0, gt=0, description="Seconds before a check fails.")
    stream_interval_ms: float | None = Field(
        None,
        ge=0,
        description="Least milliseconds between two streamed chunks of one answer: tokens "
        "made in between go out together (fewer, bigger chunks: more tokens/s under load, "
        "burstier streams; Ray Serve LLM batches at 50). null: GAUDI_SERVE_STREAM_INTERVAL_MS "
        "if set, else 0 (a chunk per engine step).",
    )
    request_router: Literal[REQUEST_ROUTERS] = Field(
        DEFAULT_REQUEST_ROUTER,
        description="How a request picks a replica: kv_aware (least predicted time to "
        "first token from each replica's prefix cache, queued work and step times), "
        "power_of_two (Ray Serve's default, cache-blind), prefix_affinity (Ray Serve's "
        'PrefixCacheAffinityRouter) or round_robin. README "Routing" says when to pick which.',
    )
    routing_stats_period_s: float = Field(
        DEFAULT_ROUTING_STATS_PERIOD_S,
        gt=0,
        description="Seconds between Serve's polls of each replica's routing stats (its "
        "prefix-cache snapshot, for routers that have not heard from it lately).",
    )
    max_queue_wait_s: float | None = Field(
        None,
        gt=0,
        description="Admission control (request_router kv_aware): refuse a request with 429 "
        "and Retry-After when the model runs its most replicas and every one's predicted "
        "wait before the request's prefill is over this many seconds. null: never refuse.",
    )
    drain_timeout_s: float = Field(
        DEFAULT_DRAIN_TIMEOUT_S,
        gt=0,
        description="Seconds a replica being removed (scale-down, redeploy, shutdown) takes "
        "no new requests and lets its in-flight ones finish before it is stopped "
        "(Serve's graceful_shutdown_timeout_s).",
    )
    cold_start_timeout_s: float = Field(
        DEFAULT_COLD_START_TIMEOUT_S,
        gt=0,
        description="Seconds a request waits while the model has no running replica "
        "(scaling from zero, or every replica restarting) before a 503 with Retry-After.",
    )
    debug_profile: bool = Field(
        False,
        description="Serve GET|POST /debug/profile?model=NAME&steps=N for this model: a "
        "replica profiles its next N engine steps on every TP rank with torch.profiler while "
        "it keeps serving (slower while the capture runs) and answers with each rank's trace "
        'path and report (README "Profiling"). false: the route answers 404.',
    )

    @model_validator(mode="after")
    def _one_replica_policy(self) -> ServeOptions:
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError(
                f"set either num_replicas ({self.num_replicas}) or autoscaling, not both"
            )
        if self.max_queue_wait_s is not None and self.request_router != KV_AWARE:
            raise ValueError(
                f"max_queue_wait_s needs request_router {KV_AWARE!r} (its predicted waits), "
                f"got request_router {self.request_router!r}"
            )
        return self

    @property
    def max_replicas(self) -> int:
        """The most replicas the model may run: autoscaling's max, or the fixed count."""
        if self.autoscaling is not None:
            return self.autoscaling.max_replicas
        return self.num_replicas or 1


def _model_dir(value: Path | None, info: ValidationInfo) -> Path | None:
    """An absolute model folder; checked to hold config.json unless check_paths is off."""
    return _local_dir(value, info, "config.json", "a Hugging Face model folder")


def _tokenizer_dir(value: Path | None, info: ValidationInfo) -> Path | None:
    """An absolute tokenizer folder; checked to exist unless check_paths is off."""
    return _local_dir(value, info, None, "a Hugging Face tokenizer folder")


def _stats_dir(value: Path | None, info: ValidationInfo) -> Path | None:
    """An absolute folder of INC FP8 statistics; checked to exist unless check_paths is off."""
    return _local_dir(value, info, None, "the folder `gaudi-serve quantize --out` wrote")


def _local_dir(
    value: Path | None, info: ValidationInfo, required_file: str | None, expected: str
) -> Path | None:
    """`value` made absolute (relative to the config file's folder); unless check_paths is
    off, checked to be a directory holding `required_file`."""
    if value is None:
        return None
    context = info.context or {}
    path = value.expanduser()
    if not path.is_absolute():
        path = (context.get("base_dir") or Path.cwd()) / path
    if not context.get("check_paths", True):
        return path
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory (expected {expected})")
    if required_file is not None and not (path / required_file).is_file():
        raise ValueError(f"{path} has no {required_file} (expected {expected})")
    return path
