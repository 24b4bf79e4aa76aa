"""Architectures and optimiser settings of the two bundled models, as frozen recipes."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import LlamaConfig

SEQ_LEN_TOKENS = 256
MAX_POSITION_EMBEDDINGS = 2048
ROPE_THETA = 10_000.0


@dataclass(frozen=True)
class ModelRecipe:
    """One model: its Llama shape and how long / how hard to train it.

    ``distill_weight`` mixes the loss: ``(1 - w) * cross_entropy + w * KL(teacher || student)``,
    with the already trained target as the teacher; 0 trains on the data alone.
    """

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_steps: int
    num_seqs_per_batch: int
    peak_lr: float
    num_warmup_steps: int
    distill_weight: float = 0.0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_tokens_per_step(self) -> int:
        return self.num_seqs_per_batch * SEQ_LEN_TOKENS

    def build_config(self, vocab_size: int, bos_token_id: int, pad_token_id: int) -> LlamaConfig:
        """The transformers config; BOS and EOS are the same ``<|endoftext|>`` id."""
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            max_position_embeddings=MAX_POSITION_EMBEDDINGS,
            rope_theta=ROPE_THETA,
            tie_word_embeddings=True,
            bos_token_id=bos_token_id,
            eos_token_id=bos_token_id,
            pad_token_id=pad_token_id,
        )


# 5.48M parameters. 2 KV heads so tensor-parallel tests can shard it over 2 ranks.
TARGET = ModelRecipe(
    name="pycoder",
    hidden_size=256,
    num_layers=6,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=704,
    max_steps=1200,
    num_seqs_per_batch=8,
    peak_lr=2e-3,
    num_warmup_steps=80,
)

# 0.93M parameters, distilled from TARGET to raise greedy agreement (speculative acceptance).
DRAFT = ModelRecipe(
    name="pycoder-draft",
    hidden_size=128,
    num_layers=2,
    num_heads=2,
    num_kv_heads=2,
    intermediate_size=352,
    max_steps=700,
    num_seqs_per_batch=8,
    peak_lr=3e-3,
    num_warmup_steps=40,
    distill_weight=0.5,
)
