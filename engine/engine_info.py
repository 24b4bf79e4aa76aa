"""EngineInfo: what one engine serves, as resolved when it loaded (`AsyncEngine.info()`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EngineInfo:
    """The model an engine loaded, its limits and its tokenizer's special tokens.

    device: as configured (a server passes the resolved name; "auto" is possible offline).
    dtype: the KV cache's dtype name ("float32", "bfloat16", ...), or "auto" when the
        executor does not say.
    eos_token_ids: every id that ends a request (generation config, tokenizer, model config).
    chat_template: the tokenizer's chat template; None when it has none (or no tokenizer).
    """

    model_path: Path
    device: str
    dtype: str
    tp_size: int
    max_model_len: int
    max_num_seqs: int
    vocab_size: int
    bos_token_id: int | None
    eos_token_ids: frozenset[int]
    special_token_ids: frozenset[int]
    chat_template: str | None
