"""Host side of a step: turn the scheduler's decision into padded CPU tensors.

Rows are left-padded to a common query length, so the last column is every row's last
token and `logits_to_keep=1` yields exactly the logits to sample from. Padding tokens
write to the padding block (slot 0) and read only position 0, so they cannot disturb a
real sequence. The runner moves these tensors to the device (`prepare_*`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.block_manager import PADDING_BLOCK_ID
from engine.scheduler import SchedulerOutput
from engine.shapes import StepShape


@dataclass
class SamplingInput:
    """Per-row sampling parameters, [batch] each (history: [batch, max_len], -1 padded)."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    repetition_penalty: torch.Tensor
    seeds: torch.Tensor
    counters: torch.Tensor  # how many tokens the row's request has generated so far
    history: torch.Tensor | None
    num_logprobs: int  # the largest top-n asked in the batch; 0 = none
    want_logprobs: bool
    is_all_greedy: bool
    needs_filters: bool  # any top-k / top-p


@dataclass
class ModelInput:
    kind: str  # "prefill" | "decode"
    input_ids: torch.Tensor  # [batch, query_len]
    positions: torch.Tensor  # [batch, query_len]
    slot_mapping: torch.Tensor  # [batch * query_len]
    block_tables: torch.Tensor  # [batch, num_blocks]
    sampling: SamplingInput
    num_seqs: int  # real rows; rows past it are padding
    shape: StepShape


def build_model_input(sched: SchedulerOutput, block_size: int, shape: StepShape) -> ModelInput:
    """Rows past the scheduled ones, and columns left of each row's tokens, are padding."""
    batch, q_len, num_blocks = shape.batch_size, shape.query_len, shape.num_blocks
    input_ids = [[0] * q_len for _ in range(batch)]
    positions = [[0] * q_len for _ in range(batch)]
    slots = [[0] * q_len for _ in range(batch)]
    tables = [[PADDING_BLOCK_ID] * num_blocks for _ in range(batch)]
    for row, item in enumerate(sched.scheduled):
        seq, n = item.seq, item.num_tokens
        start = seq.num_computed_tokens
        pad = q_len - n
        input_ids[row][pad:] = seq.token_ids[start : start + n]
        positions[row][pad:] = range(start, start + n)
        table = seq.block_table
        slots[row][pad:] = [
            table[p // block_size] * block_size + p % block_size for p in range(start, start + n)
        ]
        tables[row][: len(table)] = table[:num_blocks]
    return ModelInput(
        kind=sched.kind.value,
        input_ids=torch.tensor(input_ids, dtype=torch.long),
        positions=torch.tensor(positions, dtype=torch.long),
        slot_mapping=torch.tensor(slots, dtype=torch.long).view(-1),
        block_tables=torch.tensor(tables, dtype=torch.long),
        sampling=build_sampling_input(sched, batch),
        num_seqs=len(sched.scheduled),
        shape=shape,
    )


def build_sampling_input(sched: SchedulerOutput, batch: int) -> SamplingInput:
    seqs = [item.seq for item in sched.scheduled]
    pad = batch - len(seqs)
    params = [s.params for s in seqs]
    penalties = [p.repetition_penalty for p in params]
    history = None
    if any(r != 1.0 for r in penalties):
        width = max(s.num_tokens for s in seqs)
        history = torch.full((batch, width), -1, dtype=torch.long)
        for row, s in enumerate(seqs):
            if s.params.repetition_penalty != 1.0:
                history[row, : s.num_tokens] = torch.tensor(s.token_ids, dtype=torch.long)
    logprobs = [p.logprobs for p in params if p.logprobs is not None]
    return SamplingInput(
        temperature=torch.tensor([p.temperature for p in params] + [0.0] * pad),
        top_k=torch.tensor([p.top_k for p in params] + [0] * pad, dtype=torch.long),
        top_p=torch.tensor([p.top_p for p in params] + [1.0] * pad),
        repetition_penalty=torch.tensor(penalties + [1.0] * pad),
        seeds=torch.tensor([s.seed for s in seqs] + [0] * pad, dtype=torch.long),
        counters=torch.tensor([s.num_output_tokens for s in seqs] + [0] * pad, dtype=torch.long),
        history=history,
        num_logprobs=max(logprobs, default=0),
        want_logprobs=bool(logprobs),
        is_all_greedy=all(p.temperature == 0.0 for p in params),
        needs_filters=any(p.top_k > 0 or p.top_p < 1.0 for p in params),
    )


def dummy_model_input(shape: StepShape) -> ModelInput:
    """An all-padding step of `shape` (warmup and graph capture): reads and writes only
    the padding block, and samples greedily."""
    from engine.scheduler import StepKind

    empty = SchedulerOutput(StepKind(shape.kind), [])
    inp = build_model_input(empty, 1, shape)
    inp.num_seqs = shape.batch_size
    return inp
