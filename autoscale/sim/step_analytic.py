"""The analytic step-time model: seconds of one engine step from a model's config.json,
its dtype, the TP degree and a card's peaks (autoscale.sim.card_perf), with no device.

Per step and per TP rank (a rank holds 1/tp of every matrix and of the KV heads):

    t = max(bytes / (hbm_bandwidth * eff.memory), flops / (peak_matmul * eff.compute))
        + layers * eff.per_layer_s + eff.per_step_s
        + 2 * layers * all_reduce(tokens * hidden * activation_bytes)      (tp > 1 only)

    all_reduce(n) = link_latency_s + 2 (tp - 1) / tp * n / (link_bandwidth * eff.link)
    (a ring all-reduce; one after attention and one after the MLP of every layer)

bytes read: the block linears once per step (dtype bytes: fp8 keeps 1 byte a weight),
lm_head once (bf16 under fp8, as the published fp8 checkpoints; a tied embedding is the
same matrix, read once), and the KV cache: every attended token's K and V (kv dtype bytes,
2 x layers x kv_heads / tp x head_dim) plus the new tokens' writes. MoE layers read only
the experts the step's tokens route to: E x (1 - (1 - k/E)^tokens) distinct experts in
expectation under uniform routing (k for one token, all E for a big batch).

flops: 2 x tokens x the block linears a token passes (attention projections and k of E
experts), 2 x logit rows x vocab x hidden for lm_head (one row per sequence; a decode
step's every query position), and attention's 4 x heads / tp x head_dim per (query, key)
pair. Embedding lookups, norms, rotary and activations are in the fixed per-layer cost.

What a step computes: a graph-mode step runs at its padded bucket (`work.padded`): padded
rows x padded query length, and attention over the padded block-table width (padding reads
the padding block like any other). An eager step (padded None) computes its real rows,
tokens and context (a prefill chunk of q tokens after c cached ones attends to
q c + q (q + 1) / 2 (query, key) pairs).

Worked example (Llama-3.1-8B, bf16, one h100; a decode step of 64 rows at 1024 context):
weights 15.0 GB and KV 64 x 1025 x 128 KiB = 8.6 GB read -> 23.6 GB / (3.35 TB/s x 0.75)
= 9.4 ms, compute 1.0 TFLOP / (989 x 0.6) = 1.7 ms, so memory-bound: 9.4 + 32 x 0.01
+ 1 = 10.7 ms per step, 6.0k output tokens/s.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass
from typing import Any, NamedTuple

from autoscale.sim.card_perf import FAMILY_EFFICIENCY, CardPerf, Efficiency, get_card_perf
from autoscale.sim.step_cost import DECODE, PREFILL, StepWork
from sharding.hardware import get_dtype
from sharding.model_spec import ModelSpec

__all__ = ["AnalyticStepCost", "StepBreakdown"]


class StepBreakdown(NamedTuple):
    """Where one step's time goes (seconds), and the bytes and flops behind it."""

    memory_s: float
    compute_s: float
    fixed_s: float
    all_reduce_s: float
    bytes_read: float
    flops: float

    @property
    def total_s(self) -> float:
        return max(self.memory_s, self.compute_s) + self.fixed_s + self.all_reduce_s


class _StepSize(NamedTuple):
    """What a step computes: rows, tokens fed, lm_head rows, KV tokens read, and the
    attention's (query, key) pairs, all summed over rows."""

    rows: int
    tokens: int
    logit_rows: int
    kv_tokens_read: float
    attention_pairs: float


