"""Static-shape buckets: every step is padded to the smallest bucket that fits it.

Graph-mode backends (HPU graphs, CUDA graphs) replay a graph captured for one exact shape,
so the runner pads each step to a bucket and warms every bucket before the replica is
ready. Buckets are config (`BucketConfig`), expanded by the pure functions below; this
module does not import torch.

- prefill buckets: (batch size, padded query length). A pair whose padded token count
  `batch_size * query_len` exceeds `max_num_batched_tokens` is dropped: the scheduler never
  forms such a step, and warming it would waste start-up time and device memory.
- decode buckets: (batch size, padded number of context blocks per sequence, i.e. the
  block-table width), with one query token per sequence. A speculative verify step
  (k+1 query tokens per sequence) will add `query_len` as a third decode dimension;
  `DecodeBucket.query_len` is already there for it.

Each dimension is either explicit values (a strictly increasing tuple) or a `BucketRange`
expanded by the config's strategy (engine.bucket_ranges):
- "exponential": min, then every power of two above it, then max (max always included);
- "linear": min, min+step, min+2*step, ..., then max (max always included).

Worked example (engine limits: 8 sequences, 256-token context, 16-token blocks,
a 512-token prefill budget):

>>> cfg = BucketConfig.from_limits(
...     max_num_seqs=8, max_model_len=256, block_size=16, max_num_batched_tokens=512
... )
>>> prefill_batch_buckets(cfg), length_buckets(cfg)
((1, 2, 4, 8), (16, 32, 64, 128, 256))
>>> decode_batch_buckets(cfg), block_buckets(cfg)
((1, 2, 4, 8), (1, 2, 4, 8, 16))

Prefill drops pairs over the budget: (4, 256) and (8, 128) hold 1024 padded tokens.

>>> len(prefill_buckets(cfg)), (4, 256) in prefill_buckets(cfg), (4, 128) in prefill_buckets(cfg)
(17, False, True)
>>> pick_prefill_bucket(cfg, batch_size=3, max_len=40)
PrefillBucket(batch_size=4, query_len=64)
>>> pick_decode_bucket(cfg, batch_size=5, max_blocks=3)
DecodeBucket(batch_size=8, num_blocks=4, query_len=1)
>>> padding_fraction(real_tokens=3 * 40, padded_tokens=4 * 64)
0.53125

Three prompts of up to 200 tokens fit no prefill bucket (4 x 256 is over the budget), so
the scheduler must run them in smaller batches:

>>> pick_prefill_bucket(cfg, batch_size=3, max_len=200)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
engine.buckets.BucketOverflowError: (batch_size, max_len)=(3, 200) fits no bucket; ...

Explicit values replace a generated dimension:

>>> cfg = BucketConfig.from_limits(
...     max_num_seqs=8, max_model_len=256, block_size=16, max_num_batched_tokens=512,
...     decode_batch_sizes=(1, 3, 8),
... )
>>> decode_batch_buckets(cfg)
(1, 3, 8)
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from engine.bucket_ranges import (
    STRATEGIES,
    BucketDim,
    BucketRange,
    as_dim,
    check_int,
    default_range,
    dim_buckets,
    dim_min,
)

__all__ = [
    "BUCKET_DIMS",
    "STRATEGIES",
    "BucketConfig",
    "BucketDim",
    "BucketOverflowError",
    "BucketRange",
    "DecodeBucket",
    "PrefillBucket",
    "block_buckets",
    "decode_batch_buckets",
    "decode_buckets",
    "dim_buckets",
    "length_buckets",
    "padding_fraction",
    "pick_bucket",
    "pick_decode_bucket",
    "pick_prefill_bucket",
    "prefill_batch_buckets",
    "prefill_buckets",
]

# The four bucket dimensions of a BucketConfig (the serving config's `buckets` keys).
BUCKET_DIMS = ("prefill_batch_sizes", "prefill_lengths", "decode_batch_sizes", "decode_num_blocks")


class BucketOverflowError(ValueError):
    """No bucket is large enough for a step. The engine rejects such a request at
    admission (or the scheduler splits the batch) rather than run an unwarmed shape."""

    def __init__(self, name: str, value: object, allowed: str):
        self.name = name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{name}={value!r} fits no bucket; allowed: {allowed}")


class PrefillBucket(NamedTuple):
    """A prefill step's padded shape: rows x query tokens per row."""

    batch_size: int
    query_len: int

    @property
    def num_tokens(self) -> int:
        return self.batch_size * self.query_len


