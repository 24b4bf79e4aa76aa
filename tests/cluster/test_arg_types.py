"""The commands' shared argparse converters (cluster/commands/arg_types.py)."""

from __future__ import annotations

import argparse

import pytest

from cluster.commands.arg_types import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)


@pytest.mark.parametrize(
    ("convert", "good", "bad", "message"),
    [
        (positive_int, [("1", 1), ("16", 16)], ["0", "-2", "1.5", "x"], "a positive integer"),
        (non_negative_int, [("0", 0), ("3", 3)], ["-1", "x"], "an integer >= 0"),
        (positive_float, [("0.5", 0.5), ("2", 2.0)], ["0", "-1", "inf", "nan", "x"], "> 0"),
        (non_negative_float, [("0", 0.0), ("1e-3", 1e-3)], ["-0.1", "inf", "x"], ">= 0"),
    ],
)
def test_converters_accept_their_range_and_name_it_otherwise(convert, good, bad, message):
    for text, value in good:
        assert convert(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            convert(text)
