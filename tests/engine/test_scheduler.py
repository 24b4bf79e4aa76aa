from __future__ import annotations

from engine.block_manager import BlockManager
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, StepKind
from engine.sequence import Sequence


def seq(n: int, rid: str) -> Sequence:
    return Sequence(rid, list(range(1, n + 1)), SamplingParams(), seed=0)


def run_step(sched: Scheduler, token: int = 0):
    """Pretend the model ran: advance computed counts and append a token to sampled rows."""
    out = sched.schedule()
    for item in out.scheduled:
        sampled = item.is_sampled
        item.seq.num_computed_tokens += item.num_tokens
        if sampled:
            item.seq.token_ids.append(token)
    return out


def test_prefill_then_decode_and_token_budget():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=10)
    for i, n in enumerate([4, 5, 6]):
        sched.add(seq(n, f"r{i}"))
    first = run_step(sched)
    assert first.kind is StepKind.PREFILL
    assert [s.num_tokens for s in first.scheduled] == [4, 5, 1]  # budget 10: r2 chunked
    second = run_step(sched)
    assert second.kind is StepKind.PREFILL  # r2 finishes its prefill
    assert [(s.seq.request_id, s.num_tokens) for s in second.scheduled] == [("r2", 5)]
    third = run_step(sched)
    assert third.kind is StepKind.DECODE and len(third.scheduled) == 3


def test_long_prompt_is_chunked_and_only_last_chunk_samples():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=4, max_num_batched_tokens=8)
    s = seq(20, "long")
    sched.add(s)
    chunks = []
    while s.num_output_tokens == 0:
        out = sched.schedule()
        chunks.append((out.scheduled[0].num_tokens, out.scheduled[0].is_sampled))
        s.num_computed_tokens += out.scheduled[0].num_tokens
        if chunks[-1][1]:
            s.token_ids.append(0)
    assert chunks == [(8, False), (8, False), (4, True)]


def test_max_num_seqs_limits_admission():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=2, max_num_batched_tokens=100)
    for i in range(3):
        sched.add(seq(3, f"r{i}"))
    out = run_step(sched)
    assert len(out.scheduled) == 2 and len(sched.waiting) == 1


def test_decode_preempts_latest_when_blocks_run_out():
    bm = BlockManager(num_blocks=5, block_size=2)  # 4 usable blocks
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=100)
    a, b = seq(3, "a"), seq(3, "b")
    sched.add(a)
    sched.add(b)
    run_step(sched)  # each: 3 prompt + 1 sampled = 4 tokens -> 2 blocks each, 0 free
    out = run_step(sched)  # decode: each now needs its 3rd block? 4 tokens fit 2 blocks
    assert out.kind is StepKind.DECODE
    out = run_step(sched)  # 5 tokens each -> 3 blocks: b is preempted for a
    assert [s.seq.request_id for s in out.scheduled] == ["a"]
    assert b.num_preemptions == 1 and sched.waiting[0] is b and not b.block_table
    assert b.num_computed_tokens == 0 and b.num_output_tokens == 2  # outputs kept
