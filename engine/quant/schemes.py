"""What each weight quantization stores per parameter: plain arithmetic, no torch, so the
planner (sharding.planner) sizes a model with the same numbers the engine loads.

int8/int4 (Intel Neural Compressor's weight-only RTN on the CPU): symmetric, one float32
scale per GROUP_SIZE consecutive input channels of a row, no zero point; every linear layer
is quantized, the lm_head and the input embedding too (they are one matrix when tied).
fp8 (INC's measured FP8 on Gaudi, per-channel scaled matmul on NVIDIA): one byte per weight
of the decoder blocks' linear layers; the embeddings and lm_head stay in the model's dtype.

>>> round(SCHEMES["int8"].bytes_per_param, 3), round(SCHEMES["int4"].bytes_per_param, 3)
(1.125, 0.625)
>>> weight_bytes("int8", num_block_linear_params=1000, num_embedding_params=100, dtype_bytes=4)
1238
>>> weight_bytes("fp8", num_block_linear_params=1000, num_embedding_params=100, dtype_bytes=2)
1200
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Input channels that share one scale. NOTE: tensor parallelism quantizes each rank's shard
# of a row-parallel layer (o_proj, down_proj, lm_head) by itself; that equals slicing the
# quantized full matrix exactly when GROUP_SIZE divides in_features / tp_size, which 32
# does for every model in the tests (the bundled model's down_proj: 704 / 2 = 11 * 32).
GROUP_SIZE = 32
SCALE_BYTES = 4  # float32


@dataclass(frozen=True)
class WeightScheme:
    """One `quantization` choice: bits per weight, and whether the embeddings are quantized.

    bytes_per_param: bytes per quantized weight, its share of the group's scale included.
    """

    name: str
    bits: int
    group_size: int | None  # None: per output channel (one scale per row)
    is_embedding_quantized: bool

    @property
    def bytes_per_param(self) -> float:
        scale = SCALE_BYTES / self.group_size if self.group_size else 0.0
        return self.bits / 8 + scale


SCHEMES: dict[str, WeightScheme] = {
    scheme.name: scheme
    for scheme in (
        WeightScheme("fp8", 8, None, is_embedding_quantized=False),
        WeightScheme("int8", 8, GROUP_SIZE, is_embedding_quantized=True),
        WeightScheme("int4", 4, GROUP_SIZE, is_embedding_quantized=True),
    )
}


def weight_bytes(
    quantization: str | None,
    num_block_linear_params: int,
    num_embedding_params: int,
    dtype_bytes: int,
) -> int:
    """Bytes of a model's weights under `quantization` (None: everything in dtype_bytes).
    Norms and biases are not counted (the planner leaves them out too)."""
    if quantization is None:
        return (num_block_linear_params + num_embedding_params) * dtype_bytes
    if quantization not in SCHEMES:
        raise ValueError(f"quantization must be one of {[None, *SCHEMES]}, got {quantization!r}")
    scheme = SCHEMES[quantization]
    embedding_bytes = scheme.bytes_per_param if scheme.is_embedding_quantized else dtype_bytes
    return math.ceil(
        num_block_linear_params * scheme.bytes_per_param + num_embedding_params * embedding_bytes
    )
