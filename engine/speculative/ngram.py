"""Prompt-lookup (n-gram) proposals: no model, host-side only.

For each sequence, take its last n tokens (n from prompt_lookup_max down to
prompt_lookup_min), find their most recent earlier occurrence in the sequence's own tokens
(prompt and output so far) and propose the tokens that followed it. Code and documents
repeat identifiers and phrases, so the continuation of an earlier occurrence is often
right; when it is not, verification rejects it at no risk to the output.

>>> propose_ngram([1, 2, 3, 4, 1, 2], num_tokens=3, min_n=1, max_n=3)
[3, 4, 1]
>>> propose_ngram([5, 6, 7], num_tokens=3, min_n=1, max_n=3)  # no earlier occurrence
[]
"""

from __future__ import annotations

import torch

from engine.sequence import Sequence
from engine.speculative.proposer import NGRAM, Proposals


def propose_ngram(token_ids: list[int], num_tokens: int, min_n: int, max_n: int) -> list[int]:
    """Up to num_tokens tokens following the latest earlier match of the longest suffix
    n-gram (max_n .. min_n) of token_ids; [] when no suffix recurs."""
    length = len(token_ids)
    if num_tokens <= 0 or length < min_n + 1:
        return []
    tokens = torch.tensor(token_ids, dtype=torch.long)
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        # windows[i] = tokens[i : i + n], for every start before the suffix itself
        windows = tokens[:-1].unfold(0, n, 1)
        hits = (windows == tokens[-n:]).all(dim=1).nonzero()
        if hits.numel():
            start = int(hits[-1]) + n
            return token_ids[start : start + num_tokens]
    return []


class NgramProposer:
    """The `Proposer` of method "ngram" (see engine.speculative.strategy)."""

    def __init__(self, min_n: int, max_n: int):
        self.min_n = min_n
        self.max_n = max_n

    def propose(self, seqs: list[Sequence], budgets: list[int]) -> Proposals:
        """Per row at most budgets[b] tokens (fewer, or none, when no suffix recurs); no
        draft distribution (a point mass on each proposal)."""
        proposals = [
            propose_ngram(seq.token_ids, budget, self.min_n, self.max_n)
            for seq, budget in zip(seqs, budgets, strict=True)
        ]
        return Proposals(proposals, None, [NGRAM] * len(seqs))

    def on_verified(self, seq: Sequence) -> None:
        """Nothing to roll back: the proposer keeps no per-sequence state."""

    def release(self, seq: Sequence) -> None:
        """Nothing to free."""
