"""Prompt lookup first, the draft model where it falls short (method "hybrid").

Prompt lookup proposes for free and is often right in repetitive text (code, and the loops
small models fall into); the draft model costs k forwards but proposes everywhere. Each
row takes the n-gram proposal when it fills the row's whole budget, else the draft's, so a
batch pays for draft forwards only when some row needs them; with adaptive speculation
the rule also weighs n-gram proposals alone (engine.speculative.adaptive.choose_hybrid).
A row's n-gram proposal is a point mass: where the batch samples, its q rows are one-hot,
which makes the rejection rule exactly the n-gram one (accept with p(d), residual p
without d).
"""

from __future__ import annotations

import torch

from engine.sequence import Sequence
from engine.speculative.draft import DraftProposer
from engine.speculative.ngram import NgramProposer
from engine.speculative.proposer import DRAFT, NGRAM, Proposals


class HybridProposer:
    """The `Proposer` of method "hybrid" (see engine.speculative.strategy)."""

    def __init__(self, ngram: NgramProposer, draft: DraftProposer):
        self.ngram = ngram
        self.draft = draft

    def propose(
        self, seqs: list[Sequence], budgets: list[int], use_draft: bool = True
    ) -> Proposals:
        """Per row the n-gram proposal if it fills the budget, else the draft's; with
        use_draft=False (the adaptive rule found the draft not worth its cost) whatever
        the n-gram lookup finds, and no draft forward."""
        looked_up = self.ngram.propose(seqs, budgets).token_ids
        is_lookup = [len(p) == n > 0 for p, n in zip(looked_up, budgets, strict=True)]
        draft_budgets = [
            0 if hit or not use_draft else n for hit, n in zip(is_lookup, budgets, strict=True)
        ]
        drafted, q, _ = self.draft.propose(seqs, draft_budgets)
        if not use_draft:
            is_lookup = [True] * len(seqs)
        proposals = [
            p if hit else d for p, d, hit in zip(looked_up, drafted, is_lookup, strict=True)
        ]
        if q is not None and any(is_lookup):
            width = max(len(p) for p in proposals)
            q = torch.nn.functional.pad(q, (0, 0, 0, width - q.shape[1]), value=1.0)
            for row, (tokens, hit) in enumerate(zip(proposals, is_lookup, strict=True)):
                if hit:
                    q[row, : len(tokens)] = 0.0
                    index = torch.tensor(tokens, device=q.device)[:, None]
                    q[row, : len(tokens)].scatter_(1, index, 1.0)
        sources = [NGRAM if hit else DRAFT for hit in is_lookup]
        return Proposals(proposals, q, sources)

    def on_verified(self, seq: Sequence) -> None:
        self.draft.on_verified(seq)

    def release(self, seq: Sequence) -> None:
        self.draft.release(seq)
