"""Speculative settings: validation names the field, and the pure helpers' documented
examples hold."""

from __future__ import annotations

import doctest

import pytest

import engine.speculative.adaptive
import engine.speculative.ngram
import engine.speculative.vocab
from engine import EngineConfig, SpeculativeConfig


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(method="medusa"),
            r"speculative.method must be one of \[.draft., .ngram., .hybrid.\]",
        ),
        (dict(num_speculative_tokens=0), r"num_speculative_tokens must be an integer in \[1, 8\]"),
        (dict(num_speculative_tokens=9), r"num_speculative_tokens must be an integer in \[1, 8\]"),
        (dict(num_speculative_tokens=True), "num_speculative_tokens must be an integer"),
        (dict(prompt_lookup_min=0), r"prompt_lookup_min must be an integer in \[1, 64\]"),
        (
            dict(prompt_lookup_min=3, prompt_lookup_max=2),
            r"prompt_lookup_max must be an integer in \[3, 64\]",
        ),
        (
            dict(draft_model=5),
            "draft_model must be a directory path, a provided model.s name or None",
        ),
        (dict(method="ngram", draft_model="/m"), "draft_model is only used with methods"),
        (dict(adaptive="yes"), "adaptive must be a boolean"),
    ],
)
def test_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpeculativeConfig(**kwargs)


def test_engine_config_takes_a_speculative_config():
    spec = SpeculativeConfig(method="ngram", num_speculative_tokens=3)
    assert EngineConfig(speculative=spec).speculative == spec
    assert EngineConfig().speculative is None
    with pytest.raises(ValueError, match="speculative must be a SpeculativeConfig or None"):
        EngineConfig(speculative={"method": "ngram"})


@pytest.mark.parametrize(
    "module", [engine.speculative.adaptive, engine.speculative.ngram, engine.speculative.vocab]
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted >= 2
    assert result.failed == 0
