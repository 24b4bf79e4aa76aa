"""Quantized weights: int8/int4 weight-only (CPU, CUDA) and FP8 (Gaudi through Intel Neural
Compressor, NVIDIA through torch._scaled_mm). See engine.quant.apply for which device runs
which. Importing this package loads no torch: the byte counts (engine.quant.schemes) are
plain Python for the planner; the rest is imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

from engine.quant.schemes import GROUP_SIZE, SCHEMES, WeightScheme, weight_bytes

# name -> module, loaded on first use (they import torch)
_LAZY = {
    "quantize_model": "engine.quant.apply",
    "model_weight_bytes": "engine.quant.apply",
    "PackedLinear": "engine.quant.packed",
    "QuantizedEmbedding": "engine.quant.packed",
    "Fp8Linear": "engine.quant.fp8_linear",
}
_RENAMED = {"model_weight_bytes": "weight_bytes"}

__all__ = ["GROUP_SIZE", "SCHEMES", "WeightScheme", "weight_bytes", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
