"""The serving config file (YAML): which models to serve, and how.

    http: {host: 127.0.0.1, port: 8000}
    models:
      - name: pycoder                # the OpenAI "model" id
        tp_size: 2
        engine: {max_num_seqs: 32}
        serve:
          slo: {ttft_s: 1.0, tpot_s: 0.05}   # targets at p95
          autoscaling: {min_replicas: 1, max_replicas: 4}   # policy: slo (default)

`load_config(path)` reads and validates a file and reports every problem at once, one per
line: ``models.0.engine.block_size: Input should be 8, 16, 32, 64 or 128 (got 7)``. Unknown
keys are rejected at every level. Relative model paths are resolved against the config
file's folder. Allowed values and defaults come from the engine's facade (its config,
speculative, bucket and device choices) and Ray resource names from cluster.resources.
A model without a path is one gaudi-serve provides, by name: ``smollm2-135m-instruct`` (the
default chat model, prepared by ``gaudi-serve models prepare`` into GAUDI_SERVE_MODELS_DIR),
``pycoder`` or ``pycoder-draft`` (bundled); any other name without a path is the bundled
``pycoder``. Importing this module imports neither Ray nor torch.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from autoscale.router_choice import request_router_config
from cluster.resources import DEVICE_RESOURCES, ray_resource
from deployments.config_options import (
    _CONFIG,
    AutoscalingOptions,
    BucketDim,
    BucketOptions,
    BucketRangeOptions,
    EngineOptions,
    HttpOptions,
    ServeOptions,
    SloOptions,
    SpeculativeOptions,
    _model_dir,
    _stats_dir,
    _tokenizer_dir,
)
from deployments.protocol.errors import describe_validation_errors
from engine import (
    DEFAULT_MODEL_NAME,
    DEVICE_CHOICES,
    DTYPE_CHOICES,
    FALLBACK_MODEL_NAME,
    KV_CACHE_DTYPE_CHOICES,
    MODEL_NAMES,
    QUANTIZATION_CHOICES,
    QUANTIZATION_DEVICES,
    check_quantization_device,
)

__all__ = [
    "APP_NAME",
    "BUNDLED_MODEL_NAME",
    "DEFAULT_MODEL_NAME",
    "PROVIDED_MODEL_NAMES",
    "AutoscalingOptions",
    "BucketDim",
    "BucketOptions",
    "BucketRangeOptions",
    "ConfigError",
    "EngineOptions",
    "HttpOptions",
    "ModelConfig",
    "ServeConfig",
    "ServeOptions",
    "SloOptions",
    "SpeculativeOptions",
    "load_config",
    "parse_config",
]

# The Serve application's name under `gaudi-serve up` and in the Kubernetes manifests.
APP_NAME = "gaudi-serve"

# The models gaudi-serve provides by name (a path-less model is one): the engine's names.
BUNDLED_MODEL_NAME = FALLBACK_MODEL_NAME
PROVIDED_MODEL_NAMES = MODEL_NAMES
# engine.max_num_batched_tokens of the default config's SmolLM2 (see ServeConfig.default).
DEFAULT_MODEL_TOKEN_BUDGET = 512


class ConfigError(ValueError):
    """A config that cannot be used; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"invalid config {source}:\n{lines}")


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
        None,
        description="Hugging Face model folder (with config.json); default: the model gaudi-serve "
        "provides by this name (smollm2-135m-instruct, pycoder), else the bundled pycoder.",
    )
    tokenizer: Path | None = Field(
        None, description="Tokenizer folder; default: the model's own (path)."
    )
    device: Literal[DEVICE_CHOICES] = Field(
        "auto", description="Accelerator; 'auto' picks hpu, else cuda, else cpu."
    )
    dtype: Literal[DTYPE_CHOICES] = Field(
        "auto", description="Weight and activation dtype; 'auto' lets the engine pick."
    )
    tp_size: Literal[1, 2, 4, 8] = Field(
        1, description="Tensor-parallel degree: cards per replica (1, 2, 4 or 8)."
    )
    quantization: Literal[QUANTIZATION_CHOICES] = Field(
        None,
        description="Weight quantization; null: the weights run in dtype. Devices: "
        + "; ".join(f"{q}: {', '.join(d)}" for q, d in QUANTIZATION_DEVICES.items())
        + " (fp8 on hpu needs quantization_stats).",
    )
    quantization_stats: Path | None = Field(
        None,
        description="For fp8 on hpu: the folder of Intel Neural Compressor statistics that "
        "`gaudi-serve quantize --model PATH --out DIR` wrote (DIR).",
    )
    kv_cache_dtype: Literal[KV_CACHE_DTYPE_CHOICES] = Field(
        "auto", description="KV-cache storage: auto (the dtype) or fp8 (with scales)."
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

    @field_validator("tokenizer")
    @classmethod
    def _check_tokenizer_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _tokenizer_dir(value, info)

    @field_validator("quantization_stats")
    @classmethod
    def _check_stats_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _stats_dir(value, info)

    @model_validator(mode="after")
    def _check_quantization_device(self) -> ModelConfig:
        """An explicit device must run the quantization ('auto' is checked once resolved)."""
        if self.device != "auto":
            check_quantization_device(self.quantization, self.device)
        return self

    def resolved_path(self) -> Path:
        """The model folder: `path`, else the model gaudi-serve provides by this name
        (FileNotFoundError saying how to prepare smollm2-135m-instruct when it is not), else
        the bundled pycoder."""
        if self.path is not None:
            return self.path
        from cluster.env import models_dir
        from engine import default_model_path

        name = self.name if self.name in PROVIDED_MODEL_NAMES else BUNDLED_MODEL_NAME
        return Path(default_model_path(name, models_dir()))

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
        resource = ray_resource(self.resolve_device(device))
        options: dict[str, Any] = {
            "max_ongoing_requests": self.serve.max_ongoing_requests,
            # Serve's "no limit" is -1; ours is None.
            "max_queued_requests": self.serve.max_queued_requests or -1,
            "health_check_period_s": self.serve.health_check_period_s,
            "health_check_timeout_s": self.serve.health_check_timeout_s,
            "request_router_config": request_router_config(
                self.serve.request_router,
                self.engine.block_size,
                self.serve.routing_stats_period_s,
                self.engine.max_num_seqs,
                self.serve.max_queue_wait_s,
                self.serve.max_replicas,
            ),
            "graceful_shutdown_timeout_s": self.serve.drain_timeout_s,
        }
        if self.serve.autoscaling is not None:
            options["autoscaling_config"] = self.serve.autoscaling.to_serve(
                self.serve.slo, self.engine
            )
        else:
            options["num_replicas"] = self.serve.num_replicas or 1
        if self.tp_size == 1:
            options["ray_actor_options"] = _replica_resources(resource)
        else:
            options["ray_actor_options"] = {"num_cpus": 0}
            options["placement_group_bundles"] = [{resource: 1} for _ in range(self.tp_size)]
            options["placement_group_strategy"] = "STRICT_PACK"
        return options

    def resolve_device(self, device: str | None) -> str:
        """This model's device: its own, or `device` (what `auto` means on this cluster)."""
        if self.device != "auto":
            return self.device
        if device not in DEVICE_RESOURCES:
            raise ValueError(
                f"model {self.name!r} has device 'auto': pass the resolved device, one of "
                f"{', '.join(DEVICE_RESOURCES)} (got {device!r})"
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
        """One model with every option at its default: smollm2-135m-instruct when it is
        prepared (GAUDI_SERVE_MODELS_DIR), else the bundled pycoder, with a logged warning
        that says how to prepare it."""
        from cluster.env import models_dir
        from engine import default_model_path

        # The engine's choice: the prepared folder is named smollm2-135m-instruct, the
        # fallback pycoder, so the served name is the chosen folder's.
        name = Path(default_model_path(None, models_dir())).name
        if name != DEFAULT_MODEL_NAME:
            return cls(models=(ModelConfig(name=name),))
        # NOTE: warming every bucket of the engine's 2048-token budget takes SmolLM2's 30
        # layers ~225 s on a 2-core CPU; 512 takes ~35 s, so `make serve` is up in minutes.
        engine = EngineOptions(max_num_batched_tokens=DEFAULT_MODEL_TOKEN_BUDGET)
        return cls(models=(ModelConfig(name=name, engine=engine),))

    def model(self, name: str) -> ModelConfig:
        """The model called `name`; KeyError naming the served ones otherwise."""
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(f"no model {name!r}; served: {', '.join(m.name for m in self.models)}")

    def chosen_model(self, name: str | None, source: str) -> ModelConfig:
        """A command's `--model`: the model called `name`, or with None the only one.
        ValueError naming --model, `source` (the config's name) and the served models."""
        if name is None:
            if len(self.models) != 1:
                names = ", ".join(m.name for m in self.models)
                raise ValueError(f"--model is needed: {source} serves several ({names})")
            return self.models[0]
        try:
            return self.model(name)
        except KeyError as exc:
            raise ValueError(f"--model: {exc.args[0]}") from None


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
