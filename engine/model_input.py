"""Host side of a step: turn the scheduler's decision into padded CPU tensors.

Rows are left-padded to a common query length, so the last column is every row's last
token and `logits_to_keep=1` yields exactly the logits to sample from. Padding tokens
write to the padding block (slot 0) and read only position 0, so they cannot disturb a
real sequence. The runner moves these tensors to the device (`prepare_*`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from engine.block_manager import PADDING_BLOCK_ID
from engine.scheduler import SchedulerOutput
from engine.shapes import StepShape

if TYPE_CHECKING:
    from engine.speculative.verify import VerifyInput


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

    def to(self, device: torch.device, num_rows: int) -> SamplingInput:
        """The first num_rows rows (the real ones), on device."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[:num_rows].to(device, non_blocking=True)

        return SamplingInput(
            temperature=move(self.temperature),
            top_k=move(self.top_k),
            top_p=move(self.top_p),
            repetition_penalty=move(self.repetition_penalty),
            seeds=move(self.seeds),
            counters=move(self.counters),
            history=move(self.history),
            num_logprobs=self.num_logprobs,
            want_logprobs=self.want_logprobs,
            is_all_greedy=self.is_all_greedy,
            needs_filters=self.needs_filters,
        )


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
    # A speculative verify step: the proposals to accept or reject (engine.speculative.verify).
    verify: VerifyInput | None = None


class FeedRow(NamedTuple):
    """One row of a step: token_ids fed at positions start, start + 1, ... of a sequence
    whose KV lives in block_table. A row of no tokens is padding."""

    token_ids: list[int]
    start: int
    block_table: list[int]


def build_model_input(sched: SchedulerOutput, block_size: int, shape: StepShape) -> ModelInput:
    """Rows past the scheduled ones, and columns left of each row's tokens, are padding."""
    rows = []
    for item in sched.scheduled:
        seq, start = item.seq, item.seq.num_computed_tokens
        rows.append(FeedRow(seq.token_ids[start : start + item.num_tokens], start, seq.block_table))
    return build_feed_input(
        sched.kind.value, rows, block_size, shape, build_sampling_input(sched, shape.batch_size)
    )


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
