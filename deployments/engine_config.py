"""From a model's serving config to the EngineConfig its replicas run.

Every EngineConfig field is set from the YAML file: `engine:` options map to the fields
of the same name, the rest come from the model's own keys (MODEL_KEYS), and
NOT_IN_SERVING_CONFIG says why the one field a served model cannot change is absent.
Nothing is dropped: an option the engine does not take fails loudly here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from deployments.config import BucketOptions, BucketRangeOptions, EngineOptions, ModelConfig
from engine import (
    BUCKET_DIMS,
    BucketConfig,
    BucketRange,
    EngineConfig,
    SpeculativeConfig,
    resolve_max_model_len,
)

# EngineConfig field -> the ModelConfig key that sets it (not an `engine:` option)
MODEL_KEYS = {
    "model": "path",
    "tokenizer": "tokenizer",
    "device": "device",
    "dtype": "dtype",
    "tp_size": "tp_size",
    "speculative": "speculative",
    "quantization": "quantization",
    "quantization_stats": "quantization_stats",
    "kv_cache_dtype": "kv_cache_dtype",
}
# EngineConfig fields a serving config cannot set, and why
NOT_IN_SERVING_CONFIG = {
    "skip_tokenizer_init": "a served model needs its tokenizer (text in, text out)",
}


def engine_config_for(model: ModelConfig, device: str) -> EngineConfig:
    """The EngineConfig a replica of `model` runs, on the resolved `device`.

    Engine options are passed to the EngineConfig fields of the same name (buckets become
    a BucketConfig); a TypeError names any option the engine does not take.
    """
    path = model.resolved_path()
    options = model.engine.model_dump(exclude={"buckets"})
    return EngineConfig(
        model=str(path),
        tokenizer=str(model.tokenizer) if model.tokenizer is not None else None,
        device=device,
        dtype=model.dtype,
        tp_size=model.tp_size,
        quantization=model.quantization,
        quantization_stats=(
            str(model.quantization_stats) if model.quantization_stats is not None else None
        ),
        kv_cache_dtype=model.kv_cache_dtype,
        buckets=_bucket_config(model.engine, path),
        speculative=_speculative_config(model),
        **options,
    )


def _speculative_config(model: ModelConfig) -> SpeculativeConfig | None:
    """The engine's SpeculativeConfig, a draft given by a provided model's name resolved to
    its folder here, as the model's own path is."""
    if model.speculative is None:
        return None
    config = model.speculative.to_engine()
    if config.draft_model is None:
        return config
    return dataclasses.replace(config, draft_model=str(model.speculative.resolved_draft_model()))


def _bucket_config(options: EngineOptions, model_path: Path) -> BucketConfig | None:
    """The engine's BucketConfig for the configured buckets; None (the engine derives them
    from its limits) when nothing was set."""
    buckets = options.buckets
    dims = {
        name: _bucket_dim(getattr(buckets, name))
        for name in BUCKET_DIMS
        if getattr(buckets, name) is not None
    }
    if not dims and buckets.strategy == BucketOptions().strategy:
        return None
    model_max = None
    if options.max_model_len is None:  # the engine's own default: the model's, capped
        from engine import load_model_config  # loads transformers: only when needed

        model_max = getattr(load_model_config(model_path), "max_position_embeddings", None)
    return BucketConfig.from_limits(
        max_num_seqs=options.max_num_seqs,
        max_model_len=resolve_max_model_len(options.max_model_len, model_max),
        block_size=options.block_size,
        max_num_batched_tokens=options.max_num_batched_tokens,
        strategy=buckets.strategy,
        **dims,
    )


def _bucket_dim(dim: BucketRangeOptions | tuple[int, ...]) -> BucketRange | tuple[int, ...]:
    if isinstance(dim, BucketRangeOptions):
        # the exponential strategy ignores step; the linear one requires it (validated)
        return BucketRange(min=dim.min, step=dim.step or 1, max=dim.max)
    return tuple(dim)
