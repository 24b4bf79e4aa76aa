"""From a model's serving config to the EngineConfig its replicas run."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from deployments.config import (
    BucketOptions,
    BucketRangeOptions,
    EngineOptions,
    ModelConfig,
    SpeculativeOptions,
)
from engine.buckets import BucketConfig, BucketRange
from engine.config import DEFAULT_MAX_MODEL_LEN_CAP, EngineConfig
from engine.loader import load_config
from engine.speculative.config import SpeculativeConfig

logger = logging.getLogger(__name__)

_BUCKET_DIMS = ("prefill_batch_sizes", "prefill_lengths", "decode_batch_sizes", "decode_num_blocks")


def engine_config_for(model: ModelConfig, device: str) -> EngineConfig:
    """The EngineConfig a replica of `model` runs, on the resolved `device`.

    Engine options are passed to the EngineConfig fields of the same name (buckets become
    a BucketConfig); options the engine does not take are logged, not silently dropped.
    """
    accepted = {f.name for f in dataclasses.fields(EngineConfig)}
    options = model.engine.model_dump(exclude={"buckets"})
    unsupported = [
        name
        for name in options
        if name not in accepted and options[name] != _default_engine_option(name)
    ]
    if unsupported:
        logger.warning("model %s: the engine ignores %s", model.name, ", ".join(unsupported))
    path = model.resolved_path()
    return EngineConfig(
        model=str(path),
        device=device,
        dtype=model.dtype,
        tp_size=model.tp_size,
        buckets=_bucket_config(model.engine, path),
        speculative=_speculative_config(model.speculative),
        **{name: value for name, value in options.items() if name in accepted},
    )


def _bucket_config(options: EngineOptions, model_path: Path) -> BucketConfig | None:
    """The engine's BucketConfig for the configured buckets; None (the engine derives them
    from its limits) when nothing was set."""
    buckets = options.buckets
    dims = {
        name: _bucket_dim(getattr(buckets, name))
        for name in _BUCKET_DIMS
        if getattr(buckets, name) is not None
    }
    if not dims and buckets.strategy == BucketOptions().strategy:
        return None
    max_model_len = options.max_model_len
    if max_model_len is None:  # the engine's own default: the model's, capped
        model_max = getattr(load_config(model_path), "max_position_embeddings", None)
        max_model_len = min(model_max or DEFAULT_MAX_MODEL_LEN_CAP, DEFAULT_MAX_MODEL_LEN_CAP)
    return BucketConfig.from_limits(
        max_num_seqs=options.max_num_seqs,
        max_model_len=max_model_len,
        block_size=options.block_size,
        max_num_batched_tokens=options.max_num_batched_tokens,
        strategy=buckets.strategy,
        **dims,
    )


def _speculative_config(options: SpeculativeOptions | None) -> SpeculativeConfig | None:
    if options is None:
        return None
    return SpeculativeConfig(
        method=options.method,
        num_speculative_tokens=options.num_speculative_tokens,
        # None: the engine takes the bundled draft model
        draft_model=str(options.draft_model) if options.draft_model is not None else None,
        adaptive=options.adaptive,
    )


def _bucket_dim(dim: BucketRangeOptions | tuple[int, ...]) -> BucketRange | tuple[int, ...]:
    if isinstance(dim, BucketRangeOptions):
        # the exponential strategy ignores step; the linear one requires it (validated)
        return BucketRange(min=dim.min, step=dim.step or 1, max=dim.max)
    return tuple(dim)


def _default_engine_option(name: str) -> Any:
    field = EngineOptions.model_fields[name]
    value = field.get_default(call_default_factory=True)
    return value.model_dump() if hasattr(value, "model_dump") else value
