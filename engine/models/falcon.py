"""Falcon over the paged KV cache.

transformers' FalconAttention does not call the AttentionInterface (it has its own eager,
SDPA and flash paths), and the `paged` forward kwarg never reaches it: FalconForCausalLM,
FalconModel and FalconDecoderLayer pass no extra kwargs down. So:

- importing this module registers `PagedFalconAttention` as Falcon's attention class for
  attn_implementation "gaudi_paged" (transformers looks the class up by that name when it
  builds a FalconDecoderLayer, and has none for it);
- `patch_model` makes every Falcon attention layer a `PagedFalconAttention` (no new
  parameters: names and checkpoints are unchanged) and puts a forward pre-hook on the whole
  model that hands the step's PagedMetadata to them.

The attention splits the fused query_key_value as transformers does, but keeps only the
model's KV heads (`num_kv_heads`: one for multi-query, one per group for the new decoder
architecture): the cache holds no broadcast copies. Falcon's config names that count its
own way, and the engine sizes the KV cache by `num_key_value_heads` (engine.loader.KVSpec):
`unsupported_features`, the family's config hook, which runs when a Falcon config is
loaded (and so imports this module, registering the attention class, before any Falcon
model is built), sets it, refusing a config.json that states a different one.

Rotary models use the position embeddings FalconModel computes from the step's
positions; ALiBi models (`alibi=true`, e.g. falcon-rw) add transformers' own bias
(`build_alibi_tensor`: a per-head slope times the key's position, rounded through
bfloat16 as transformers rounds it) over sqrt(head_dim) to the scores, as transformers'
SDPA path does. With "gaudi_paged", FalconModel builds no causal mask (transformers has no
mask function for it) and no cache; every shape comes from the step's bucket.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.distributed as dist
from transformers.models.falcon import modeling_falcon
from transformers.models.falcon.modeling_falcon import (
    FalconAttention,
    apply_rotary_pos_emb,
    build_alibi_tensor,
)

from engine import family_features
from engine.attention import ATTN_IMPLEMENTATION, PagedMetadata, paged_attention
from engine.family_features import shared_unsupported_features

__all__ = ["PagedFalconAttention", "num_kv_heads", "patch_model", "unsupported_features"]


def num_kv_heads(config: Any) -> int:
    """The KV heads transformers' FalconAttention computes: `num_kv_heads` groups in the new
    decoder architecture (40B, 180B); one for multi-query (7B), else one per query head."""
    if config.new_decoder_architecture:
        return config.num_kv_heads
    return 1 if config.multi_query else config.num_attention_heads


def unsupported_features(config: Any) -> list[str]:
    """The shared checks but ALiBi (`alibi=true`, implemented here); sets the config's
    `num_key_value_heads` to `num_kv_heads(config)`, or refuses a different stated one."""
    reasons = [r for r in shared_unsupported_features(config) if r != family_features.alibi(config)]
    kv_heads = num_kv_heads(config)
    stated = getattr(config, "num_key_value_heads", None)
    if stated is not None and stated != kv_heads:
        reasons.append(
            f"num_key_value_heads={stated} disagrees with new_decoder_architecture="
            f"{config.new_decoder_architecture}, multi_query={config.multi_query}, "
            f"num_kv_heads={config.num_kv_heads} and num_attention_heads="
            f"{config.num_attention_heads} (the attention uses {kv_heads} KV heads); set "
            f"num_key_value_heads to {kv_heads} or remove it from config.json"
        )
    else:
        config.num_key_value_heads = kv_heads
    return reasons


class PagedStep:
    """The running step's inputs, shared by one model's Falcon attention layers: set by a
    forward pre-hook on the whole model, cleared when its forward returns (or raises)."""

    def __init__(self) -> None:
        self.paged: PagedMetadata | None = None
        self.alibi_mask: torch.Tensor | None = None  # built by the first layer that needs it

    def begin(self, module, args, kwargs) -> None:
        self.paged = kwargs.get("paged")
        self.alibi_mask = None

    def end(self, module, args, output) -> None:
        self.paged = None
        self.alibi_mask = None


class PagedFalconAttention(FalconAttention):
    """FalconAttention whose forward runs over the paged KV cache (engine.attention)."""

    step: PagedStep | None = None

    def forward(
        self,
        hidden_states: torch.Tensor,
        alibi: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None = None,
        layer_past=None,
        use_cache: bool = False,
        output_attentions: bool = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        paged = self.step.paged if self.step is not None else None
        if paged is None:
            raise RuntimeError(
                f"attn_implementation={ATTN_IMPLEMENTATION!r}: Falcon attention needs the "
                "`paged` forward kwarg on a model patched by engine.models.falcon.patch_model; "
                "run the model through engine.ModelRunner"
            )
        batch, query_len, _ = hidden_states.shape
        query, key, value = self._split_kv_heads(self.query_key_value(hidden_states))
        if self.config.alibi:
            paged = dataclasses.replace(paged, mask=self._alibi_mask(paged, query.dtype))
        else:
            cos, sin = position_embeddings
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
        # NOTE: scaling None is SDPA's default 1/sqrt(head_dim), as transformers' SDPA path.
        out, _ = paged_attention(self, query, key, value, None, scaling=None, paged=paged)
        out = out.reshape(batch, query_len, self.num_heads * self.head_dim)
        return self.dense(out), None

    def _split_kv_heads(
        self, fused_qkv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """query [batch, heads, seq, head_dim]; key, value [batch, kv_heads, seq, head_dim]
        with the model's own KV heads (transformers broadcasts the new architecture's to
        every query head: query head h uses KV group h // (heads / kv_heads) either way)."""
        batch, seq, _ = fused_qkv.shape
        if self.new_decoder_architecture:
            groups = self.num_heads // self.num_kv_heads
            qkv = fused_qkv.view(batch, seq, self.num_kv_heads, groups + 2, self.head_dim)
            query = qkv[:, :, :, :-2].flatten(2, 3)
            key, value = qkv[:, :, :, -2], qkv[:, :, :, -1]
        elif self.multi_query:
            qkv = fused_qkv.view(batch, seq, self.num_heads + 2, self.head_dim)
            query, key, value = qkv[:, :, :-2], qkv[:, :, -2:-1], qkv[:, :, -1:]
        else:
            qkv = fused_qkv.view(batch, seq, self.num_heads, 3, self.head_dim)
            query, key, value = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
        return query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)

    def _alibi_mask(self, paged: PagedMetadata, dtype: torch.dtype) -> torch.Tensor:
        """The step's additive mask [batch, heads, query_len, context]: transformers' ALiBi
        bias of each context key (its position is its index in the gathered context) over
        sqrt(head_dim), and dtype's minimum where the causal mask hides the key. Built once
        per step; SDPA adds a float mask to the scores."""
        if self.step.alibi_mask is None:
            context_len = paged.mask.shape[-1]
            num_heads = self.config.num_attention_heads  # every rank's, for the slopes
            ones = torch.ones(1, context_len, dtype=torch.long, device=paged.mask.device)
            bias = build_alibi_tensor(ones, num_heads, dtype).view(1, num_heads, 1, context_len)
            first = _tp_rank() * self.num_heads  # this rank's heads are a contiguous range
            bias = bias[:, first : first + self.num_heads] / math.sqrt(self.head_dim)
            self.step.alibi_mask = bias.masked_fill(~paged.mask, torch.finfo(dtype).min)
        return self.step.alibi_mask


def _tp_rank() -> int:
    # NOTE: a tensor-parallel group is the whole process group (sharding.dist).
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def patch_model(model: torch.nn.Module) -> torch.nn.Module:
    """Run `model`'s Falcon attention over the paged KV cache (see the module docstring);
    returns the model itself, its parameters unchanged."""
    step = PagedStep()
    for module in model.modules():
        if isinstance(module, FalconAttention):
            module.__class__ = PagedFalconAttention
            module.step = step
    model.register_forward_pre_hook(step.begin, with_kwargs=True)
    model.register_forward_hook(step.end, always_call=True)
    return model


# transformers builds FalconDecoderLayer.self_attention by attn_implementation.
modeling_falcon.FALCON_ATTENTION_CLASSES[ATTN_IMPLEMENTATION] = PagedFalconAttention
