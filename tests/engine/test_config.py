"""EngineConfig's homes of allowed values and defaults, and the max_model_len default."""

from __future__ import annotations

import doctest
import re

import pytest
import torch

import engine.config
from engine.config import (
    BLOCK_SIZE_CHOICES,
    DEFAULT_MAX_MODEL_LEN_CAP,
    DTYPE_CHOICES,
    DTYPE_NAMES,
    EngineConfig,
    resolve_max_model_len,
)
from engine.loader import TORCH_DTYPES


def test_docstring_examples_run():
    result = doctest.testmod(engine.config)
    assert result.attempted >= 3 and result.failed == 0


def test_dtype_names_are_torch_dtypes_and_auto_is_a_choice():
    assert {name: getattr(torch, name) for name in DTYPE_NAMES} == TORCH_DTYPES
    assert ("auto", *DTYPE_NAMES) == DTYPE_CHOICES


@pytest.mark.parametrize(("field", "value"), [("dtype", "fp8"), ("block_size", 256)])
def test_engine_config_refuses_values_outside_its_choices(field, value):
    allowed = {"dtype": DTYPE_CHOICES, "block_size": BLOCK_SIZE_CHOICES}[field]
    with pytest.raises(ValueError, match=re.escape(f"{field} must be one of {list(allowed)}")):
        EngineConfig(**{field: value})


def test_max_model_len_default_is_the_models_capped():
    assert resolve_max_model_len(None, DEFAULT_MAX_MODEL_LEN_CAP * 2) == DEFAULT_MAX_MODEL_LEN_CAP
    assert resolve_max_model_len(None, 100) == 100
    assert resolve_max_model_len(100, None) == 100
    with pytest.raises(ValueError, match=r"allowed: 2\.\.64"):
        resolve_max_model_len(65, 64)


def test_the_engine_resolves_max_model_len_with_the_same_function(tiny_model_dir, make_llm):
    llm = make_llm(tiny_model_dir("llama"), skip_tokenizer_init=True)
    assert llm.engine.config.max_model_len == resolve_max_model_len(None, 1024)
