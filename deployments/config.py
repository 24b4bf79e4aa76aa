"""The serving config file (YAML): which models to serve, and how.

    http: {host: 127.0.0.1, port: 8000}
    models:
      - name: pycoder                # the OpenAI "model" id
        tp_size: 2
        engine: {max_num_seqs: 32}
        serve: {autoscaling: {min_replicas: 1, max_replicas: 4}}

`load_config(path)` reads and validates a file and reports every problem at once, one per
line: ``models.0.engine.block_size: Input should be 16, 32, 64 or 128 (got 7)``. Unknown
keys are rejected at every level. Relative model paths are resolved against the config
file's folder. Importing this module imports neither Ray nor torch.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from deployments.protocol.errors import describe_validation_errors

DEFAULT_MODEL_NAME = "pycoder"
_CONFIG = ConfigDict(extra="forbid", frozen=True)
_DEVICE_RESOURCE = {"cpu": "CPU", "cuda": "GPU", "hpu": "HPU"}


class ConfigError(ValueError):
    """A config that cannot be used; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"invalid config {source}:\n{lines}")


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
_BUCKET_DIMS = ("prefill_batch_sizes", "prefill_lengths", "decode_batch_sizes", "decode_num_blocks")


class BucketOptions(BaseModel):
    """The static shapes steps are padded to (engine.buckets). Each dimension is a range
    {min, max, step} expanded by the strategy, or an explicit strictly increasing list;
    unset dimensions are derived from the engine's limits."""

    model_config = _CONFIG

    strategy: Literal["exponential", "linear"] = Field(
        "exponential",
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

    @field_validator(*_BUCKET_DIMS, mode="before")
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
        values = list(value) if isinstance(value, (list, tuple)) else []
        is_sizes = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)
        if values and is_sizes and all(a < b for a, b in itertools.pairwise(values)):
            return tuple(values)
        raise ValueError(
            f"{name} must be a range {{min, max, step}} or a non-empty, strictly increasing "
            f"list of integers >= 1, got {value!r}"
        )

    @model_validator(mode="after")
    def _linear_needs_step(self) -> BucketOptions:
        if self.strategy == "linear":
            for name in _BUCKET_DIMS:
                dim = getattr(self, name)
                if isinstance(dim, BucketRangeOptions) and dim.step is None:
                    raise ValueError(f"{name}.step is required with strategy 'linear'")
        return self