class DecodeBucket(NamedTuple):
    """A decode step's padded shape: rows x context blocks per row (block-table width).
    `query_len` is 1 for plain decode; a speculative verify step will use k+1."""

    batch_size: int
    num_blocks: int
    query_len: int = 1

    @property
    def num_tokens(self) -> int:
        return self.batch_size * self.query_len


@dataclass(frozen=True)
class BucketConfig:
    """The bucket grid of one engine. Build it with `from_limits` to get defaults derived
    from the engine's limits, overriding any dimension.

    prefill_batch_sizes: rows of a prefill step.
    prefill_lengths: padded query tokens per row of a prefill step (a prompt or a chunk).
    decode_batch_sizes: rows of a decode step.
    decode_num_blocks: padded context blocks per row of a decode step.
    max_num_batched_tokens: the prefill token budget; prefill pairs over it are dropped.
    strategy: "exponential" or "linear", expands every `BucketRange` dimension.
    """

    prefill_batch_sizes: BucketDim
    prefill_lengths: BucketDim
    decode_batch_sizes: BucketDim
    decode_num_blocks: BucketDim
    max_num_batched_tokens: int
    strategy: str = "exponential"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {self.strategy!r}")
        for name in BUCKET_DIMS:
            # lists become tuples: the config stays hashable (the expansions are cached)
            object.__setattr__(self, name, as_dim(name, getattr(self, name)))
        smallest = dim_min(self.prefill_batch_sizes) * dim_min(self.prefill_lengths)
        check_int(
            "max_num_batched_tokens",
            self.max_num_batched_tokens,
            smallest,
            f"the smallest prefill batch size * the smallest prefill length ({smallest})",
        )

    @classmethod
    def from_limits(
        cls,
        *,
        max_num_seqs: int,
        max_model_len: int,
        block_size: int,
        max_num_batched_tokens: int,
        strategy: str = "exponential",
        prefill_batch_sizes: BucketDim | None = None,
        prefill_lengths: BucketDim | None = None,
        decode_batch_sizes: BucketDim | None = None,
        decode_num_blocks: BucketDim | None = None,
    ) -> BucketConfig:
        """Defaults from the engine's limits; a dimension given (not None) replaces its
        default:

        - prefill_lengths: block_size .. min(max_model_len, max_num_batched_tokens)
          (longer prompts are chunked to the budget);
        - prefill_batch_sizes: 1 .. min(max_num_seqs, budget // shortest prefill length);
        - decode_batch_sizes: 1 .. max_num_seqs;
        - decode_num_blocks: 1 .. ceil(max_model_len / block_size).

        With "linear", the default step is a power of two near max/8 (prefill lengths: at
        least block_size); lengths and blocks start at the step, so their buckets sit on
        multiples of it, while batch sizes start at 1 so a lone sequence is not padded.
        """
        for name, value in (
            ("max_num_seqs", max_num_seqs),
            ("max_model_len", max_model_len),
            ("block_size", block_size),
            ("max_num_batched_tokens", max_num_batched_tokens),
        ):
            check_int(name, value, 1, "1")
        max_len = min(max_model_len, max_num_batched_tokens)
        if prefill_lengths is not None:
            prefill_lengths = as_dim("prefill_lengths", prefill_lengths)
        else:
            prefill_lengths = default_range(
                strategy, min(block_size, max_len), max_len, min_step=block_size
            )
        max_prefill_batch = max_num_batched_tokens // dim_min(prefill_lengths)
        if prefill_batch_sizes is None:
            prefill_batch_sizes = default_range(
                strategy, 1, max(1, min(max_num_seqs, max_prefill_batch)), is_aligned=False
            )
        if decode_batch_sizes is None:
            decode_batch_sizes = default_range(strategy, 1, max_num_seqs, is_aligned=False)
        if decode_num_blocks is None:
            decode_num_blocks = default_range(strategy, 1, -(-max_model_len // block_size))
        return cls(
            prefill_batch_sizes=prefill_batch_sizes,
            prefill_lengths=prefill_lengths,
            decode_batch_sizes=decode_batch_sizes,
            decode_num_blocks=decode_num_blocks,
            max_num_batched_tokens=max_num_batched_tokens,
            strategy=strategy,
        )


@functools.cache
def prefill_batch_buckets(cfg: BucketConfig) -> tuple[int, ...]:
    return dim_buckets(cfg.strategy, cfg.prefill_batch_sizes)


@functools.cache
def length_buckets(cfg: BucketConfig) -> tuple[int, ...]:
    """Padded query lengths of prefill steps."""
    return dim_buckets(cfg.strategy, cfg.prefill_lengths)


@functools.cache
def decode_batch_buckets(cfg: BucketConfig) -> tuple[int, ...]:
    return dim_buckets(cfg.strategy, cfg.decode_batch_sizes)


@functools.cache
def block_buckets(cfg: BucketConfig) -> tuple[int, ...]:
    """Padded context blocks per sequence of decode steps."""
    return dim_buckets(cfg.strategy, cfg.decode_num_blocks)


@functools.cache
def prefill_buckets(cfg: BucketConfig) -> tuple[PrefillBucket, ...]:
    """Every (batch, length) pair within the token budget, sorted by batch then length."""
    return tuple(
        PrefillBucket(batch, length)
        for batch in prefill_batch_buckets(cfg)
        for length in length_buckets(cfg)
        if batch * length <= cfg.max_num_batched_tokens
    )


@functools.cache
def decode_buckets(cfg: BucketConfig) -> tuple[DecodeBucket, ...]:
    """Every (batch, blocks) pair, sorted by batch then blocks; one query token a row."""
    return tuple(
        DecodeBucket(batch, blocks)
        for batch in decode_batch_buckets(cfg)
        for blocks in block_buckets(cfg)
    )


def pick_bucket(buckets: Sequence[int], value: int, name: str = "value") -> int:
    """The smallest bucket >= value (`buckets` sorted ascending); `name` labels the error.

    >>> pick_bucket((1, 2, 4, 8), 3)
    4
    >>> pick_bucket((1, 2, 4, 8), 9, name="batch_size")
    Traceback (most recent call last):
    ...
    engine.buckets.BucketOverflowError: batch_size=9 fits no bucket; allowed: at most 8
    """
    check_int(name, value, 1, "1")
    index = bisect.bisect_left(buckets, value)
    if index == len(buckets):
        raise BucketOverflowError(name, value, f"at most {buckets[-1]}" if buckets else "none")
    return buckets[index]


def pick_prefill_bucket(cfg: BucketConfig, batch_size: int, max_len: int) -> PrefillBucket:
    """The prefill bucket with the fewest padded tokens holding `batch_size` rows of up to
    `max_len` tokens. Raises BucketOverflowError when none fits (too many rows, too long,
    or every fitting pair was dropped for the token budget)."""
    check_int("batch_size", batch_size, 1, "1")
    check_int("max_len", max_len, 1, "1")
    fitting = [
        b for b in prefill_buckets(cfg) if b.batch_size >= batch_size and b.query_len >= max_len
    ]
    if not fitting:
        raise BucketOverflowError(
            "(batch_size, max_len)",
            (batch_size, max_len),
            f"a prefill bucket with batch_size >= {batch_size} and query_len >= {max_len} "
            f"within max_num_batched_tokens={cfg.max_num_batched_tokens}",
        )
    return min(fitting, key=lambda b: (b.num_tokens, b.batch_size))


def pick_decode_bucket(cfg: BucketConfig, batch_size: int, max_blocks: int) -> DecodeBucket:
    """The decode bucket holding `batch_size` rows of up to `max_blocks` context blocks.
    Raises BucketOverflowError when either exceeds its largest bucket."""
    return DecodeBucket(
        pick_bucket(decode_batch_buckets(cfg), batch_size, name="batch_size"),
        pick_bucket(block_buckets(cfg), max_blocks, name="max_blocks"),
    )


def padding_fraction(real_tokens: int, padded_tokens: int) -> float:
    """The share of a padded step that is padding, in [0, 1] (0 = no padding). Not to be
    confused with `EngineStats.padding_ratio`: padded tokens per real token, >= 1.

    >>> padding_fraction(48, 64)
    0.25
    """
    check_int("padded_tokens", padded_tokens, 1, "1")
    if not isinstance(real_tokens, int) or not 0 <= real_tokens <= padded_tokens:
        raise ValueError(
            f"real_tokens must be an integer in [0, padded_tokens={padded_tokens}], "
            f"got {real_tokens!r}"
        )
    return 1.0 - real_tokens / padded_tokens
