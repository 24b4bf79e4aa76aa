from __future__ import annotations

from engine.block_manager import BlockManager
from engine.buckets import BucketConfig
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, StepKind
from engine.sequence import Sequence
from engine.shapes import StepShaper

# Prefill buckets: lengths (4, 8, 16) x batches (1, 2, 4) within a 16-token budget, so
# max_prefill_len(batch) is 16 for 1 row, 8 for 2 rows, 4 for 3-4 rows.
BUDGET = 16


def make_scheduler(num_blocks=64, block_size=4, max_num_seqs=8, budget=BUDGET) -> Scheduler:
    buckets = BucketConfig.from_limits(
        max_num_seqs=max_num_seqs,
        max_model_len=64,
        block_size=block_size,
        max_num_batched_tokens=budget,
    )
    shaper = StepShaper(buckets, block_size)
    return Scheduler(BlockManager(num_blocks, block_size), max_num_seqs, shaper)


def seq(n: int, rid: str) -> Sequence:
    return Sequence(rid, list(range(1, n + 1)), SamplingParams(), seed=0)


def run_step(sched: Scheduler, token: int = 0, log: list | None = None):
    """Pretend the model ran: advance computed counts and append a token to sampled rows."""
    out = sched.schedule()
    for item in out.scheduled:
        sampled = item.is_sampled
        if log is not None:
            log.append((item.num_tokens, sampled))
        item.seq.num_computed_tokens += item.num_tokens
        if sampled:
            item.seq.token_ids.append(token)
    return out


def test_prefill_batches_fit_a_bucket_then_decode():
    sched = make_scheduler()
    for i, n in enumerate([4, 5, 6]):
        sched.add(seq(n, f"r{i}"))
    first = run_step(sched)
    # 2 rows of up to 8 fit; a third row would need (4 rows x 8) = 32 > 16 tokens.
    assert first.kind is StepKind.PREFILL
    assert [s.num_tokens for s in first.scheduled] == [4, 5]
    second = run_step(sched)
    assert [(s.seq.request_id, s.num_tokens) for s in second.scheduled] == [("r2", 6)]
    third = run_step(sched)
    assert third.kind is StepKind.DECODE and len(third.scheduled) == 3


def test_long_prompt_is_chunked_and_only_last_chunk_samples():
    sched = make_scheduler()
    s = seq(20, "long")
    sched.add(s)
    chunks = []
    while s.num_output_tokens == 0:
        run_step(sched, log=chunks)
    assert chunks == [(16, False), (4, True)]


def test_a_new_row_is_chunked_to_the_room_left():
    sched = make_scheduler()
    sched.add(seq(3, "short"))
    sched.add(seq(30, "long"))
    out = run_step(sched)
    assert [s.num_tokens for s in out.scheduled] == [3, 8]  # 2 rows: at most 8 each


def test_max_num_seqs_limits_admission():
    sched = make_scheduler(max_num_seqs=2)
    for i in range(3):
        sched.add(seq(3, f"r{i}"))
    out = run_step(sched)
    assert len(out.scheduled) == 2 and len(sched.waiting) == 1


def test_decode_preempts_latest_when_blocks_run_out():
    sched = make_scheduler(num_blocks=5, block_size=2)  # 4 usable blocks
    a, b = seq(3, "a"), seq(3, "b")
    sched.add(a)
    sched.add(b)
    run_step(sched)  # each: 3 prompt + 1 sampled = 4 tokens -> 2 blocks each, 0 free
    out = run_step(sched)  # decode: 4 tokens still fit 2 blocks
    assert out.kind is StepKind.DECODE
    out = run_step(sched)  # 5 tokens each -> 3 blocks: b is preempted for a
    assert [s.seq.request_id for s in out.scheduled] == ["a"]
    assert b.num_preemptions == 1 and sched.waiting[0] is b and not b.block_table
    assert b.num_computed_tokens == 0 and b.num_output_tokens == 2  # outputs kept
