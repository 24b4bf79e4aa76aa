"""Host side of a verify step: its padded input, with the proposals as the step's
`TokenSelector`. Like engine.model_input, it builds CPU tensors; the runner moves them."""

from __future__ import annotations

import torch

from engine.messages import FeedRow, ModelInput
from engine.model_input import SamplingRow, build_feed_input, rows_sampling_input
from engine.sequence import Sequence
from engine.shapes import StepShape
from engine.speculative.verify import VerifyInput


def build_verify_input(
    seqs: list[Sequence],
    proposals: list[list[int]],
    draft_probs: torch.Tensor | None,
    shape: StepShape,
    block_size: int,
) -> ModelInput:
    """Row b feeds [last token, *proposals[b]] at positions num_tokens - 1 onwards,
    left-padded to shape.query_len = k + 1 columns.

    draft_probs: [len(seqs), >= max proposals, vocab] (device) or None (n-gram).
    """
    k = shape.query_len - 1
    rows = [
        FeedRow([seq.token_ids[-1], *drafts], seq.num_tokens - 1, seq.block_table)
        for seq, drafts in zip(seqs, proposals, strict=True)
    ]
    draft_ids = torch.zeros((len(seqs), k), dtype=torch.long)
    for b, drafts in enumerate(proposals):
        draft_ids[b, : len(drafts)] = torch.tensor(drafts, dtype=torch.long)
    if draft_probs is not None:
        # Pad the proposal dimension to k; padded entries are never read (n <= width).
        extra = k - draft_probs.shape[1]
        draft_probs = torch.nn.functional.pad(draft_probs, (0, 0, 0, extra), value=1.0)
    flat = [
        SamplingRow(seq, drafts[:j], j)
        for seq, drafts in zip(seqs, proposals, strict=True)
        for j in range(k + 1)
    ]
    verify = VerifyInput(
        draft_token_ids=draft_ids,
        num_draft_tokens=torch.tensor([len(d) for d in proposals], dtype=torch.long),
        draft_probs=draft_probs,
        sampling=rows_sampling_input(flat, len(flat)),
    )
    per_row = rows_sampling_input([SamplingRow(seq, [], 0) for seq in seqs], shape.batch_size)
    inp = build_feed_input("decode", rows, block_size, shape, per_row)
    inp.selector = verify
    return inp
