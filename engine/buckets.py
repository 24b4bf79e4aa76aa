"""Static-shape buckets: every step is padded to the smallest bucket that fits it.

Graph-mode backends (HPU graphs, CUDA graphs) replay a graph captured for one exact shape,
so the runner pads each step to a bucket and warms every bucket before the replica is
ready. Buckets are config (`BucketConfig`), expanded by the pure functions below; nothing
here imports torch.

- prefill buckets: (batch size, padded query length). A pair whose padded token count
  `batch_size * query_len` exceeds `max_num_batched_tokens` is dropped: the scheduler never
  forms such a step, and warming it would waste start-up time and device memory.
- decode buckets: (batch size, padded number of context blocks per sequence, i.e. the
  block-table width), with one query token per sequence. A speculative verify step
  (k+1 query tokens per sequence) will add `query_len` as a third decode dimension;
  `DecodeBucket.query_len` is already there for it.

Each dimension is expanded by one strategy:
- "exponential": min, then every power of two above it, then max (max always included);
- "linear": min, min+step, min+2*step, ..., then max (max always included).

Worked example (engine limits: 8 sequences, 256-token context, 16-token blocks,
a 512-token prefill budget):

>>> cfg = BucketConfig.from_limits(
...     max_num_seqs=8, max_model_len=256, block_size=16, max_num_batched_tokens=512
... )
>>> batch_buckets(cfg)
(1, 2, 4, 8)
>>> length_buckets(cfg)
(16, 32, 64, 128, 256)
>>> block_buckets(cfg)
(1, 2, 4, 8, 16)

Prefill drops pairs over the budget: (4, 256) and (8, 128) hold 1024 padded tokens.

>>> len(prefill_buckets(cfg)), (4, 256) in prefill_buckets(cfg), (4, 128) in prefill_buckets(cfg)
(17, False, True)
>>> pick_prefill_bucket(cfg, batch_size=3, max_len=40)
PrefillBucket(batch_size=4, query_len=64)
>>> pick_decode_bucket(cfg, batch_size=5, max_blocks=3)
DecodeBucket(batch_size=8, num_blocks=4, query_len=1)
>>> padding_ratio(real_tokens=3 * 40, padded_tokens=4 * 64)
0.53125

Three prompts of up to 200 tokens fit no prefill bucket (4 x 256 is over the budget), so
the scheduler must run them in smaller batches:

>>> pick_prefill_bucket(cfg, batch_size=3, max_len=200)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
engine.buckets.BucketOverflowError: (batch_size, max_len)=(3, 200) fits no bucket; ...
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "STRATEGIES",
    "BucketConfig",
    "BucketOverflowError",
    "BucketRange",
    "DecodeBucket",
    "PrefillBucket",
    "batch_buckets",
    "block_buckets",
    "decode_buckets",
    "length_buckets",
    "padding_ratio",
    "pick_bucket",
    "pick_decode_bucket",
    "pick_prefill_bucket",
    "prefill_buckets",
    "range_buckets",
]

STRATEGIES = ("exponential", "linear")
# With the "linear" strategy and no explicit range, aim for about this many buckets a dim.
_LINEAR_DEFAULT_NUM_STEPS = 8


class BucketOverflowError(ValueError):
    """No bucket is large enough for a step. The engine rejects such a request at
    admission (or the scheduler splits the batch) rather than run an unwarmed shape."""

    def __init__(self, name: str, value: object, allowed: str):
        self.name = name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{name}={value!r} fits no bucket; allowed: {allowed}")


@dataclass(frozen=True)
class BucketRange:
    """min/step/max of one bucket dimension. `step` is used by the "linear" strategy only.
    Validated by the `BucketConfig` holding it, so errors name the config field."""

    min: int
    step: int
    max: int


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
    from the engine's limits; give a `BucketRange` to override one dimension.

    batch_size: rows of a step (prefill and decode).
    prefill_len: padded query tokens per row of a prefill step (a prompt or a chunk of it).
    decode_blocks: padded context blocks per row of a decode step.
    max_num_batched_tokens: the prefill token budget; prefill pairs over it are dropped.
    strategy: "exponential" or "linear", applied to every dimension.
    """

    batch_size: BucketRange
    prefill_len: BucketRange
    decode_blocks: BucketRange
    max_num_batched_tokens: int
    strategy: str = field(default="exponential")

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {self.strategy!r}")
        for name in ("batch_size", "prefill_len", "decode_blocks"):
            _check_range(name, getattr(self, name))
        smallest = self.batch_size.min * self.prefill_len.min
        _check_int(
            "max_num_batched_tokens",
            self.max_num_batched_tokens,
            smallest,
            f"batch_size.min * prefill_len.min ({smallest})",
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
        batch_size: BucketRange | None = None,
        prefill_len: BucketRange | None = None,
        decode_blocks: BucketRange | None = None,
    ) -> BucketConfig:
        """Defaults from the engine's limits, each overridable:

        - batch_size: 1 .. max_num_seqs;
        - prefill_len: block_size .. min(max_model_len, max_num_batched_tokens) (longer
          prompts are chunked to the budget);
        - decode_blocks: 1 .. ceil(max_model_len / block_size).

        With "linear", the default step is a power of two near max/8 (prefill_len: at least
        block_size); prefill_len and decode_blocks start at the step, so their buckets sit
        on multiples of it, while batch_size starts at 1 so a lone sequence is not padded.
        """
        for name, value in (
            ("max_num_seqs", max_num_seqs),
            ("max_model_len", max_model_len),
            ("block_size", block_size),
            ("max_num_batched_tokens", max_num_batched_tokens),
        ):
            _check_int(name, value, 1, "1")
        max_len = min(max_model_len, max_num_batched_tokens)
        max_blocks = -(-max_model_len // block_size)
        return cls(
            batch_size=batch_size or _default_range(strategy, 1, max_num_seqs, is_aligned=False),
            prefill_len=prefill_len
            or _default_range(strategy, min(block_size, max_len), max_len, min_step=block_size),
            decode_blocks=decode_blocks or _default_range(strategy, 1, max_blocks),
            max_num_batched_tokens=max_num_batched_tokens,
            strategy=strategy,
        )


def range_buckets(strategy: str, bucket_range: BucketRange) -> tuple[int, ...]:
    """Expand one dimension into its sorted bucket values.

    >>> range_buckets("exponential", BucketRange(min=3, step=1, max=20))
    (3, 4, 8, 16, 20)
    >>> range_buckets("linear", BucketRange(min=1, step=8, max=20))
    (1, 9, 17, 20)
    """
    low, high = bucket_range.min, bucket_range.max
    if strategy == "exponential":
        values = [low]
        power = 1 << low.bit_length()  # the smallest power of two above low
        while power < high:
            values.append(power)
            power <<= 1
    elif strategy == "linear":
        values = list(range(low, high, bucket_range.step))
    else:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    if not values or values[-1] != high:  # linear with min == max gives no steps
        values.append(high)
    return tuple(values)


@functools.cache
def batch_buckets(cfg: BucketConfig) -> tuple[int, ...]:
    """Batch-size buckets, shared by prefill and decode."""
    return range_buckets(cfg.strategy, cfg.batch_size)


@functools.cache
def length_buckets(cfg: BucketConfig) -> tuple[int, ...]:
    """Padded query lengths of prefill steps."""
    return range_buckets(cfg.strategy, cfg.prefill_len)


@functools.cache
def block_buckets(cfg: BucketConfig) -> tuple[int, ...]:
    """Padded context blocks per sequence of decode steps."""
    return range_buckets(cfg.strategy, cfg.decode_blocks)


@functools.cache
def prefill_buckets(cfg: BucketConfig) -> tuple[PrefillBucket, ...]:
    """Every (batch, length) pair within the token budget, sorted by batch then length."""
    return tuple(
        PrefillBucket(batch, length)
        for batch in batch_buckets(cfg)
        for length in length_buckets(cfg)
        if batch * length <= cfg.max_num_batched_tokens
    )


@functools.cache
def decode_buckets(cfg: BucketConfig) -> tuple[DecodeBucket, ...]:
    """Every (batch, blocks) pair, sorted by batch then blocks; one query token a row."""
    return tuple(
        DecodeBucket(batch, blocks) for batch in batch_buckets(cfg) for blocks in block_buckets(cfg)
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
    _check_int(name, value, 1, "1")
    index = bisect.bisect_left(buckets, value)
    if index == len(buckets):
        raise BucketOverflowError(name, value, f"at most {buckets[-1]}" if buckets else "none")
    return buckets[index]


def pick_prefill_bucket(cfg: BucketConfig, batch_size: int, max_len: int) -> PrefillBucket:
    """The prefill bucket with the fewest padded tokens holding `batch_size` rows of up to
    `max_len` tokens. Raises BucketOverflowError when none fits (too many rows, too long,
    or every fitting pair was dropped for the token budget)."""
    _check_int("batch_size", batch_size, 1, "1")
    _check_int("max_len", max_len, 1, "1")
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
        pick_bucket(batch_buckets(cfg), batch_size, name="batch_size"),
        pick_bucket(block_buckets(cfg), max_blocks, name="max_blocks"),
    )


def padding_ratio(real_tokens: int, padded_tokens: int) -> float:
    """The fraction of a padded step that is padding, in [0, 1).

    >>> padding_ratio(48, 64)
    0.25
    """
    _check_int("padded_tokens", padded_tokens, 1, "1")
    if not isinstance(real_tokens, int) or not 0 <= real_tokens <= padded_tokens:
        raise ValueError(
            f"real_tokens must be an integer in [0, padded_tokens={padded_tokens}], "
            f"got {real_tokens!r}"
        )
    return 1.0 - real_tokens / padded_tokens


def _default_range(
    strategy: str, low: int, high: int, *, min_step: int = 1, is_aligned: bool = True
) -> BucketRange:
    if strategy != "linear":
        return BucketRange(min=low, step=1, max=high)
    step = max(min_step, _pow2_floor(max(1, high // _LINEAR_DEFAULT_NUM_STEPS)))
    step = min(step, high)
    return BucketRange(min=step if is_aligned else low, step=step, max=high)


def _pow2_floor(value: int) -> int:
    return 1 << (value.bit_length() - 1)


def _check_range(name: str, bucket_range: object) -> None:
    if not isinstance(bucket_range, BucketRange):
        raise ValueError(f"{name} must be a BucketRange(min, step, max), got {bucket_range!r}")
    _check_int(f"{name}.min", bucket_range.min, 1, "1")
    _check_int(f"{name}.step", bucket_range.step, 1, "1")
    _check_int(
        f"{name}.max", bucket_range.max, bucket_range.min, f"{name}.min ({bucket_range.min})"
    )


def _check_int(name: str, value: object, minimum: int, minimum_text: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum_text}, got {value!r}")
