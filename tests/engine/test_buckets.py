import doctest

import pytest

import engine.bucket_ranges
import engine.buckets
from engine.buckets import (
    BucketConfig,
    BucketOverflowError,
    BucketRange,
    DecodeBucket,
    PrefillBucket,
    block_buckets,
    decode_batch_buckets,
    decode_buckets,
    dim_buckets,
    length_buckets,
    padding_fraction,
    pick_bucket,
    pick_decode_bucket,
    pick_prefill_bucket,
    prefill_batch_buckets,
    prefill_buckets,
)


def limits(**overrides) -> BucketConfig:
    kwargs = dict(max_num_seqs=32, max_model_len=1024, block_size=16, max_num_batched_tokens=2048)
    kwargs.update(overrides)
    return BucketConfig.from_limits(**kwargs)


def test_docstring_examples_run():
    result = doctest.testmod(engine.buckets)
    assert result.attempted >= 10
    assert result.failed == 0


def test_bucket_ranges_docstring_examples_run():
    result = doctest.testmod(engine.bucket_ranges)
    assert result.attempted >= 4
    assert result.failed == 0


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (1, 1, (1,)),
        (1, 8, (1, 2, 4, 8)),
        (1, 20, (1, 2, 4, 8, 16, 20)),
        (3, 20, (3, 4, 8, 16, 20)),
        (16, 16, (16,)),
        (16, 100, (16, 32, 64, 100)),
    ],
)
def test_exponential_is_powers_of_two_from_min_with_max_included(low, high, expected):
    assert dim_buckets("exponential", BucketRange(low, 1, high)) == expected


@pytest.mark.parametrize(
    ("low", "step", "high", "expected"),
    [
        (1, 8, 20, (1, 9, 17, 20)),
        (8, 8, 32, (8, 16, 24, 32)),
        (4, 100, 50, (4, 50)),
        (5, 1, 5, (5,)),
    ],
)
def test_linear_is_min_plus_steps_with_max_included(low, step, high, expected):
    assert dim_buckets("linear", BucketRange(low, step, high)) == expected


def test_defaults_follow_engine_limits():
    cfg = limits()
    assert cfg.strategy == "exponential"
    assert prefill_batch_buckets(cfg) == (1, 2, 4, 8, 16, 32)
    assert length_buckets(cfg) == (16, 32, 64, 128, 256, 512, 1024)
    assert decode_batch_buckets(cfg) == (1, 2, 4, 8, 16, 32)
    assert block_buckets(cfg) == (1, 2, 4, 8, 16, 32, 64)  # 1024 / 16 blocks


def test_prefill_batch_is_capped_by_the_budget_over_the_shortest_length():
    cfg = limits(max_num_seqs=256, max_num_batched_tokens=512)
    assert prefill_batch_buckets(cfg)[-1] == 32  # 512 // 16
    assert decode_batch_buckets(cfg)[-1] == 256


def test_prefill_length_is_capped_by_the_token_budget_and_decode_blocks_round_up():
    cfg = limits(max_model_len=1000, max_num_batched_tokens=256)
    assert length_buckets(cfg)[-1] == 256
    assert block_buckets(cfg)[-1] == 63  # ceil(1000 / 16)


def test_linear_defaults_sit_on_multiples_of_the_step_except_batch_one():
    cfg = limits(strategy="linear")
    assert decode_batch_buckets(cfg) == (1, 5, 9, 13, 17, 21, 25, 29, 32)
    assert length_buckets(cfg) == (128, 256, 384, 512, 640, 768, 896, 1024)
    assert block_buckets(cfg) == (8, 16, 24, 32, 40, 48, 56, 64)


def test_explicit_range_or_values_override_one_dimension():
    cfg = limits(decode_batch_sizes=BucketRange(min=1, step=1, max=4))
    assert decode_batch_buckets(cfg) == (1, 2, 4)
    assert length_buckets(cfg) == length_buckets(limits())
    cfg = limits(prefill_lengths=[100, 300], decode_num_blocks=(1, 7, 64))
    assert cfg.prefill_lengths == (100, 300)  # a list becomes a tuple: hashable
    assert length_buckets(cfg) == (100, 300)
    assert prefill_batch_buckets(cfg)[-1] == 20  # 2048 // 100
    assert block_buckets(cfg) == (1, 7, 64)
    assert pick_prefill_bucket(cfg, 2, 101) == PrefillBucket(2, 300)


def test_prefill_buckets_drop_pairs_over_the_token_budget():
    cfg = limits(max_num_batched_tokens=512, max_model_len=512)
    buckets = prefill_buckets(cfg)
    assert buckets
    assert all(b.num_tokens <= 512 for b in buckets)
    assert PrefillBucket(32, 16) in buckets
    assert PrefillBucket(2, 256) in buckets
    assert PrefillBucket(4, 256) not in buckets
    assert list(buckets) == sorted(buckets)


def test_decode_buckets_are_the_full_grid_with_one_query_token():
    cfg = limits()
    buckets = decode_buckets(cfg)
    assert len(buckets) == len(decode_batch_buckets(cfg)) * len(block_buckets(cfg))
    assert all(b.query_len == 1 for b in buckets)
    assert buckets[0] == DecodeBucket(1, 1) and buckets[-1] == DecodeBucket(32, 64)


def test_pick_bucket_is_the_smallest_that_fits():
    buckets = (1, 2, 4, 8)
    assert [pick_bucket(buckets, v) for v in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]


