"""Attention over the paged KV cache, registered with transformers' AttentionInterface.

Hugging Face model classes run unchanged: they compute q/k/v and RoPE and call the
registered function with the extra forward kwarg `paged` (a PagedMetadata). We write the
step's keys/values into the cache at `slot_mapping`, gather every sequence's context
through its block table, and run SDPA with a mask built once per step.
Every shape here is fixed by the step's bucket; there is no data-dependent op.

Measured on CPU (benchmarks/RESULTS.md, "Attention gather"): the context gather is an
`index_select` over the flattened block table, not `cache[block_tables]` (advanced indexing
is 1.5-7x slower for the same copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

ATTN_IMPLEMENTATION = "gaudi_paged"


@dataclass
class PagedMetadata:
    """Per-step inputs of the paged attention, shared by every layer.

    kv_caches: per layer (k_cache, v_cache), each [num_blocks, block_size, kv_heads, head_dim]
    slot_mapping: [batch * query_len] flat cache slot of each fed token (padding -> slot 0)
    block_tables: [batch, max_blocks] block ids (padding -> block 0)
    positions: [batch, query_len] absolute position of each fed token (padding -> 0)
    mask: [batch, 1, query_len, max_blocks * block_size] bool, True = may attend
    """

    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor

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
    k_flat.index_copy_(
        0, paged.slot_mapping, key.transpose(1, 2).reshape(-1, num_kv_heads, head_dim)
    )
    v_flat.index_copy_(
        0, paged.slot_mapping, value.transpose(1, 2).reshape(-1, num_kv_heads, head_dim)
    )
    # context: [batch, kv_heads, max_blocks * block_size, head_dim] (a strided view)
    blocks = paged.block_tables.reshape(-1)
    k_ctx = k_cache.index_select(0, blocks).view(batch, -1, num_kv_heads, head_dim).transpose(1, 2)
    v_ctx = v_cache.index_select(0, blocks).view(batch, -1, num_kv_heads, head_dim).transpose(1, 2)
    mask = paged.mask
    if sliding_window is not None and sliding_window < mask.shape[-1]:
        mask = mask & paged.window_mask(sliding_window)
    if softcap is not None:
        out = _softcapped_attention(query, k_ctx, v_ctx, mask, scaling, softcap)
    else:
        out = _sdpa(query, k_ctx, v_ctx, mask, scaling)
    return out.transpose(1, 2).contiguous(), None


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
