"""Quantize one TP rank's shard after it is loaded.

DeepSpeed's tensor-parallel layers are not nn.Linear, so neither Intel Neural Compressor's
weight-only RTN nor engine.quant's FP8 Linear would see them. Each is replaced by a small
module whose local matmul is a plain nn.Linear over the rank's own slice (which is then
quantized like any other Linear) and which keeps DeepSpeed's collective:

    column-parallel (LinearLayer: q/k/v/gate/up)   y_local = x @ W_local.T + b_local
    row-parallel (LinearAllreduce: o/down)         y = all_reduce(x_local @ W_local.T) + b
    lm_head (LmHeadLinearAllreduce)                the same on this rank's slice of x

Only the subclasses that keep their parent's forward are taken (anything else raises), so a
layer with its own forward never silently loses a collective. FP8 on Gaudi goes straight to
INC, which patches DeepSpeed's layers itself.

With engine.quant.GROUP_SIZE dividing each row-parallel shard's in_features, a rank's
quantized slice equals the same slice of the quantized full matrix (groups run along the
input channels), so TP=2 quantizes exactly as TP=1 does.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.quant import quantize_model

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "quantize_shard"]


class ColumnParallelLinear(nn.Module):
    """DeepSpeed's LinearLayer (without gather_output) as its local nn.Linear."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.linear = _local_linear(layer.weight, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class RowParallelLinear(nn.Module):
    """DeepSpeed's LinearAllreduce / LmHeadLinearAllreduce: the local matmul as an
    nn.Linear, then the group's all-reduce, then the (replicated) bias."""

    def __init__(self, layer: nn.Module, slices_input: bool):
        super().__init__()
        self.linear = _local_linear(layer.weight, None)
        self.bias = layer.bias
        self.mp_group = layer.mp_group
        sizes = layer._partition_sizes
        # lm_head: x carries every input channel; this rank takes its own slice of them
        self.input_slice = (
            slice(sum(sizes[: layer.tp_index]), sum(sizes[: layer.tp_index + 1]))
            if slices_input
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from deepspeed import comm as dist
        from deepspeed.comm import pg_utils

        if self.input_slice is not None:
            x = x[..., self.input_slice]
        out = self.linear(x)
        if pg_utils.is_parallel(self.mp_group):
            dist.inference_all_reduce(out, group=self.mp_group)
        if self.bias is not None:
            out = out + self.bias
        return out


def quantize_shard(
    model: nn.Module, quantization: str, dtype: torch.dtype, stats_dir: str | None = None
) -> nn.Module:
    """This rank's sharded model with its weights quantized (engine.quant.quantize_model)."""
    device_type = next(model.parameters()).device.type
    if not (quantization == "fp8" and device_type == "hpu"):
        wrap_tp_layers(model)
    return quantize_model(model, quantization, dtype, stats_dir)


def wrap_tp_layers(model: nn.Module) -> nn.Module:
    """Replace DeepSpeed's TP layers by ColumnParallelLinear / RowParallelLinear, in place."""
    from deepspeed.module_inject.layers import (
        LinearAllreduce,
        LinearLayer,
        LmHeadLinearAllreduce,
        TensorParallel_Layer,
    )

    for name, module in list(model.named_modules()):
        if not isinstance(module, TensorParallel_Layer):
            continue
        forward = type(module).forward
        if forward is LinearLayer.forward and not module.gather_output:
            model.set_submodule(name, ColumnParallelLinear(module))
        elif forward is LinearAllreduce.forward:
            model.set_submodule(name, RowParallelLinear(module, slices_input=False))
        elif forward is LmHeadLinearAllreduce.forward:
            model.set_submodule(name, RowParallelLinear(module, slices_input=True))
        else:
            raise NotImplementedError(
                f"quantization with tp_size > 1: DeepSpeed layer {name!r} "
                f"({type(module).__name__}) is not supported; supported: LinearLayer, "
                "LinearAllreduce, LmHeadLinearAllreduce and subclasses keeping their forward"
            )
    return model


def _local_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    linear.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight)
    if bias is not None:
        linear.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias)
    return linear
