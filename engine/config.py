"""Engine configuration: one frozen dataclass, resolved against the model once at load.

This module is the home of the engine's allowed values and defaults (dtypes, block sizes,
the max_model_len default); the serving config (deployments.config) derives its choices
from them. It imports no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from engine.buckets import BucketConfig
from engine.speculative.config import SpeculativeConfig

# Dtypes the engine runs weights and activations in: names of torch dtypes (engine.loader
# maps them). The planner's table (sharding.hardware.DTYPES) also plans fp8.
DTYPE_NAMES = ("float32", "bfloat16", "float16")
DTYPE_CHOICES = ("auto", *DTYPE_NAMES)  # auto: the checkpoint's dtype, as the device allows
BLOCK_SIZE_CHOICES = (8, 16, 32, 64, 128)  # tokens per KV-cache block
DEFAULT_MAX_MODEL_LEN_CAP = 4096
# Weight quantization (None = the weights run in `dtype`). Which device runs which:
# QUANTIZATION_DEVICES; engine.quant applies it after the model loads.
QUANTIZATION_CHOICES = (None, "fp8", "int8", "int4")
# fp8: Intel Neural Compressor's measured FP8 on Gaudi; per-channel scaled matmul on NVIDIA.
# int8/int4: INC's weight-only RTN; the weights are stored packed and dequantized per matmul
# in torch, so the CPU runs them (and the CUDA backend too); Gaudi's INC weight-only path is
# a different (HPU-kernel) one that gaudi-serve does not drive.
QUANTIZATION_DEVICES = {"fp8": ("hpu", "cuda"), "int8": ("cpu", "cuda"), "int4": ("cpu", "cuda")}
# KV cache storage: auto = the model's dtype; fp8 = float8 with scales, computed in the
# model's dtype (every backend).
KV_CACHE_DTYPE_CHOICES = ("auto", "fp8")


def resolve_max_model_len(max_model_len: int | None, model_max: int | None) -> int:
    """The context length an engine runs: `max_model_len` if set (at most the model's
    `model_max`, its max_position_embeddings), else the model's capped at
    DEFAULT_MAX_MODEL_LEN_CAP (also when the model states none).

    >>> resolve_max_model_len(None, 131072), resolve_max_model_len(None, 2048)
    (4096, 2048)
    >>> resolve_max_model_len(None, None), resolve_max_model_len(8192, 131072)
    (4096, 8192)
    >>> resolve_max_model_len(8192, 2048)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: max_model_len 8192 exceeds the model's max_position_embeddings 2048; ...
    """
    if max_model_len is None:
        return min(model_max or DEFAULT_MAX_MODEL_LEN_CAP, DEFAULT_MAX_MODEL_LEN_CAP)
    if model_max is not None and max_model_len > model_max:
        raise ValueError(
            f"max_model_len {max_model_len} exceeds the model's "
            f"max_position_embeddings {model_max}; allowed: 2..{model_max}"
        )
    return max_model_len


@dataclass(frozen=True)
class EngineConfig:
    """What one engine (one replica) runs and its limits.

    model: a local Hugging Face model directory, or None for the bundled default model.
    max_model_len: prompt + generated tokens per request; None = the model's
        max_position_embeddings capped at 4096 (resolve_max_model_len).
    kv_cache_tokens: size of the paged KV cache in tokens; None = sized from free memory
        (kv_cache_memory_fraction of it), capped at max_num_seqs * max_model_len.
    max_num_batched_tokens: token budget of one prefill step; longer prompts are chunked.
    buckets: the static-shape grid; None = derived from the limits above (exponential).
    warmup: run every bucket once (capturing graphs where the backend has them) before
        the engine is ready.
    strict_shapes: raise BucketMissError on a step whose shape was not warmed.
    enable_graphs: capture and replay graphs on backends that have them (hpu, cuda).
    speculative: speculative decoding (a draft model or n-gram proposals, verified by the
        model); None = off.
    quantization: the weights' quantization (QUANTIZATION_CHOICES; None = off); the
        devices that run each are QUANTIZATION_DEVICES (check_quantization_device).
    kv_cache_dtype: the KV cache's storage (KV_CACHE_DTYPE_CHOICES); auto = `dtype`.
    quantization_stats: for quantization "fp8" on hpu: the directory of Intel Neural
        Compressor's measurement that `gaudi-serve quantize --model PATH --out DIR` wrote.
    """

    model: str | None = None
    tokenizer: str | None = None
    skip_tokenizer_init: bool = False
    device: str = "auto"
    dtype: str = "auto"
    max_num_seqs: int = 32
    max_model_len: int | None = None
    block_size: int = 16
    kv_cache_tokens: int | None = None
    kv_cache_memory_fraction: float | None = None
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    seed: int = 0
    tp_size: int = 1
    buckets: BucketConfig | None = None
    warmup: bool = True
    strict_shapes: bool = False
    enable_graphs: bool = True
    speculative: SpeculativeConfig | None = None
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    quantization_stats: str | None = None

    def __post_init__(self) -> None:
        from engine.devices import DEVICE_CHOICES

        _choice("device", self.device, DEVICE_CHOICES)
        _choice("dtype", self.dtype, DTYPE_CHOICES)
        _choice("block_size", self.block_size, BLOCK_SIZE_CHOICES)
        _choice("quantization", self.quantization, QUANTIZATION_CHOICES)
        _choice("kv_cache_dtype", self.kv_cache_dtype, KV_CACHE_DTYPE_CHOICES)
        if self.device != "auto":
            check_quantization_device(self.quantization, self.device)
        if self.quantization_stats is not None and self.quantization != "fp8":
            raise ValueError(
                "quantization_stats is only read with quantization 'fp8' (on hpu), got "
                f"quantization {self.quantization!r}"
            )
        if self.quantization == "fp8" and self.device == "hpu" and self.quantization_stats is None:
            raise ValueError(
                "quantization 'fp8' on hpu needs quantization_stats: the directory "
                "`gaudi-serve quantize --model PATH --out DIR` wrote (DIR)"
            )
        _at_least("max_num_seqs", self.max_num_seqs, 1)
        _at_least("max_num_batched_tokens", self.max_num_batched_tokens, self.block_size)
        _at_least("tp_size", self.tp_size, 1)
        if self.max_model_len is not None:
            _at_least("max_model_len", self.max_model_len, 2)
        if self.kv_cache_tokens is not None:
            _at_least("kv_cache_tokens", self.kv_cache_tokens, self.block_size)
        fraction = self.kv_cache_memory_fraction
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ValueError(f"kv_cache_memory_fraction must be in (0, 1], got {fraction!r}")
        if self.speculative is not None and not isinstance(self.speculative, SpeculativeConfig):
            raise ValueError(
                f"speculative must be a SpeculativeConfig or None, got {self.speculative!r}"
            )

    def bucket_config(self) -> BucketConfig:
        """The bucket grid: explicit, or derived from the limits (needs max_model_len)."""
        if self.buckets is not None:
            return self.buckets
        return BucketConfig.from_limits(
            max_num_seqs=self.max_num_seqs,
            max_model_len=self.max_model_len,
            block_size=self.block_size,
            max_num_batched_tokens=self.max_num_batched_tokens,
        )

    def replace(self, **changes) -> EngineConfig:
        return dataclasses.replace(self, **changes)


def check_quantization_device(quantization: str | None, device_name: str) -> None:
    """Raise unless the (resolved) device runs `quantization` (QUANTIZATION_DEVICES).

    >>> check_quantization_device("int8", "cpu")
    >>> check_quantization_device("fp8", "cpu")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: quantization 'fp8' does not run on device 'cpu'; ...
    """
    if quantization is None:
        return
    devices = QUANTIZATION_DEVICES[quantization]
    if device_name not in devices:
        runnable = [q for q, names in QUANTIZATION_DEVICES.items() if device_name in names]
        raise ValueError(
            f"quantization {quantization!r} does not run on device {device_name!r}; "
            f"it runs on {list(devices)}; allowed quantization on {device_name!r}: "
            f"{[None, *runnable]}"
        )


def _choice(name: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _at_least(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
