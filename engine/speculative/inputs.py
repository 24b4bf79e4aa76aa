"""Host side of speculative steps: per-row sampling parameters and the verify step's padded
input. Like engine.model_input, it builds CPU tensors; the runner moves them."""

from __future__ import annotations

from typing import NamedTuple

import torch

from engine.model_input import FeedRow, ModelInput, SamplingInput, build_feed_input
from engine.sequence import Sequence
from engine.shapes import StepShape
from engine.speculative.verify import VerifyInput


class SamplingRow(NamedTuple):
    """One sampled position: seq's parameters, with `extra` tokens after seq's own (the
    proposals before this position) and the counter advanced by `offset`."""

    seq: Sequence
    extra: list[int]
    offset: int


def rows_sampling_input(
    rows: list[SamplingRow], batch: int, history_slack: int = 0
) -> SamplingInput:
    """SamplingInput of `rows` padded to `batch` rows (greedy padding). The repetition
    penalty's history (if any row has one) gets history_slack spare columns (-1) for
    tokens the caller appends on the device."""
    pad = batch - len(rows)
    params = [r.seq.params for r in rows]
    penalties = [p.repetition_penalty for p in params]
    history = None
    if any(p != 1.0 for p in penalties):
        width = max(r.seq.num_tokens + len(r.extra) for r in rows) + history_slack
        history = torch.full((batch, width), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            if r.seq.params.repetition_penalty != 1.0:
                tokens = r.seq.token_ids + r.extra
                history[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    logprobs = [p.logprobs for p in params if p.logprobs is not None]
    counters = [r.seq.num_output_tokens + r.offset for r in rows]
    return SamplingInput(
        temperature=torch.tensor([p.temperature for p in params] + [0.0] * pad),
        top_k=torch.tensor([p.top_k for p in params] + [0] * pad, dtype=torch.long),
        top_p=torch.tensor([p.top_p for p in params] + [1.0] * pad),
        repetition_penalty=torch.tensor(penalties + [1.0] * pad),
        seeds=torch.tensor([r.seq.seed for r in rows] + [0] * pad, dtype=torch.long),
        counters=torch.tensor(counters + [0] * pad, dtype=torch.long),
        history=history,
        num_logprobs=max(logprobs, default=0),
        want_logprobs=bool(logprobs),
        is_all_greedy=all(p.temperature == 0.0 for p in params),
        needs_filters=any(p.top_k > 0 or p.top_p < 1.0 for p in params),
    )


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
    inp.verify = verify
    return inp