class EngineOptions(BaseModel):
    """The engine of each replica: batching, KV cache and shapes."""

    model_config = _CONFIG

    max_num_seqs: int = Field(32, ge=1, le=1024, description="Most sequences per batch, 1..1024.")
    max_model_len: int | None = Field(
        None,
        ge=2,
        description="Context length (prompt + output); default: the model's, capped by the engine.",
    )
    block_size: Literal[16, 32, 64, 128] = Field(16, description="Tokens per KV-cache block.")
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
        2048,
        ge=1,
        description="Token budget of one step (>= block_size); longer prompts are "
        "prefilled in chunks.",
    )
    enable_prefix_caching: bool = Field(True, description="Reuse KV blocks of shared prefixes.")
    buckets: BucketOptions = Field(
        default_factory=BucketOptions, description="Static shapes for graph capture."
    )
    strict_shapes: bool = Field(
        False, description="Fail a step whose shape was not warmed up instead of compiling it."
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

    method: Literal["draft", "ngram"] = Field(
        description="'draft': a small model proposes; 'ngram': prompt lookup proposes."
    )
    num_speculative_tokens: int = Field(4, ge=1, le=8, description="Tokens proposed per step.")
    draft_model: Path | None = Field(
        None, description="Draft model folder (method draft only); default: the bundled one."
    )
    adaptive: bool = Field(
        True, description="Lower the number of proposals while few are accepted."
    )

    @field_validator("draft_model")
    @classmethod
    def _check_draft_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _model_dir(value, info)

    @model_validator(mode="after")
    def _draft_model_needs_draft(self) -> SpeculativeOptions:
        if self.method != "draft" and self.draft_model is not None:
            raise ValueError(f"draft_model is only used with method 'draft', not {self.method!r}")
        return self

    def resolved_draft_model(self) -> Path | None:
        """The draft model folder (None for ngram). Imports the engine's assets lazily."""
        if self.method != "draft":
            return None
        if self.draft_model is not None:
            return self.draft_model
        from engine.assets import default_draft_model_path

        return Path(default_draft_model_path())


class AutoscalingOptions(BaseModel):
    """Replica autoscaling by ongoing requests per replica."""

    model_config = _CONFIG

    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 allows scale to zero.")
    max_replicas: int = Field(ge=1, description="Most replicas (>= min_replicas).")
    initial_replicas: int | None = Field(
        None, ge=0, description="Replicas at start, in [min, max]; default min_replicas."
    )
    target_ongoing_requests: float = Field(
        16.0, gt=0, description="Ongoing requests per replica the autoscaler aims for."
    )
    upscale_delay_s: float | None = Field(
        None, ge=0, description="Seconds of high load before adding replicas; Serve's default."
    )
    downscale_delay_s: float | None = Field(
        None, ge=0, description="Seconds of low load before removing replicas; Serve's default."
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
        return self

    def to_serve(self) -> dict[str, Any]:
        """Serve's `autoscaling_config` dict (unset options keep Serve's defaults)."""
        return self.model_dump(exclude_none=True)


class ServeOptions(BaseModel):
    """How Ray Serve runs the model's replicas."""

    model_config = _CONFIG

    num_replicas: int | None = Field(
        None, ge=1, description="Fixed replica count (default 1); excludes autoscaling."
    )
    autoscaling: AutoscalingOptions | None = Field(
        None, description="Autoscale the replica count; excludes num_replicas."
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

    @model_validator(mode="after")
    def _one_replica_policy(self) -> ServeOptions:
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError(
                f"set either num_replicas ({self.num_replicas}) or autoscaling, not both"
            )
        return self


class ModelConfig(BaseModel):
    """One served model: one Serve deployment."""

    model_config = _CONFIG

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._/-]+$",
        description="The model id clients send (OpenAI 'model'); letters, digits, . _ / -",
    )
    path: Path | None = Field(
        None, description="Hugging Face model folder (with config.json); default: bundled."
    )
    device: Literal["auto", "cpu", "cuda", "hpu"] = Field(
        "auto", description="Accelerator; 'auto' picks hpu, else cuda, else cpu."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight and activation dtype; 'auto' lets the engine pick."
    )
    tp_size: Literal[1, 2, 4, 8] = Field(
        1, description="Tensor-parallel degree: cards per replica (1, 2, 4 or 8)."
    )
    engine: EngineOptions = Field(default_factory=EngineOptions, description="Engine options.")
    speculative: SpeculativeOptions | None = Field(
        None, description="Speculative decoding; null: off."
    )
    serve: ServeOptions = Field(default_factory=ServeOptions, description="Serve options.")

    @field_validator("path")
    @classmethod
    def _check_model_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _model_dir(value, info)

    def resolved_path(self) -> Path:
        """The model folder; the bundled default model when `path` is unset."""
        if self.path is not None:
            return self.path
        from engine.assets import default_model_path

        return Path(default_model_path())

    def serve_deployment_options(self, device: str | None = None) -> dict[str, Any]:
        """Keyword arguments for `serve.deployment(...).options(**kwargs)`.

        `device` is the device the cluster resolved ("cpu", "cuda" or "hpu"); it is needed
        only when this model's device is "auto" (an explicit device wins). With tp_size 1
        the replica runs the engine itself and asks for the card in `ray_actor_options`.
        With tp_size N > 1 each replica gets a placement group of N one-card bundles on one
        node (STRICT_PACK), one per TP rank actor. Serve places the replica actor in bundle 0
        and requires its resources to fit there; it asks for num_cpus 0 so rank 0 still gets
        the whole bundle (Ray rejects a zero-only bundle, so it cannot have its own).
        """
        resource = _DEVICE_RESOURCE[self._resolve_device(device)]
        options: dict[str, Any] = {
            "max_ongoing_requests": self.serve.max_ongoing_requests,
            # Serve's "no limit" is -1; ours is None.
            "max_queued_requests": self.serve.max_queued_requests or -1,
            "health_check_period_s": self.serve.health_check_period_s,
            "health_check_timeout_s": self.serve.health_check_timeout_s,
        }
        if self.serve.autoscaling is not None:
            options["autoscaling_config"] = self.serve.autoscaling.to_serve()
        else:
            options["num_replicas"] = self.serve.num_replicas or 1
        if self.tp_size == 1:
            options["ray_actor_options"] = _replica_resources(resource)
        else:
            options["ray_actor_options"] = {"num_cpus": 0}
            options["placement_group_bundles"] = [{resource: 1} for _ in range(self.tp_size)]
            options["placement_group_strategy"] = "STRICT_PACK"
        return options

    def _resolve_device(self, device: str | None) -> str:
        if self.device != "auto":
            return self.device
        if device not in _DEVICE_RESOURCE:
            raise ValueError(
                f"model {self.name!r} has device 'auto': pass the resolved device, one of "
                f"{', '.join(_DEVICE_RESOURCE)} (got {device!r})"
            )
        return device


class ServeConfig(BaseModel):
    """The whole config file."""

    model_config = _CONFIG

    http: HttpOptions = Field(default_factory=HttpOptions, description="HTTP server options.")
    models: tuple[ModelConfig, ...] = Field(
        description="The models to serve (at least one, unique names)."
    )

    @field_validator("models")
    @classmethod
    def _unique_names(cls, value: tuple[ModelConfig, ...]) -> tuple[ModelConfig, ...]:
        if not value:
            raise ValueError("at least one model is required")
        names = [model.name for model in value]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"model names must be unique; repeated: {', '.join(repeated)}")
        return value

    @classmethod
    def default(cls) -> ServeConfig:
        """One model, the bundled default, with every option at its default."""
        return cls(models=(ModelConfig(name=DEFAULT_MODEL_NAME),))

    def model(self, name: str) -> ModelConfig:
        """The model called `name`; KeyError naming the served ones otherwise."""
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(f"no model {name!r}; served: {', '.join(m.name for m in self.models)}")


