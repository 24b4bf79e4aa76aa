"""Host side of a step: turn the scheduler's decision into padded CPU tensors (the message
types themselves live in engine.messages).

Rows are left-padded to a common query length, so the last column is every row's last
token and `logits_to_keep=1` yields exactly the logits to sample from. Padding tokens
write to the padding block (slot 0) and read only position 0, so they cannot disturb a
real sequence. The runner moves these tensors to the device (`prepare_*`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from engine.block_manager import PADDING_BLOCK_ID
from engine.messages import FeedRow, ModelInput, SamplingInput
from engine.scheduler import SchedulerOutput, StepKind
from engine.sequence import Sequence
from engine.shapes import StepShape, StepShaper


class SamplingRow(NamedTuple):
    """One sampled position: seq's parameters, with `extra` tokens after seq's own (the
    query tokens before this position) and the counter advanced by `offset`."""

    seq: Sequence
    extra: list[int]
    offset: int


def step_shape(sched: SchedulerOutput, shaper: StepShaper) -> StepShape:
    """The bucket of a scheduled step: each row feeds its scheduled tokens."""
    bs = shaper.block_size
    items = sched.scheduled
    max_blocks = max(-(-(s.seq.num_computed_tokens + s.num_tokens) // bs) for s in items)
    if sched.kind is StepKind.DECODE:
        return shaper.decode_shape(len(items), max_blocks)
    max_len = max(s.num_tokens for s in items)
    return shaper.prefill_shape(len(items), max_len, max_blocks)


def build_model_input(sched: SchedulerOutput, shaper: StepShaper) -> ModelInput:
    """The padded input of a scheduled step, at its bucket (`step_shape`)."""
    shape = step_shape(sched, shaper)
    rows = []
    for item in sched.scheduled:
        seq, start = item.seq, item.seq.num_computed_tokens
        rows.append(FeedRow(seq.token_ids[start : start + item.num_tokens], start, seq.block_table))
    sampling = rows_sampling_input(
        [SamplingRow(s.seq, [], 0) for s in sched.scheduled], shape.batch_size
    )
    return build_feed_input(sched.kind.value, rows, shaper.block_size, shape, sampling)


def build_feed_input(
    kind: str, rows: list[FeedRow], block_size: int, shape: StepShape, sampling: SamplingInput
) -> ModelInput:
    """Padded CPU tensors of `rows` at `shape`: rows are left-padded to shape.query_len and
    the batch is padded to shape.batch_size; padding reads and writes the padding block."""
    batch, q_len, num_blocks = shape.batch_size, shape.query_len, shape.num_blocks
    input_ids = [[0] * q_len for _ in range(batch)]
    positions = [[0] * q_len for _ in range(batch)]
    slots = [[0] * q_len for _ in range(batch)]
    tables = [[PADDING_BLOCK_ID] * num_blocks for _ in range(batch)]
    for row, (token_ids, start, table) in enumerate(rows):
        n = len(token_ids)
        if not n:
            continue
        pad = q_len - n
        input_ids[row][pad:] = token_ids
        positions[row][pad:] = range(start, start + n)
        slots[row][pad:] = [
            table[p // block_size] * block_size + p % block_size for p in range(start, start + n)
        ]
        tables[row][: len(table)] = table[:num_blocks]
    return ModelInput(
        kind=kind,
        input_ids=torch.tensor(input_ids, dtype=torch.long),
        positions=torch.tensor(positions, dtype=torch.long),
        slot_mapping=torch.tensor(slots, dtype=torch.long).view(-1),
        block_tables=torch.tensor(tables, dtype=torch.long),
        sampling=sampling,
        num_seqs=len(rows),
        shape=shape,
        num_tokens=sum(len(r.token_ids) for r in rows),
    )


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
                tokens = r.seq.token_ids + r.extra if r.extra else r.seq.token_ids
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


def dummy_model_input(shape: StepShape) -> ModelInput:
    """An all-padding step of `shape` (warmup and graph capture): reads and writes only
    the padding block, and samples greedily."""
    inp = build_feed_input(shape.kind, [], 1, shape, rows_sampling_input([], shape.batch_size))
    inp.num_seqs = shape.batch_size
    return inp
