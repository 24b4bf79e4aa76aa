"""The prefix-cache block hash the block manager and a router share."""

from __future__ import annotations

import doctest
import struct
import subprocess
import sys

import pytest

from engine import prefix_hash
from engine.prefix_hash import block_hash, prefix_block_hashes


def test_docstring_example():
    result = doctest.testmod(prefix_hash)
    assert result.attempted >= 1 and result.failed == 0


def test_hashes_are_chained_over_the_whole_prefix():
    a = prefix_block_hashes([1, 2, 3, 4, 5, 6, 7, 8], 4)
    b = prefix_block_hashes([9, 2, 3, 4, 5, 6, 7, 8], 4)
    assert a[0] != b[0] and a[1] != b[1]  # same second block, different prefix
    assert len(set(a)) == 2


def test_only_full_blocks_are_hashed_and_num_blocks_caps():
    tokens = list(range(23))
    assert len(prefix_block_hashes(tokens, 8)) == 2
    assert prefix_block_hashes(tokens, 8, num_blocks=1) == prefix_block_hashes(tokens, 8)[:1]
    assert prefix_block_hashes(tokens, 8, num_blocks=0) == []
    assert prefix_block_hashes(tokens[:7], 8) == []


def test_a_chain_continues_from_its_parent():
    tokens = list(range(100, 132))
    whole = prefix_block_hashes(tokens, 8)
    assert prefix_block_hashes(tokens[16:], 8, parent=whole[1]) == whole[2:]
    assert whole[0] == block_hash(None, tokens[:8])


def test_the_block_length_is_part_of_the_hash():
    assert block_hash(None, [1, 2]) != block_hash(None, [1, 2, 0])


def test_bad_input_raises():
    with pytest.raises(ValueError, match="block_size"):
        prefix_block_hashes([1, 2], 0)
    with pytest.raises(struct.error):
        block_hash(None, [-1])


def test_the_facade_name_loads_no_torch():
    code = (
        "import sys\n"
        "from engine import prefix_block_hashes\n"
        "assert len(prefix_block_hashes(list(range(32)), 16)) == 2\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
