"""The worked examples in the multimodal modules' docstrings run."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "name",
    [
        "engine.multimodal.inputs",
        "engine.multimodal.feed",
        "engine.models.llava_next",
        "engine.prefix_hash",
    ],
)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted >= 1 and result.failed == 0
