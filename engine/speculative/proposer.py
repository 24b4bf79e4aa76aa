"""What every proposer gives the strategy: up to a budget of tokens per sequence."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

from engine.sequence import Sequence

NGRAM = "ngram"
DRAFT = "draft"


class Proposals(NamedTuple):
    """token_ids: per row, 0..budget proposed tokens. draft_probs: [rows, >= max proposals,
    vocab] the draft's distribution of each proposal (one-hot for an n-gram row), or None
    when a point mass is exact for every row (n-gram, or an all-greedy batch). sources:
    per row, NGRAM or DRAFT (whoever proposed; meaningless for rows without tokens)."""

    token_ids: list[list[int]]
    draft_probs: torch.Tensor | None
    sources: list[str]


class Proposer(Protocol):
    def propose(self, seqs: list[Sequence], budgets: list[int]) -> Proposals: ...

    def on_verified(self, seq: Sequence) -> None: ...

    def release(self, seq: Sequence) -> None: ...
