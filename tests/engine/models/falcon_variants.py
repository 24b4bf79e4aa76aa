"""Tiny Falcon models of every attention layout, built as real config.json files carry them
(no `num_key_value_heads`: Falcon names its KV heads its own way)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import TINY_VOCAB

# name -> FalconConfig overrides. Four query heads of 16 dims; two layers.
VARIANTS = {
    # 40B/180B: num_kv_heads groups, q/k/v fused per group, parallel attention, 2 layernorms
    "new-arch-gqa": {"new_decoder_architecture": True, "num_kv_heads": 2},
    # ... with one layernorm shared by attention and MLP
    "new-arch-one-layernorm": {
        "new_decoder_architecture": True,
        "num_kv_heads": 2,
        "num_ln_in_parallel_attn": 1,
    },
    # 7B: one KV head, parallel attention
    "multi-query": {"multi_query": True},
    "multi-query-sequential-bias": {"multi_query": True, "parallel_attn": False, "bias": True},
    # q/k/v interleaved per head, one KV head per query head
    "multi-head": {"multi_query": False},
    "multi-head-sequential-bias": {"multi_query": False, "parallel_attn": False, "bias": True},
    # falcon-rw: ALiBi, multi-head, sequential attention, biases
    "alibi": {"alibi": True, "multi_query": False, "parallel_attn": False, "bias": True},
    # ALiBi with 6 heads (not a power of two: transformers' extra slopes) and multi-query
    "alibi-multi-query-6-heads": {
        "alibi": True,
        "multi_query": True,
        "num_attention_heads": 6,
        "hidden_size": 96,
    },
}

# variant -> KV heads the attention uses
KV_HEADS = {
    "new-arch-gqa": 2,
    "new-arch-one-layernorm": 2,
    "multi-query": 1,
    "multi-query-sequential-bias": 1,
    "multi-head": 4,
    "multi-head-sequential-bias": 4,
    "alibi": 4,
    "alibi-multi-query-6-heads": 1,
}


def falcon_config(**overrides):
    from transformers import FalconConfig

    kwargs = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        ffn_hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return FalconConfig(**kwargs)


def save_falcon(out: Path, **overrides) -> Path:
    """A random tiny Falcon (fixed seed) saved to `out`."""
    from transformers import FalconForCausalLM

    torch.manual_seed(1234)
    FalconForCausalLM(falcon_config(**overrides)).save_pretrained(out)
    return out
