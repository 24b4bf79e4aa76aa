"""A model's dimensions as the planner needs them, read from config.json alone (no
weights): layers, heads, KV heads, head_dim, FFN, vocab, experts, tied embeddings, and the
parameter count computed from them (Falcon's multi-query / new-decoder-architecture quirks,
StarCoder's multi-query and n_inner, the two-matrix MLPs and Mixtral's experts included)."""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass
from typing import Any

from engine.families import FAMILIES

__all__ = ["ModelSpec"]

# transformers' per-class default for tie_word_embeddings when config.json omits it: the
# engine's families (engine.families), and families the planner sizes before the engine
# runs them; the base PretrainedConfig default (True) applies to every other model_type.
_TIED_DEFAULTS = {
    **{model_type: family.is_tied_by_default for model_type, family in FAMILIES.items()},
    "mixtral": False,
}


# Families whose MLP is two matrices (up, down: Falcon's dense_h_to_4h/dense_4h_to_h,
# StarCoder's and StarCoder2's c_fc/c_proj, Phi-2's fc1/fc2), not Llama's gate/up/down.
_UNGATED_MLP = frozenset({"falcon", "starcoder2", "gpt_bigcode", "phi"})


@dataclass(frozen=True)
class ModelSpec:
    """The dimensions of a decoder-only transformer that decide its memory, from config.json.

    intermediate_size is per expert for MoE models (num_experts > 1). is_gated_mlp: three
    matrices per MLP (Llama-style gate/up/down) rather than two (Falcon's up/down).
    """

    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    is_tied_embeddings: bool
    is_gated_mlp: bool = True
    num_experts: int = 1
    num_experts_per_tok: int = 1
    max_position_embeddings: int | None = None
    # The config's own model_type when the dimensions come from its text_config (a
    # multimodal model: the family whose rules apply, e.g. tensor parallelism's); else None.
    family_type: str | None = None

    def __post_init__(self) -> None:
        if self.num_kv_heads < 1 or self.num_attention_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )

    @classmethod
    def from_config(cls, config: dict[str, Any], name: str | None = None) -> ModelSpec:
        """Read a Hugging Face config dict (Llama, Mistral, Mixtral, Qwen2, Falcon, ...; a
        multimodal one through its text_config)."""
        family_type = None
        if "text_config" in config and "num_hidden_layers" not in config:
            family_type = str(config.get("model_type", "unknown"))
            config = config["text_config"]
        if "moe_intermediate_size" in config:
            raise ValueError(
                "config has moe_intermediate_size (shared/fine-grained experts); the planner "
                "supports dense models and Mixtral-style MoE only"
            )
        model_type = str(config.get("model_type", "unknown"))
        num_heads = _int(config, "num_attention_heads", "n_head")
        hidden_size = _int(config, "hidden_size", "n_embd")
        if config.get("head_dim"):
            head_dim = int(config["head_dim"])
        elif hidden_size % num_heads == 0:
            head_dim = hidden_size // num_heads
        else:
            raise ValueError(
                f"hidden_size={hidden_size} is not a multiple of num_attention_heads="
                f"{num_heads}, and config.json has no head_dim"
            )
        is_falcon = model_type == "falcon"
        if is_falcon:
            num_kv_heads = _falcon_kv_heads(config, num_heads)
        elif model_type == "gpt_bigcode":
            num_kv_heads = _gpt_bigcode_kv_heads(config, num_heads)
        else:
            num_kv_heads = _kv_heads(config)
        return cls(
            name=name or str(config.get("_name_or_path") or model_type),
            model_type=model_type,
            num_layers=_int(config, "num_hidden_layers", "n_layer"),
            hidden_size=hidden_size,
            num_attention_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            intermediate_size=(
                int(config.get("ffn_hidden_size") or 4 * hidden_size)
                if is_falcon
                else int(config.get("n_inner") or 4 * hidden_size)
                if model_type == "gpt_bigcode"
                else _int(config, "intermediate_size")
            ),
            vocab_size=_int(config, "vocab_size"),
            is_tied_embeddings=bool(
                config.get("tie_word_embeddings", _TIED_DEFAULTS.get(model_type, True))
            ),
            is_gated_mlp=model_type not in _UNGATED_MLP,
            num_experts=int(config.get("num_local_experts") or 1),
            num_experts_per_tok=int(config.get("num_experts_per_tok") or 1),
            max_position_embeddings=config.get(
                "max_position_embeddings", config.get("n_positions")
            ),
            family_type=family_type,
        )

    @classmethod
    def from_path(cls, path: str | pathlib.Path) -> ModelSpec:
        """Read ``path``: a config.json file or a model directory holding one."""
        path = pathlib.Path(path)
        config_path = path / "config.json" if path.is_dir() else path
        if not config_path.is_file():
            raise FileNotFoundError(f"model: no config.json at {config_path}")
        name = (path if path.is_dir() else path.parent).name
        return cls.from_config(json.loads(config_path.read_text()), name=name)

    @property
    def num_block_linear_params(self) -> int:
        """Attention and MLP weight matrices of all decoder blocks (what fp8 quantizes)."""
        q_and_o = 2 * self.hidden_size * self.num_attention_heads * self.head_dim
        k_and_v = 2 * self.hidden_size * self.num_kv_heads * self.head_dim
        num_mlp_matrices = 3 if self.is_gated_mlp else 2
        mlp = num_mlp_matrices * self.hidden_size * self.intermediate_size * self.num_experts
        return self.num_layers * (q_and_o + k_and_v + mlp)

    @property
    def num_embedding_params(self) -> int:
        """Input embedding plus lm_head (one matrix when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.is_tied_embeddings else 2)

    @property
    def num_router_params(self) -> int:
        """MoE routers: one [experts, hidden] matrix per layer (0 for a dense model)."""
        return self.num_layers * self.num_experts * self.hidden_size if self.num_experts > 1 else 0

    @property
    def num_params(self) -> int:
        """Every weight matrix: blocks, routers, embeddings (norms left out: under 0.01%)."""
        return self.num_block_linear_params + self.num_router_params + self.num_embedding_params

    @property
    def num_active_params(self) -> int:
        """Parameters one token passes through: for MoE, its experts_per_tok experts' MLPs
        only (Mixtral-8x7B: 12.9 B of 46.7 B); num_params for a dense model."""
        num_mlp_matrices = 3 if self.is_gated_mlp else 2
        idle_experts = self.num_experts - min(self.num_experts_per_tok, self.num_experts)
        idle = self.num_layers * num_mlp_matrices * self.hidden_size * self.intermediate_size
        return self.num_params - idle * idle_experts

    @property
    def ffn_per_token(self) -> int:
        """MLP width one token passes through (MoE: its experts_per_tok experts)."""
        return self.intermediate_size * min(self.num_experts_per_tok, self.num_experts)


def _int(config: dict[str, Any], *keys: str) -> int:
    for key in keys:
        if config.get(key) is not None:
            return int(config[key])
    raise ValueError(f"config.json lacks {' / '.join(keys)}")


def _kv_heads(config: dict[str, Any]) -> int:
    value = config.get("num_key_value_heads")
    return int(value) if value else _int(config, "num_attention_heads", "n_head")


def _gpt_bigcode_kv_heads(config: dict[str, Any], num_heads: int) -> int:
    # As transformers' GPTBigCodeAttention: multi-query (StarCoder: one KV head, the
    # default) or one KV head per query head; num_key_value_heads is never read.
    return 1 if config.get("multi_query", True) else num_heads


def _falcon_kv_heads(config: dict[str, Any], num_heads: int) -> int:
    # As transformers' FalconAttention: the new decoder architecture (40B, 180B) has
    # num_kv_heads groups; the old one is multi-query (7B: one KV head) or plain multi-head.
    if config.get("new_decoder_architecture"):
        return _int(config, "num_kv_heads", "n_head_kv")
    return 1 if config.get("multi_query", True) else num_heads