def test_pick_bucket_overflow_names_the_dimension_and_limit():
    with pytest.raises(BucketOverflowError, match=r"batch_size=9 .* at most 8") as info:
        pick_bucket((1, 2, 4, 8), 9, name="batch_size")
    assert isinstance(info.value, ValueError)
    assert (info.value.name, info.value.value) == ("batch_size", 9)


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_pick_bucket_rejects_non_positive_values(value):
    with pytest.raises(ValueError, match="value must be an integer >= 1"):
        pick_bucket((1, 2), value)


def test_pick_prefill_bucket_minimises_padded_tokens():
    cfg = limits()
    assert pick_prefill_bucket(cfg, 1, 1) == PrefillBucket(1, 16)
    assert pick_prefill_bucket(cfg, 3, 17) == PrefillBucket(4, 32)
    assert pick_prefill_bucket(cfg, 32, 64) == PrefillBucket(32, 64)
    assert pick_prefill_bucket(cfg, 2, 1024) == PrefillBucket(2, 1024)


def test_pick_prefill_bucket_overflows_when_every_fitting_pair_was_dropped():
    cfg = limits()
    with pytest.raises(BucketOverflowError, match="max_num_batched_tokens=2048"):
        pick_prefill_bucket(cfg, 3, 1024)  # 4 x 1024 is over the budget
    with pytest.raises(BucketOverflowError):
        pick_prefill_bucket(cfg, 33, 16)
    with pytest.raises(BucketOverflowError):
        pick_prefill_bucket(cfg, 1, 1025)


def test_pick_decode_bucket_pads_both_dimensions():
    cfg = limits()
    assert pick_decode_bucket(cfg, 5, 9) == DecodeBucket(8, 16, 1)
    with pytest.raises(BucketOverflowError, match="max_blocks=65"):
        pick_decode_bucket(cfg, 1, 65)
    with pytest.raises(BucketOverflowError, match="batch_size=33"):
        pick_decode_bucket(cfg, 33, 1)


def test_padding_fraction():
    assert padding_fraction(64, 64) == 0.0
    assert padding_fraction(0, 64) == 1.0
    assert padding_fraction(48, 64) == 0.25
    with pytest.raises(ValueError, match="real_tokens"):
        padding_fraction(65, 64)
    with pytest.raises(ValueError, match="padded_tokens"):
        padding_fraction(0, 0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"strategy": "log"}, r"strategy must be one of \['exponential', 'linear'\], got 'log'"),
        (
            {"decode_batch_sizes": BucketRange(0, 1, 4)},
            r"decode_batch_sizes.min must be an integer >= 1, got 0",
        ),
        (
            {"prefill_lengths": BucketRange(16, 0, 64)},
            r"prefill_lengths.step must be an integer >= 1",
        ),
        (
            {"decode_num_blocks": BucketRange(8, 1, 4)},
            r"decode_num_blocks.max must be an integer >= decode_num_blocks.min \(8\), got 4",
        ),
        ({"prefill_batch_sizes": (1, 1, 4)}, r"prefill_batch_sizes must be a BucketRange.*"),
        ({"prefill_batch_sizes": ()}, r"non-empty, strictly increasing list"),
        ({"prefill_batch_sizes": (0, 2)}, r"integers >= 1, got \(0, 2\)"),
        ({"decode_num_blocks": "1,2"}, r"decode_num_blocks must be a BucketRange"),
        (
            {"max_num_batched_tokens": 8},
            r"max_num_batched_tokens must be an integer >= the smallest prefill batch size \* "
            r"the smallest prefill length \(16\), got 8",
        ),
    ],
)
def test_validation_names_the_field_and_allowed_values(changes, message):
    kwargs = dict(
        prefill_batch_sizes=BucketRange(1, 1, 4),
        prefill_lengths=BucketRange(16, 16, 64),
        decode_batch_sizes=BucketRange(1, 1, 4),
        decode_num_blocks=BucketRange(1, 1, 8),
        max_num_batched_tokens=256,
    )
    kwargs.update(changes)
    with pytest.raises(ValueError, match=message):
        BucketConfig(**kwargs)


@pytest.mark.parametrize("name", ["max_num_seqs", "max_model_len", "block_size"])
def test_from_limits_rejects_bad_limits(name):
    with pytest.raises(ValueError, match=f"{name} must be an integer >= 1, got 0"):
        limits(**{name: 0})


def test_from_limits_validates_an_explicit_dimension_before_using_it():
    with pytest.raises(ValueError, match="prefill_lengths must be a BucketRange"):
        limits(prefill_lengths=())


@pytest.mark.parametrize("strategy", ["exponential", "linear"])
@pytest.mark.parametrize("max_num_seqs", [1, 7, 256])
@pytest.mark.parametrize(("max_model_len", "max_num_batched_tokens"), [(100, 16), (4096, 2048)])
def test_defaults_are_always_valid(strategy, max_num_seqs, max_model_len, max_num_batched_tokens):
    cfg = limits(
        strategy=strategy,
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        max_num_batched_tokens=max_num_batched_tokens,
    )
    assert decode_batch_buckets(cfg)[0] == 1 and decode_batch_buckets(cfg)[-1] == max_num_seqs
    assert prefill_batch_buckets(cfg)[0] == 1
    assert length_buckets(cfg)[-1] == min(max_model_len, max_num_batched_tokens)
    assert pick_prefill_bucket(cfg, 1, 1).num_tokens <= max_num_batched_tokens


def test_config_is_frozen_and_hashable():
    cfg = limits()
    with pytest.raises(AttributeError):
        cfg.strategy = "linear"
    assert hash(cfg) == hash(limits())
