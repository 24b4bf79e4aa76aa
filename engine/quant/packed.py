"""The engine's weight-only int8/int4 layers: compact storage, dequantized per matmul.

Intel Neural Compressor's own INCWeightOnlyLinear is an export format: on its first forward
it rebuilds the full-precision weight (a Python loop over the input channels) and keeps it,
so the model ends up holding both. These layers keep only the integers and the scales and
dequantize into a temporary on every call, so the memory saving lasts; `from_inc` takes
INC's integers and scales unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INT4_OFFSET = 8  # int4 values in [-8, 7] are stored as nibbles 0..15


class PackedLinear(nn.Module):
    """y = x @ W.T + b with W = q * scale, q symmetric int8 or int4 without zero point.

    qweight: bits 8: int8 [out, in]; bits 4: uint8 [out, ceil(in / 2)], two values per
        byte, the even input channel in the low nibble.
    scales: float32 [out, ceil(in / group_size)], one per group of input channels.
    """

    def __init__(
        self,
        qweight: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None,
        bits: int,
        in_features: int,
        group_size: int,
    ):
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"bits must be one of [4, 8], got {bits!r}")
        self.bits = bits
        self.in_features = in_features
        self.out_features = qweight.shape[0]
        self.group_size = group_size
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)

    @classmethod
    def from_inc(cls, module: nn.Module, bias_dtype: torch.dtype) -> PackedLinear:
        """From INC's INCWeightOnlyLinear (RTN, symmetric, use_optimum_format=False)."""
        unpacked = module.unpack()  # int_weight: int16 [out, in]; scales: float32 [out, groups]
        if unpacked["zp"] is not None:
            raise ValueError("PackedLinear takes symmetric quantization only (no zero point)")
        values = unpacked["int_weight"]
        bias = module.bias.to(bias_dtype) if module.bias is not None else None
        return cls(
            pack_int(values, module.bits),
            unpacked["scales"].to(torch.float32).contiguous(),
            bias,
            module.bits,
            module.in_features,
            module.group_size,
        )

    def dequantize(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """W (float32 [out, in]), or only W[rows] (rows: any shape of indices -> [..., in])."""
        qweight = self.qweight if rows is None else self.qweight[rows]
        scales = self.scales if rows is None else self.scales[rows]
        values = unpack_int(qweight, self.bits, self.in_features).to(torch.float32)
        if self.in_features % self.group_size == 0:
            # [..., groups, group_size] * [..., groups, 1]
            grouped = values.unflatten(-1, (-1, self.group_size)) * scales.unsqueeze(-1)
            return grouped.flatten(-2)
        # a last, shorter group: scales [..., groups] -> [..., in]
        scales = scales.repeat_interleave(self.group_size, dim=-1)[..., : self.in_features]
        return values * scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bits={self.bits}, group_size={self.group_size}, bias={self.bias is not None}"
        )


class QuantizedEmbedding(nn.Module):
    """An input embedding whose table is a PackedLinear's weight ([vocab, hidden]): the
    lm_head itself when the two are tied, so the table is stored once."""

    def __init__(self, table: PackedLinear, dtype: torch.dtype):
        super().__init__()
        self.table = table
        self.dtype = dtype
        self.num_embeddings = table.out_features
        self.embedding_dim = table.in_features

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table.dequantize(input_ids).to(self.dtype)


def pack_int(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers in the symmetric range of `bits` -> PackedLinear.qweight storage."""
    if bits == 8:
        return values.to(torch.int8).contiguous()
    nibbles = (values.to(torch.int16) + INT4_OFFSET).to(torch.uint8)
    if nibbles.shape[-1] % 2:
        nibbles = F.pad(nibbles, (0, 1), value=INT4_OFFSET)
    return (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).contiguous()


def unpack_int(qweight: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """PackedLinear.qweight storage -> int8 values [..., in_features]."""
    if bits == 8:
        return qweight
    low = (qweight & 0xF).to(torch.int8) - INT4_OFFSET
    high = (qweight >> 4).to(torch.int8) - INT4_OFFSET
    return torch.stack((low, high), dim=-1).flatten(-2)[..., :in_features]
