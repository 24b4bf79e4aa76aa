"""gaudi-serve's single-replica engine: continuous batching over a paged KV cache.

The public surface is `__all__`. Names are imported on first use (PEP 562), so
`from engine import SamplingParams` (an ingress, a client) loads neither torch nor any
model code. Never imports Ray or the tensor-parallel package: another executor comes from
the caller as an `ExecutorFactory`. Device backends are imported only when chosen.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> "module" (the same name there) or "module:name" (exported under a name
# that reads on its own, e.g. SPECULATIVE_METHODS for engine.speculative.config.METHODS).
# The config-side names (choices, defaults, bucket and speculative config, metric kinds,
# device names) load no torch; tests/engine/test_facade.py checks which.
_EXPORTS = {
    # running the engine
    "LLM": "engine.llm",
    "Engine": "engine.llm_engine",
    "AsyncEngine": "engine.async_engine",
    "EngineInfo": "engine.engine_info",
    "Executor": "engine.executor",
    "ExecutorFactory": "engine.executor",
    "create_local_executor": "engine.executor",
    # requests and their results
    "SamplingParams": "engine.sampling_params",
    "RequestOutput": "engine.outputs",
    "RequestDelta": "engine.outputs",
    "TokenLogprob": "engine.outputs",
    "EmptyPromptError": "engine.errors",
    "EngineDeadError": "engine.errors",
    "PromptTooLongError": "engine.errors",
    # config: allowed values and defaults, the one home of each
    "EngineConfig": "engine.config",
    "DTYPE_CHOICES": "engine.config",
    "BLOCK_SIZE_CHOICES": "engine.config",
    "QUANTIZATION_CHOICES": "engine.config",
    "QUANTIZATION_DEVICES": "engine.config",
    "KV_CACHE_DTYPE_CHOICES": "engine.config",
    "check_quantization_device": "engine.config",
    "resolve_max_model_len": "engine.config",
    "DEVICE_CHOICES": "engine.devices",
    "resolve_device_name": "engine.devices",  # "auto" probes the machine (imports torch)
    "BucketConfig": "engine.buckets",
    "BUCKET_DIMS": "engine.buckets",
    "BucketRange": "engine.bucket_ranges",
    "BUCKET_STRATEGIES": "engine.bucket_ranges:STRATEGIES",
    "is_bucket_values": "engine.bucket_ranges",
    "SpeculativeConfig": "engine.speculative.config",
    "SPECULATIVE_METHODS": "engine.speculative.config:METHODS",
    "MAX_SPECULATIVE_TOKENS": "engine.speculative.config",
    "default_model_path": "engine.assets",
    "DEFAULT_MODEL_NAME": "engine.assets",
    "FALLBACK_MODEL_NAME": "engine.assets",
    "MODEL_NAMES": "engine.assets",
    "default_draft_model_path": "engine.assets",
    # stats and the metric kind each field declares
    "EngineStats": "engine.stats",
    "METRIC_COUNTER": "engine.stats:COUNTER",
    "METRIC_GAUGE": "engine.stats:GAUGE",
    # the prefix cache's block hashes, as the block manager computes them (for a router)
    "prefix_block_hashes": "engine.prefix_hash",
    "BLOCK_STORED": "engine.block_events",
    "BLOCK_EVICTED": "engine.block_events",
    # model files (imports torch and transformers)
    "load_model_config": "engine.loader:load_config",
    # what each step did, for a step observer (a router's feed); these load no torch
    "StepRecord": "engine.step_record",
    "StepObserver": "engine.step_record",
    "StepKind": "engine.scheduler",
    "BlockEvent": "engine.block_events",
    "BlockEventBatch": "engine.block_events",
    # prompts to token ids as the engine computes them, for the ingress (the names load no
    # torch; load_prompt_encoder loads the tokenizer with torch and transformers)
    "PromptEncoder": "engine.prompt_encoder",
    "load_prompt_encoder": "engine.prompt_encoder",
    "truncate_prompt": "engine.prompt_encoder",
    # images in prompts (multimodal models): the processed images of a request and the
    # model's processor that makes them (the names load no torch; `load` loads transformers)
    "MultiModalInput": "engine.multimodal",
    "MultiModalProcessor": "engine.multimodal",
    # profiling a live replica (deployments/debug_profile.py)
    "ProfileBusyError": "engine.profiling.session",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
