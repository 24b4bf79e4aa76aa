"""One bucket dimension (see engine.buckets): a `BucketRange` (min/step/max) or explicit
strictly increasing values, its validation, its default range from an engine limit, and its
expansion into bucket values by a strategy:
- "exponential": min, then every power of two above it, then max (max always included);
- "linear": min, min+step, min+2*step, ..., then max (max always included).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

__all__ = [
    "STRATEGIES",
    "BucketDim",
    "BucketRange",
    "as_dim",
    "check_int",
    "default_range",
    "dim_buckets",
    "dim_min",
    "is_bucket_values",
]

STRATEGIES = ("exponential", "linear")
# With the "linear" strategy and no explicit dimension, aim for about this many buckets.
_LINEAR_DEFAULT_NUM_STEPS = 8


@dataclass(frozen=True)
class BucketRange:
    """min/step/max of one bucket dimension. `step` is used by the "linear" strategy only.
    Validated by the `BucketConfig` holding it, so errors name the config field."""

    min: int
    step: int
    max: int


# A dimension: a range expanded by the strategy, or explicit strictly increasing values.
BucketDim = BucketRange | tuple[int, ...]


def dim_buckets(strategy: str, dim: BucketDim) -> tuple[int, ...]:
    """Expand one dimension into its sorted bucket values (explicit values as given).

    >>> dim_buckets("exponential", BucketRange(min=3, step=1, max=20))
    (3, 4, 8, 16, 20)
    >>> dim_buckets("linear", BucketRange(min=1, step=8, max=20))
    (1, 9, 17, 20)
    >>> dim_buckets("linear", (2, 6, 7))
    (2, 6, 7)
    """
    if not isinstance(dim, BucketRange):
        return tuple(dim)
    low, high = dim.min, dim.max
    if strategy == "exponential":
        values = [low]
        power = 1 << low.bit_length()  # the smallest power of two above low
        while power < high:
            values.append(power)
            power <<= 1
    elif strategy == "linear":
        values = list(range(low, high, dim.step))
    else:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    if not values or values[-1] != high:  # linear with min == max gives no steps
        values.append(high)
    return tuple(values)


def default_range(
    strategy: str, low: int, high: int, *, min_step: int = 1, is_aligned: bool = True
) -> BucketRange:
    if strategy != "linear":
        return BucketRange(min=low, step=1, max=high)
    step = max(min_step, _pow2_floor(max(1, high // _LINEAR_DEFAULT_NUM_STEPS)))
    step = min(step, high)
    return BucketRange(min=step if is_aligned else low, step=step, max=high)


def _pow2_floor(value: int) -> int:
    return 1 << (value.bit_length() - 1)


def dim_min(dim: BucketDim) -> int:
    return dim.min if isinstance(dim, BucketRange) else dim[0]


def as_dim(name: str, dim: object) -> BucketDim:
    """`dim` validated, with a list of values turned into a tuple."""
    if isinstance(dim, BucketRange):
        check_int(f"{name}.min", dim.min, 1, "1")
        check_int(f"{name}.step", dim.step, 1, "1")
        check_int(f"{name}.max", dim.max, dim.min, f"{name}.min ({dim.min})")
        return dim
    if not is_bucket_values(dim):
        raise ValueError(
            f"{name} must be a BucketRange(min, step, max) or a non-empty, strictly "
            f"increasing list of integers >= 1, got {dim!r}"
        )
    return tuple(dim)


def is_bucket_values(values: object) -> bool:
    """Whether `values` are explicit bucket values: a non-empty list or tuple of strictly
    increasing integers >= 1.

    >>> is_bucket_values([1, 3, 8]), is_bucket_values((4, 2)), is_bucket_values([True])
    (True, False, False)
    """
    if not isinstance(values, (list, tuple)) or not values:
        return False
    return all(_is_int(v) and v >= 1 for v in values) and all(
        a < b for a, b in itertools.pairwise(values)
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: object, minimum: int, minimum_text: str) -> None:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum_text}, got {value!r}")
