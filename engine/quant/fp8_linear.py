"""FP8 weights on NVIDIA: a Linear replacement over torch._scaled_mm.

Weights: float8_e4m3fn [out, in] with one float32 scale per output channel (absmax / 448).
Activations: quantized per token on every call (absmax of the row / 448), the "dynamic
per-token" recipe. The matmul runs in FP8 on the tensor cores (rowwise scaling: Hopper and
Ada, compute capability >= 8.9) and returns bfloat16, cast to the input's dtype.

    y[t, o] = sum_i q_x[t, i] * q_w[o, i] * scale_x[t] * scale_w[o] (+ bias[o])
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448.0
MIN_SCALE = 1e-12  # an all-zero row or token still gets a finite scale
MIN_COMPUTE_CAPABILITY = (8, 9)  # rowwise-scaled FP8 matmul: Ada (8.9), Hopper (9.0) and newer
ALIGNMENT = 16  # _scaled_mm needs in and out features divisible by 16


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [rows, cols] -> (float8 [rows, cols], float32 scales [rows, 1]) with
    x ~= q * scale; each row's largest magnitude maps to FP8_MAX."""
    scale = x.abs().amax(dim=-1, keepdim=True).to(torch.float32).clamp(min=MIN_SCALE) / FP8_MAX
    q = (x.to(torch.float32) / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


class Fp8Linear(nn.Module):
    """y = x @ W.T + b with W stored in FP8 with per-output-channel scales.

    weight: float8_e4m3fn [out, in]; weight_scale: float32 [1, out]; bias: [out] or None.
    """

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Fp8Linear:
        weight, scale = quantize_rowwise(linear.weight.detach())
        bias = linear.bias.detach() if linear.bias is not None else None
        return cls(weight, scale.reshape(1, -1).contiguous(), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # [tokens, in]
        q, scale = quantize_rowwise(rows)
        out = torch._scaled_mm(
            q,
            self.weight.t(),  # [in, out], column-major as _scaled_mm wants
            scale_a=scale,  # [tokens, 1]
            scale_b=self.weight_scale,  # [1, out]
            out_dtype=torch.bfloat16,  # rowwise scaling returns bfloat16
        ).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}"


def quantize_fp8_scaled(model: nn.Module, skip: tuple[str, ...] = ()) -> nn.Module:
    """Replace every nn.Linear of `model` (in place) by an Fp8Linear, except those under a
    name in `skip` and those whose sizes _scaled_mm cannot take (not multiples of 16)."""
    names = [
        name
        for name, m in model.named_modules()
        if type(m) is nn.Linear
        and m.weight.numel()  # an empty TP shard stays as it is
        and not any(_is_under(name, s) for s in skip)
    ]
    for name in names:
        linear = model.get_submodule(name)
        if linear.in_features % ALIGNMENT or linear.out_features % ALIGNMENT:
            logger.info("fp8: %s stays unquantized (%s)", name, linear)
            continue
        model.set_submodule(name, Fp8Linear.from_linear(linear))
    return model


def check_fp8_capability(device: torch.device) -> None:
    """Raise unless the CUDA device runs rowwise-scaled FP8 matmuls."""
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_COMPUTE_CAPABILITY:
        raise ValueError(
            f"quantization 'fp8' on cuda needs compute capability >= "
            f"{'.'.join(map(str, MIN_COMPUTE_CAPABILITY))} (Ada, Hopper or newer), this GPU "
            f"has {capability[0]}.{capability[1]}; allowed quantization here: "
            "[None, 'int8', 'int4']"
        )


def _is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")
