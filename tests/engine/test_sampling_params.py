from __future__ import annotations

import pytest

from engine import SamplingParams


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_tokens", 0, r"max_tokens must be an integer >= 1, got 0"),
        ("max_tokens", 1.5, r"max_tokens must be an integer >= 1"),
        ("temperature", -0.1, r"temperature must be a number in \[0, 100\]"),
        ("temperature", "hot", r"temperature must be a number"),
        ("top_k", -2, r"top_k must be an integer >= 1, or 0 / -1 to disable"),
        ("top_p", 0.0, r"top_p must be a number in \(0, 1\]"),
        ("top_p", 1.5, r"top_p must be a number in \(0, 1\]"),
        ("repetition_penalty", 0.0, r"repetition_penalty must be a number in \(0, 10\]"),
        ("seed", -1, r"seed must be None or an integer in \[0, 2\*\*63\)"),
        ("stop", [""], r"stop must be a list of non-empty strings"),
        ("stop_token_ids", [-3], r"stop_token_ids must be a list of non-negative integers"),
        ("ignore_eos", 1, r"ignore_eos must be a boolean"),
        ("logprobs", 21, r"logprobs must be None or an integer in \[0, 20\]"),
        ("max_tokens", True, r"max_tokens must be an integer"),
    ],
)
def test_invalid_values_name_the_field_and_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**{field: value})


def test_normalisation():
    p = SamplingParams(stop="###", top_k=-1, temperature=0)
    assert p.stop == ["###"] and p.top_k == 0 and p.is_greedy
