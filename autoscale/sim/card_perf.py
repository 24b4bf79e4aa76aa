"""What the analytic step-time model knows about a card's speed, beside the planner's card
table (sharding.hardware: memory only): HBM bandwidth, peak dense matmul throughput per
dtype, and the intra-node link an all-reduce crosses; plus one set of efficiency factors
per card family (what fraction of those peaks a serving stack reaches, and fixed costs).

Figures are the vendors' published peaks (dense, no sparsity):

- gaudi2: HBM2E 2.46 TB/s; MME 432 TFLOP/s bf16, 865 fp8; 24 x 100 GbE on chip, 21 of
  them wired all-to-all inside an HLS-Gaudi2 node (3 per peer): 262.5 GB/s per direction;
- gaudi3: HBM2E 3.7 TB/s; MME 1835 TFLOP/s bf16 and fp8; 24 x 200 GbE, 21 inside the node:
  525 GB/s per direction;
- h100 (SXM): HBM3 3.35 TB/s; 989 TFLOP/s bf16, 1979 fp8; NVLink 4 900 GB/s (450 per
  direction);
- h200 (SXM): HBM3e 4.8 TB/s; compute and NVLink as h100.

float16 runs at the bf16 rate, float32 matmuls at a quarter of it (no card here is a
float32 serving target; the rate only keeps the model defined).
"""

from __future__ import annotations

from dataclasses import dataclass

from sharding.hardware import CARDS, get_dtype

__all__ = ["CARD_PERF", "FAMILY_EFFICIENCY", "CardPerf", "Efficiency", "get_card_perf"]

TB = 1e12
GB = 1e9
TFLOP = 1e12


@dataclass(frozen=True)
class CardPerf:
    """One card's peaks. link_bytes_per_s: what one card can send per direction to the
    others of its node (the all-reduce bus bandwidth); link_latency_s: one collective's
    fixed start-up cost."""

    name: str
    family: str  # "gaudi" | "nvidia": which Efficiency applies
    hbm_bytes_per_s: float
    bf16_flops: float
    fp8_flops: float
    link_bytes_per_s: float
    link_latency_s: float

    def peak_flops(self, dtype: str) -> float:
        """Dense matmul peak for weights of `dtype` (fp8 weights run fp8 matmuls)."""
        get_dtype(dtype)  # a clear error for an unknown dtype
        if dtype == "fp8":
            return self.fp8_flops
        if dtype == "float32":
            return self.bf16_flops / 4
        return self.bf16_flops


@dataclass(frozen=True)
class Efficiency:
    """The fraction of each peak a tuned serving stack reaches, and the fixed costs.

    memory: achieved / peak HBM bandwidth in memory-bound (decode) steps;
    compute: achieved / peak matmul throughput in compute-bound (prefill) steps;
    link: achieved / peak link bandwidth of an all-reduce;
    per_layer_s: fixed cost per decoder layer and step (kernel launches or graph nodes,
        norms, rotary, the attention's own small kernels);
    per_step_s: fixed cost per step (host scheduling, input copies, sampling).
    """

    memory: float
    compute: float
    link: float
    per_layer_s: float
    per_step_s: float


CARD_PERF: dict[str, CardPerf] = {
    perf.name: perf
    for perf in (
        CardPerf("gaudi2", "gaudi", 2.46 * TB, 432 * TFLOP, 865 * TFLOP, 262.5 * GB, 10e-6),
        CardPerf("gaudi3", "gaudi", 3.7 * TB, 1835 * TFLOP, 1835 * TFLOP, 525 * GB, 10e-6),
        CardPerf("h100", "nvidia", 3.35 * TB, 989 * TFLOP, 1979 * TFLOP, 450 * GB, 5e-6),
        CardPerf("h200", "nvidia", 4.8 * TB, 989 * TFLOP, 1979 * TFLOP, 450 * GB, 5e-6),
    )
}

# One set per family, never per published row (SIMULATOR.md compares them with published
# figures). Values are the commonly reported ranges for tuned stacks, not fitted here:
# decode reaches 60-80% of HBM bandwidth, large-batch prefill 50-70% of the matmul peak
# (Gaudi's MME a little lower than Hopper's tensor cores on the same shapes), collectives
# 60-80% of the link. Graph replay leaves a few microseconds per layer.
FAMILY_EFFICIENCY: dict[str, Efficiency] = {
    "gaudi": Efficiency(memory=0.70, compute=0.55, link=0.65, per_layer_s=20e-6, per_step_s=2e-3),
    "nvidia": Efficiency(memory=0.75, compute=0.60, link=0.70, per_layer_s=10e-6, per_step_s=1e-3),
}


def get_card_perf(name: str) -> CardPerf:
    """The peaks of card `name`; a ValueError names the cards that have them."""
    if name not in CARD_PERF:
        raise ValueError(f"card must be one of {sorted(CARD_PERF)}, got {name!r}")
    if name not in CARDS:  # the planner must know the card's memory too
        raise ValueError(f"card {name!r} is missing from sharding.hardware.CARDS")
    return CARD_PERF[name]
