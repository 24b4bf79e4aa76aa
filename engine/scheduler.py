"""Continuous batching: which sequences run in the next step, and how many tokens each.

Pure bookkeeping: never touches the device. Each step is either a prefill step (new or
resumed sequences, chunked to the token budget) or a decode step (one token for every
running sequence); prefill has priority, the way vLLM's default scheduler works, since
graph-mode accelerators want the two shapes apart. When blocks run out during decode
the most recently admitted sequence is preempted: its blocks are freed and it is
prefilled again later (recompute), which yields the same greedy output.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from engine.block_manager import BlockManager
from engine.sequence import Sequence, SequenceStatus


class StepKind(enum.Enum):
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(frozen=True)
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # tokens fed this step, starting at seq.num_computed_tokens

    @property
    def is_sampled(self) -> bool:
        """The chunk reaches the end of the sequence, so its last logits give a token."""
        return self.seq.num_computed_tokens + self.num_tokens == self.seq.num_tokens


@dataclass(frozen=True)
class SchedulerOutput:
    kind: StepKind
    scheduled: list[ScheduledSeq]

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
    ):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admitted, holding blocks, in admission order
        self.num_preemptions = 0

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def abort(self, seq: Sequence) -> None:
        """Drop seq wherever it is and free its blocks at once."""
        if seq in self.running:
            self.running.remove(seq)
            self.block_manager.free(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED

    def finish(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED

    def schedule(self) -> SchedulerOutput | None:
        return self._schedule_prefill() or self._schedule_decode()

    def _schedule_prefill(self) -> SchedulerOutput | None:
        budget = self.max_num_batched_tokens
        scheduled: list[ScheduledSeq] = []
        # Sequences part-way through a chunked prefill continue first.
        for seq in self.running:
            if budget == 0:
                break
            if seq.is_prefilling:
                n = min(seq.num_uncomputed_tokens, budget)
                scheduled.append(ScheduledSeq(seq, n))
                budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self.block_manager.can_allocate(seq):
                break
            self.waiting.popleft()
            self.block_manager.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            n = min(seq.num_uncomputed_tokens, budget)
            scheduled.append(ScheduledSeq(seq, n))
            budget -= n
        return SchedulerOutput(StepKind.PREFILL, scheduled) if scheduled else None

    def _schedule_decode(self) -> SchedulerOutput | None:
        scheduled: list[ScheduledSeq] = []
        for seq in list(self.running):
            if seq not in self.running:  # preempted below to make room for an earlier one
                continue
            while not self.block_manager.can_append(seq):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq in self.running:
                self.block_manager.append_slots(seq)
                scheduled.append(ScheduledSeq(seq, 1))
        return SchedulerOutput(StepKind.DECODE, scheduled) if scheduled else None

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