def load_config(path: str | Path, *, check_paths: bool = True) -> ServeConfig:
    """Read and validate a YAML config file; raise ConfigError listing every problem.

    Relative model paths are taken from the file's folder. `check_paths=False` skips
    checking that model folders exist here (for configs meant for another machine).
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as stream:
            data = yaml.load(stream, Loader=_UniqueKeyLoader)  # a SafeLoader
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from exc
    return parse_config(data, base_dir=path.parent, check_paths=check_paths, source=str(path))


def parse_config(
    data: Any,
    *,
    base_dir: str | Path | None = None,
    check_paths: bool = True,
    source: str = "<config>",
) -> ServeConfig:
    """Validate already-parsed config data (a dict); raise ConfigError listing every problem."""
    keys = ", ".join(ServeConfig.model_fields)
    if data is None:
        raise ConfigError(source, [f"the config is empty; expected a mapping with keys: {keys}"])
    if not isinstance(data, dict):
        kind = type(data).__name__
        problem = f"the top level must be a mapping with keys: {keys}; got a {kind}"
        raise ConfigError(source, [problem])
    context = {"base_dir": Path(base_dir) if base_dir else None, "check_paths": check_paths}
    try:
        return ServeConfig.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(source, describe_validation_errors(exc, ServeConfig)) from None


def _model_dir(value: Path | None, info: ValidationInfo) -> Path | None:
    """An absolute model folder; checked to hold config.json unless check_paths is off."""
    if value is None:
        return None
    context = info.context or {}
    path = value.expanduser()
    if not path.is_absolute():
        path = (context.get("base_dir") or Path.cwd()) / path
    if not context.get("check_paths", True):
        return path
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory (expected a Hugging Face model folder)")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json (expected a Hugging Face model folder)")
    return path


def _replica_resources(resource: str) -> dict[str, Any]:
    """ray_actor_options for a replica that runs its engine on one card itself."""
    if resource == "CPU":
        return {"num_cpus": 1}
    if resource == "GPU":
        return {"num_cpus": 1, "num_gpus": 1}
    return {"num_cpus": 1, "resources": {resource: 1}}


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that rejects a key repeated in one mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeLoader reports unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
