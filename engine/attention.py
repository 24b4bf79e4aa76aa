"""Attention over the paged KV cache, registered with transformers' AttentionInterface.

Hugging Face model classes run unchanged: they compute q/k/v and RoPE and call the
registered function with the extra forward kwarg `paged` (a PagedMetadata). We write the
step's keys/values into the cache at `slot_mapping`, gather every sequence's context
through its block table, and run SDPA with a mask built once per step.
Every shape here is fixed by the step's bucket; there is no data-dependent op.

Measured on CPU (benchmarks/RESULTS.md, "Attention gather"): the context gather is an
`index_select` over the flattened block table, not `cache[block_tables]` (advanced indexing
is 1.5-7x slower for the same copy).

FP8 KV cache (EngineConfig.kv_cache_dtype "fp8"): pools of float8_e4m3fn. Keys and values
are quantized as they are written and read back in the query's dtype, so attention computes
in the model's dtype. One fixed scale of 1.0 (vLLM's default): e4m3's relative precision is
the same anywhere in its range (+-448, normal down to 2^-6; +-240 on Gaudi2, whose casts
keep to e4m3fnuz's range: Device.kv_fp8_max), and on the bundled pycoder and
SmolLM2-135M the keys and values fall inside it (|k| < 22, |v| < 16). Measured there,
the relative error of K and V is 2.6% with scale 1.0 and no better with per-layer or
per-head scales calibrated on held-out text (2.6-2.7%); per-token scales give 2.1-2.5% but
store a scale per token and head (+4 bytes per 64: 1.88x bf16's tokens, not 2x).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

ATTN_IMPLEMENTATION = "gaudi_paged"
KV_FP8_DTYPE = torch.float8_e4m3fn
_KV_FP8_MAX = torch.finfo(KV_FP8_DTYPE).max


@dataclass
class PagedMetadata:
    """Per-step inputs of the paged attention, shared by every layer.

    kv_caches: per layer (k_cache, v_cache), each [num_blocks, block_size, kv_heads, head_dim],
        in the model's dtype or KV_FP8_DTYPE
    slot_mapping: [batch * query_len] flat cache slot of each fed token (padding -> slot 0)
    block_tables: [batch, max_blocks] block ids (padding -> block 0)
    positions: [batch, query_len] absolute position of each fed token (padding -> 0)
    mask: [batch, 1, query_len, max_blocks * block_size] bool, True = may attend
    kv_fp8_max: where an FP8 cache saturates keys and values (the device's kv_fp8_max)
    """

    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    kv_fp8_max: float = _KV_FP8_MAX

    @staticmethod
    def causal_mask(positions: torch.Tensor, context_len: int) -> torch.Tensor:
        """A key at position j is visible to a query at position p when j <= p. Keys past a
        sequence's context sit at positions > p, so the same test hides them."""
        key_pos = torch.arange(context_len, device=positions.device)
        return (key_pos[None, None, :] <= positions[:, :, None]).unsqueeze(1)

    def window_mask(self, sliding_window: int) -> torch.Tensor:
        key_pos = torch.arange(self.mask.shape[-1], device=self.positions.device)
        return (key_pos[None, None, :] > self.positions[:, :, None] - sliding_window).unsqueeze(1)


def paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    paged: PagedMetadata | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    # query: [batch, heads, q_len, head_dim]; key/value: [batch, kv_heads, q_len, head_dim]
    if paged is None:
        raise RuntimeError(
            f"attn_implementation={ATTN_IMPLEMENTATION!r} needs the `paged` forward kwarg; "
            "run the model through engine.ModelRunner"
        )
    batch, _, _, head_dim = query.shape
    num_kv_heads = key.shape[1]
    k_cache, v_cache = paged.kv_caches[module.layer_idx]
    k_flat = k_cache.view(-1, num_kv_heads, head_dim)
    v_flat = v_cache.view(-1, num_kv_heads, head_dim)
    # NOTE: write before gather, so tokens of this step see each other.
    keys = key.transpose(1, 2).reshape(-1, num_kv_heads, head_dim)
    values = value.transpose(1, 2).reshape(-1, num_kv_heads, head_dim)
    _write(k_flat, paged.slot_mapping, keys, paged.kv_fp8_max)
    _write(v_flat, paged.slot_mapping, values, paged.kv_fp8_max)
    # context: [batch, kv_heads, max_blocks * block_size, head_dim] (a strided view)
    blocks = paged.block_tables.reshape(-1)
    k_ctx = _gather(k_cache, blocks, query.dtype).view(batch, -1, num_kv_heads, head_dim)
    v_ctx = _gather(v_cache, blocks, query.dtype).view(batch, -1, num_kv_heads, head_dim)
    k_ctx, v_ctx = k_ctx.transpose(1, 2), v_ctx.transpose(1, 2)
    mask = paged.mask
    if sliding_window is not None and sliding_window < mask.shape[-1]:
        mask = mask & paged.window_mask(sliding_window)
    if softcap is not None:
        out = _softcapped_attention(query, k_ctx, v_ctx, mask, scaling, softcap)
    else:
        out = _sdpa(query, k_ctx, v_ctx, mask, scaling)
    return out.transpose(1, 2).contiguous(), None


def quantize_kv(x: torch.Tensor, max_abs: float = _KV_FP8_MAX) -> torch.Tensor:
    """Keys or values -> KV_FP8_DTYPE at scale 1.0, saturated at +-max_abs (448, or the
    device's smaller range: Device.kv_fp8_max) here rather than left to each backend's cast
    past the range (e4m3fn has no infinity)."""
    return x.clamp(-max_abs, max_abs).to(KV_FP8_DTYPE)


def _write(cache_flat: torch.Tensor, slots: torch.Tensor, x: torch.Tensor, fp8_max: float) -> None:
    # cache_flat: [slots, kv_heads, head_dim]; x: [tokens, kv_heads, head_dim]
    if cache_flat.dtype == KV_FP8_DTYPE:
        # NOTE: through byte views: index_copy_ has no float8 kernel on the CPU.
        cache_flat, x = cache_flat.view(torch.uint8), quantize_kv(x, fp8_max).view(torch.uint8)
    cache_flat.index_copy_(0, slots, x)


def _gather(cache: torch.Tensor, blocks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The blocks' entries [len(blocks), block_size, kv_heads, head_dim] in `dtype`."""
    if cache.dtype != KV_FP8_DTYPE:
        return cache.index_select(0, blocks)
    codes = cache.view(torch.uint8).index_select(0, blocks)
    # NOTE: dequantized by looking each byte up in the 256 values of e4m3: measured on the
    # CPU (pycoder, a decode step of 32 rows x 208 tokens, 1 thread) that step takes 1.9x
    # an fp32 cache's time, 2.6x with the float8 -> float cast.
    values = torch.arange(256, dtype=torch.uint8, device=cache.device).view(KV_FP8_DTYPE)
    return values.to(dtype).index_select(0, codes.view(-1).int()).view(codes.shape)


def _sdpa(query, key, value, mask, scaling):
    # NOTE: folding the GQA groups of a decode query into query rows (so SDPA need not
    # expand K/V) measured slower with 2 threads, and an additive float bias built once
    # per step no faster than the bool mask (benchmarks/attention_gather.py).
    return F.scaled_dot_product_attention(
        query.contiguous(),
        key,
        value,
        attn_mask=mask,
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )


def _softcapped_attention(query, key, value, mask, scaling, softcap):
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling or query.shape[-1] ** -0.5)
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.matmul(torch.softmax(scores.float(), dim=-1).to(query.dtype), value)


AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention)