@dataclass(frozen=True)
class AnalyticStepCost:
    """A StepCost (autoscale.sim.step_cost) from first principles (see the module doc).

    block_size: KV block size of the engine whose padded shapes it prices
    (StepShape.num_blocks counts blocks). kv_cache_dtype: None = bfloat16 under fp8
    weights, else dtype (as the planner)."""

    spec: ModelSpec
    card: CardPerf
    tp_size: int = 1
    dtype: str = "bfloat16"
    kv_cache_dtype: str | None = None
    block_size: int = 16
    efficiency: Efficiency | None = None

    def __post_init__(self) -> None:
        get_dtype(self.dtype)
        if self.kv_cache_dtype is not None:
            get_dtype(self.kv_cache_dtype, field="kv_cache_dtype")
        if not isinstance(self.tp_size, int) or self.tp_size < 1:
            raise ValueError(f"tp_size must be a positive integer, got {self.tp_size!r}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {self.block_size!r}")

    @classmethod
    def from_config(
        cls,
        config: str | pathlib.Path | dict[str, Any],
        dtype: str = "bfloat16",
        tp: int = 1,
        card: str = "gaudi2",
        *,
        block_size: int = 16,
        kv_cache_dtype: str | None = None,
    ) -> AnalyticStepCost:
        """From a config.json (its path, a model folder holding one, or the dict), a
        serving dtype (sharding.hardware.DTYPES), a TP degree and a card of CARD_PERF."""
        if isinstance(config, dict):
            spec = ModelSpec.from_config(config)
        else:
            path = pathlib.Path(config)
            if path.is_dir() or path.name == "config.json":
                spec = ModelSpec.from_path(path)
            else:
                spec = ModelSpec.from_config(json.loads(path.read_text()), name=path.stem)
        return cls(spec, get_card_perf(card), tp, dtype, kv_cache_dtype, block_size)

    # -- the model's constants (per rank) ------------------------------------------------
    @property
    def eff(self) -> Efficiency:
        return self.efficiency or FAMILY_EFFICIENCY[self.card.family]

    @property
    def kv_dtype(self) -> str:
        return self.kv_cache_dtype or ("bfloat16" if self.dtype == "fp8" else self.dtype)

    @property
    def kv_bytes_per_token(self) -> float:
        """K and V of one token, all layers, on one rank."""
        s = self.spec
        heads = s.num_kv_heads / self.tp_size
        return 2 * s.num_layers * heads * s.head_dim * get_dtype(self.kv_dtype).num_bytes

    @property
    def _attention_params(self) -> int:
        """Q, K, V and O projections of one layer (all ranks)."""
        s = self.spec
        return s.hidden_size * s.head_dim * 2 * (s.num_attention_heads + s.num_kv_heads)

    @property
    def _expert_params(self) -> int:
        """One expert's MLP matrices (the whole MLP of a dense model)."""
        s = self.spec
        return (3 if s.is_gated_mlp else 2) * s.hidden_size * s.intermediate_size

    def experts_touched(self, num_tokens: int) -> float:
        """Distinct experts a layer reads for num_tokens tokens (1 for a dense model)."""
        s = self.spec
        if s.num_experts <= 1:
            return 1.0
        k = min(s.num_experts_per_tok, s.num_experts)
        return s.num_experts * (1.0 - (1.0 - k / s.num_experts) ** num_tokens)

    # -- one step ------------------------------------------------------------------------
    def step_s(self, work: StepWork) -> float:
        return self.breakdown(work).total_s

    def breakdown(self, work: StepWork) -> StepBreakdown:
        """The step's bytes, flops and time split (see the module doc)."""
        size = self._size(work)
        s, tp, eff, card = self.spec, self.tp_size, self.eff, self.card
        weight_bytes = get_dtype(self.dtype).num_bytes
        other_bytes = get_dtype(self.dtype).unquantized_bytes
        lm_head = s.vocab_size * s.hidden_size
        experts = self.experts_touched(size.tokens) if size.tokens else 0.0
        linear_read = s.num_layers * (self._attention_params + experts * self._expert_params)
        bytes_read = (linear_read * weight_bytes + lm_head * other_bytes) / tp
        bytes_read += (size.kv_tokens_read + size.tokens) * self.kv_bytes_per_token
        k = min(s.num_experts_per_tok, s.num_experts)
        per_token = s.num_layers * (self._attention_params + k * self._expert_params)
        flops = 2.0 * (size.tokens * per_token + size.logit_rows * lm_head) / tp
        flops += 4.0 * s.num_layers * s.num_attention_heads / tp * s.head_dim * size.attention_pairs
        all_reduce_s = 0.0
        if tp > 1 and size.tokens:
            message = size.tokens * s.hidden_size * other_bytes
            one = card.link_latency_s + 2 * (tp - 1) / tp * message / (
                card.link_bytes_per_s * eff.link
            )
            all_reduce_s = 2 * s.num_layers * one
        return StepBreakdown(
            memory_s=bytes_read / (card.hbm_bytes_per_s * eff.memory),
            compute_s=flops / (card.peak_flops(self.dtype) * eff.compute),
            fixed_s=s.num_layers * eff.per_layer_s + eff.per_step_s,
            all_reduce_s=all_reduce_s,
            bytes_read=bytes_read,
            flops=flops,
        )

    def _size(self, work: StepWork) -> _StepSize:
        if work.kind not in (PREFILL, DECODE):
            raise ValueError(f"work.kind must be {PREFILL!r} or {DECODE!r}, got {work.kind!r}")
        shape = work.padded
        if shape is not None:
            span = shape.num_blocks * self.block_size  # keys per row: the whole table
            rows, q = shape.batch_size, shape.query_len
            logit_rows = rows * q if work.kind == DECODE else rows
            return _StepSize(rows, rows * q, logit_rows, rows * span, rows * q * span)
        rows, tokens, context = work.num_rows, work.num_tokens, work.num_context_tokens
        if rows < 1:
            return _StepSize(0, 0, 0, 0.0, 0.0)
        q, c = tokens / rows, context / rows
        pairs = rows * (q * c + q * (q + 1) / 2)
        logit_rows = tokens if work.kind == DECODE else rows
        return _StepSize(rows, tokens, logit_rows, float(context), pairs)
