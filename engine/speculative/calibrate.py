"""Measured step costs for adaptive speculation: time warmed all-padding steps of the
target and the draft, so that engine.speculative.adaptive weighs real forward times."""

from __future__ import annotations

import time

from engine.buckets import block_buckets, decode_batch_buckets
from engine.messages import ModelInput
from engine.model_input import dummy_model_input
from engine.shapes import StepShaper
from engine.speculative.adaptive import StepCosts

CALIBRATION_REPEATS = 5


def measure_step_costs(
    executor, draft_runner, shaper: StepShaper, verify_query_lens: tuple[int, ...]
) -> StepCosts:
    """Time warmed all-padding steps at every decode batch bucket (the target at each
    verify length and at 1 token per row, the draft at 1) over a middle context bucket.
    draft_runner: the draft's ModelRunner, or None (n-gram: proposing costs nothing)."""
    blocks = block_buckets(shaper.buckets)
    num_blocks = blocks[len(blocks) // 2]
    target: dict[int, float] = {}
    draft: dict[int, float] = {}
    for batch in decode_batch_buckets(shaper.buckets):
        for query_len in (1, *verify_query_lens):
            shape = shaper.decode_shape(batch, num_blocks, query_len)
            target[shape.num_tokens] = _time(executor.execute, dummy_model_input(shape))
        if draft_runner is not None:
            shape = shaper.decode_shape(batch, num_blocks)
            draft[shape.num_tokens] = _time(draft_runner.execute, dummy_model_input(shape))
    return StepCosts(_monotone(target), _monotone(draft))


def _time(execute, inp: ModelInput) -> float:
    """Best of CALIBRATION_REPEATS steps, in seconds (execute syncs with the host)."""
    best = float("inf")
    for _ in range(CALIBRATION_REPEATS):
        start = time.perf_counter()
        execute(inp)
        best = min(best, time.perf_counter() - start)
    return best


def _monotone(times: dict[int, float]) -> tuple[tuple[int, float], ...]:
    """(tokens, seconds) ascending, each at least the one before (timing noise aside, more
    tokens never cost less)."""
    points, floor = [], 0.0
    for tokens in sorted(times):
        floor = max(floor, times[tokens])
        points.append((tokens, floor))
    return tuple(points)
