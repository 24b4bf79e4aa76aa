"""The padded shape of every step, and the set of shapes warmed at start-up.

A step runs at a `StepShape` (kind, rows, query tokens per row, context blocks per row):
- decode: (batch bucket, 1, blocks bucket) from `pick_decode_bucket`; speculative decoding
  adds decode shapes with more query tokens per row (a verify step feeds k + 1 tokens, a
  draft model's catch-up step 2), warmed when listed in `warmup_shapes(decode_query_lens)`;
- prefill: (batch, query length) from `pick_prefill_bucket`, and the block-table width is
  either the "fresh" width ceil(query_len / block_size), enough when no row has context
  before its chunk, or the full table (max blocks) for steps that continue a chunked
  prompt or start after a cached prefix. Two widths per prefill bucket keep the warmup
  grid small while covering every step the scheduler can form.

Worked example (8 sequences, 256-token context, 16-token blocks, 512-token budget):

>>> from engine.buckets import BucketConfig
>>> shaper = StepShaper(BucketConfig.from_limits(max_num_seqs=8, max_model_len=256,
...     block_size=16, max_num_batched_tokens=512), block_size=16)
>>> shaper.prefill_shape(batch_size=3, max_len=40, max_context_blocks=3)
StepShape(kind='prefill', batch_size=4, query_len=64, num_blocks=4)
>>> shaper.prefill_shape(batch_size=1, max_len=40, max_context_blocks=9)
StepShape(kind='prefill', batch_size=1, query_len=64, num_blocks=16)
>>> shaper.decode_shape(batch_size=5, max_blocks=3)
StepShape(kind='decode', batch_size=8, query_len=1, num_blocks=4)
>>> shaper.max_prefill_len(batch_size=3)  # 4 rows x 128 tokens = 512, the budget
128
>>> len(shaper.warmup_shapes())  # 17 prefill x 2 widths (2 coincide at 256) + 4 x 5 decode
52
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from engine.buckets import (
    BucketConfig,
    block_buckets,
    decode_buckets,
    length_buckets,
    pick_decode_bucket,
    pick_prefill_bucket,
    prefill_batch_buckets,
    prefill_buckets,
)


@dataclass(frozen=True, order=True)
class StepShape:
    kind: str  # "prefill" | "decode"
    batch_size: int
    query_len: int
    num_blocks: int

    @property
    def num_tokens(self) -> int:
        return self.batch_size * self.query_len


class StepShaper:
    """Pure functions of the bucket config: no device, no state."""

    def __init__(self, buckets: BucketConfig, block_size: int):
        self.buckets = buckets
        self.block_size = block_size
        self.max_blocks = block_buckets(buckets)[-1]
        lengths = length_buckets(buckets)
        batches = prefill_batch_buckets(buckets)
        # For each prefill batch bucket, the longest query length within the budget.
        self._max_len_by_batch = [
            max((q for q in lengths if b * q <= buckets.max_num_batched_tokens), default=0)
            for b in batches
        ]
        self._batches = batches

    @property
    def max_context_len(self) -> int:
        return self.max_blocks * self.block_size

    @property
    def max_prefill_batch_size(self) -> int:
        """The most rows a prefill step may have."""
        return max(
            (b for b, n in zip(self._batches, self._max_len_by_batch, strict=True) if n), default=0
        )

    def fresh_blocks(self, query_len: int) -> int:
        return -(-query_len // self.block_size)

    def max_prefill_len(self, batch_size: int) -> int:
        """The longest query a prefill step of batch_size rows may have; 0 if none."""
        index = bisect.bisect_left(self._batches, batch_size)
        return self._max_len_by_batch[index] if index < len(self._batches) else 0

    def prefill_shape(self, batch_size: int, max_len: int, max_context_blocks: int) -> StepShape:
        bucket = pick_prefill_bucket(self.buckets, batch_size, max_len)
        fresh = self.fresh_blocks(bucket.query_len)
        blocks = fresh if max_context_blocks <= fresh else self.max_blocks
        return StepShape("prefill", bucket.batch_size, bucket.query_len, blocks)

    def decode_shape(self, batch_size: int, max_blocks: int, query_len: int = 1) -> StepShape:
        """A decode-like step: query_len tokens per row (1 = plain decode)."""
        bucket = pick_decode_bucket(self.buckets, batch_size, max_blocks)
        return StepShape("decode", bucket.batch_size, query_len, bucket.num_blocks)

    def warmup_shapes(self, decode_query_lens: tuple[int, ...] = (1,)) -> list[StepShape]:
        """Every shape a step can take, largest first (graph pools want that order).
        decode_query_lens: query tokens per row of the decode-like steps to warm."""
        shapes = {
            StepShape("decode", b.batch_size, q, b.num_blocks)
            for b in decode_buckets(self.buckets)
            for q in decode_query_lens
        }
        for b in prefill_buckets(self.buckets):
            for blocks in (self.fresh_blocks(b.query_len), self.max_blocks):
                shapes.add(StepShape("prefill", b.batch_size, b.query_len, blocks))
        return sorted(shapes, key=lambda s: (s.num_tokens * s.num_blocks, s), reverse=True)


def check_covers(shaper: StepShaper, max_model_len: int) -> None:
    """Refuse bucket configs under which some admissible request could not run."""
    if shaper.max_context_len < max_model_len:
        raise ValueError(
            f"decode_num_blocks buckets reach {shaper.max_blocks} blocks "
            f"({shaper.max_context_len} tokens), less than max_model_len {max_model_len}: "
            "raise the largest decode_num_blocks bucket or lower max_model_len"
        )
