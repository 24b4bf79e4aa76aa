"""One entry point: quantize a loaded model's weights for the device it runs on.

Which device runs which (engine.config.QUANTIZATION_DEVICES):
    int8, int4  cpu, cuda  INC weight-only RTN -> PackedLinear (engine.quant.weight_only)
    fp8         hpu        INC FP8 from a measurement (engine.quant.inc_fp8)
    fp8         cuda       per-channel FP8 over torch._scaled_mm (engine.quant.fp8_linear)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engine.config import check_quantization_device


def quantize_model(
    model: nn.Module,
    quantization: str | None,
    dtype: torch.dtype,
    stats_dir: str | Path | None = None,
) -> nn.Module:
    """`model` (loaded, on its device) with its weights quantized; unchanged for None.

    dtype: the model's compute dtype. stats_dir: INC's FP8 measurement (fp8 on hpu only).
    NOTE: under tensor parallelism DeepSpeed's layers must first be wrapped so their local
    matmul is an nn.Linear (sharding.quantize), except for fp8 on hpu: INC takes them.
    """
    if quantization is None:
        return model
    device = _model_device(model)
    check_quantization_device(quantization, device.type)
    if quantization in ("int8", "int4"):
        from engine.quant.weight_only import quantize_weight_only

        return quantize_weight_only(model, quantization, dtype)
    if device.type == "hpu":
        from engine.quant.inc_fp8 import quantize_fp8_inc

        return quantize_fp8_inc(model, stats_dir)
    from engine.quant.fp8_linear import check_fp8_capability, quantize_fp8_scaled

    check_fp8_capability(device)
    return quantize_fp8_scaled(model, skip=output_embedding_names(model))


def output_embedding_names(model: nn.Module) -> tuple[str, ...]:
    """Where the model's lm_head sits (fp8 keeps it in the model's dtype)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get is not None else None
    if head is None:
        return ()
    return tuple(name for name, m in model.named_modules() if m is head)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of the model (quantized storage as stored;
    a tensor shared by two modules counts once)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
