"""Continuous batching: which sequences run in the next step, and how many tokens each.

Pure bookkeeping: never touches the device. Each step is either a prefill step (new or
resumed sequences, chunked to the token budget) or a decode step (one token for every
running sequence); prefill has priority, the way vLLM's default scheduler works, since
graph-mode accelerators want the two shapes apart. When blocks run out during decode
the most recently admitted sequence is preempted: its blocks are freed and it is
prefilled again later (recompute), which yields the same greedy output.

A prefill step must fit a warmed bucket: rows x padded query length within the token
budget (`StepShaper.max_prefill_len`). Long prompts are chunked to fit; a row that would
push the step past every bucket waits for the next step.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from engine.block_manager import BlockManager
from engine.sequence import Sequence, SequenceStatus
from engine.shapes import StepShaper, check_covers

if TYPE_CHECKING:
    from engine.config import EngineConfig


class StepKind(enum.Enum):
    PREFILL = "prefill"
    DECODE = "decode"


class ScheduledSeq(NamedTuple):
    """One row of a step (a tuple: one is built per row per step)."""

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


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        shaper: StepShaper,
    ):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.shaper = shaper
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admitted, holding blocks, in admission order
        self.num_preemptions = 0

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_queued_prompt_tokens(self) -> int:
        """Tokens of accepted sequences not yet computed: the waiting ones' and the rest of
        those part-way through a chunked prefill."""
        # list(): one C-level copy, so a step on another thread cannot change it mid-sum.
        waiting = sum(seq.num_uncomputed_tokens for seq in list(self.waiting))
        running = list(self.running)
        return waiting + sum(s.num_uncomputed_tokens for s in running if s.is_prefilling)

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

    def schedule(self, num_lookahead_tokens: int = 0) -> SchedulerOutput | None:
        """The next step. num_lookahead_tokens: query tokens each decode row may feed past
        its next one (the step strategy's choice): a decode step reserves slots for them
        where free blocks allow, never preempting; the engine trims what a row left."""
        return self._schedule_prefill() or self._schedule_decode(num_lookahead_tokens)

    def _schedule_prefill(self) -> SchedulerOutput | None:
        scheduled: list[ScheduledSeq] = []
        max_len = 0

        def room() -> int:
            """Longest chunk the next row may have, or 0 if no bucket takes another row."""
            limit = self.shaper.max_prefill_len(len(scheduled) + 1)
            return limit if limit >= max_len else 0

        def take(seq: Sequence, limit: int) -> None:
            nonlocal max_len
            n = min(seq.num_uncomputed_tokens, limit)
            scheduled.append(ScheduledSeq(seq, n))
            max_len = max(max_len, n)

        # Sequences part-way through a chunked prefill continue first.
        for seq in self.running:
            if seq.is_prefilling:
                if not (limit := room()):
                    break
                take(seq, limit)
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not (limit := room()) or not self.block_manager.can_allocate(seq):
                break
            self.waiting.popleft()
            self.block_manager.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            take(seq, limit)
        return SchedulerOutput(StepKind.PREFILL, scheduled) if scheduled else None

    def _schedule_decode(self, num_lookahead_tokens: int = 0) -> SchedulerOutput | None:
        scheduled: list[ScheduledSeq] = []
        running = self.running
        # Preemption takes the last running sequence, so the rows preempted below form a
        # tail of this list: row k still runs while k < len(running).
        for k, seq in enumerate(list(running)):
            if k >= len(running):  # preempted to make room for an earlier one
                break
            while not self.block_manager.can_append(seq):
                victim = running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if k < len(running):
                self.block_manager.append_slots(seq)
                scheduled.append(ScheduledSeq(seq, 1))
        # Lookahead only after every row has its one slot, so it never causes a preemption.
        for item in scheduled if num_lookahead_tokens else ():
            self.block_manager.reserve_slots(item.seq, item.seq.num_tokens + num_lookahead_tokens)
        return SchedulerOutput(StepKind.DECODE, scheduled) if scheduled else None

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)


def step_shaper(config: EngineConfig) -> StepShaper:
    """The StepShaper of an engine of `config`, checked to cover its max_model_len."""
    shaper = StepShaper(config.bucket_config(), config.block_size)
    check_covers(shaper, config.max_model_len)
    return shaper


def build_scheduler(config: EngineConfig, shaper: StepShaper, num_blocks: int) -> Scheduler:
    """The scheduler, over a block manager of num_blocks KV blocks, that an engine of
    `config` runs (the engine and the fleet simulator build theirs here)."""
    block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
    return Scheduler(block_manager, config.max_num_seqs, shaper)
