"""Slots for proposals: a decode step reserves lookahead slots only from free blocks (never
preempting for them), and rollback returns the unused blocks first in line for reuse."""

from __future__ import annotations

from engine.block_manager import BlockManager
from engine.buckets import BucketConfig
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, StepKind
from engine.sequence import Sequence
from engine.shapes import StepShaper

BLOCK = 4


def make_scheduler(num_blocks: int) -> Scheduler:
    buckets = BucketConfig.from_limits(
        max_num_seqs=4, max_model_len=64, block_size=BLOCK, max_num_batched_tokens=16
    )
    return Scheduler(BlockManager(num_blocks, BLOCK), 4, StepShaper(buckets, BLOCK))


def prefilled(sched: Scheduler, lengths: list[int]) -> list[Sequence]:
    """Admit and prefill sequences, appending one sampled token to each."""
    seqs = [
        Sequence(f"r{i}", list(range(1, n + 1)), SamplingParams(), 0) for i, n in enumerate(lengths)
    ]
    for s in seqs:
        sched.add(s)
    while (out := sched.schedule()) is not None and out.kind is StepKind.PREFILL:
        for item in out.scheduled:
            sampled = item.is_sampled
            item.seq.num_computed_tokens += item.num_tokens
            if sampled:
                item.seq.token_ids.append(7)
    for s in seqs:  # undo the decode step the loop's last schedule() made
        sched.block_manager.trim(s, s.num_tokens)
    return seqs


def test_lookahead_reserves_free_blocks_without_preempting():
    sched = make_scheduler(num_blocks=6)  # 5 usable blocks of 4 tokens
    a, b = prefilled(sched, [4, 4])  # 5 tokens each: 2 blocks each, 1 block free
    out = sched.schedule(num_lookahead_tokens=4)  # each would like blocks for 9 tokens
    assert out.kind is StepKind.DECODE and len(out.scheduled) == 2
    assert sched.num_preemptions == 0
    assert len(a.block_table) == 3 and len(b.block_table) == 2  # first come, first served
    assert sched.block_manager.num_free_blocks == 0


def test_rollback_frees_unused_blocks_for_reuse_first():
    sched = make_scheduler(num_blocks=16)
    (a,) = prefilled(sched, [4])
    bm = sched.block_manager
    sched.schedule(num_lookahead_tokens=8)  # slots for 13 tokens: 4 blocks
    assert len(a.block_table) == 4
    extra = a.block_table[-2:]
    bm.trim(a, a.num_tokens)  # nothing accepted: 5 tokens need 2 blocks
    assert len(a.block_table) == 2
    assert set(list(bm.free_blocks)[:2]) == set(extra)  # hashless blocks go first
    assert bm.num_free_blocks == bm.num_usable_blocks - 2
