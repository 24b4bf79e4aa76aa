"""Executor factories: the engine builds the local executor itself and finds any other by
name in the `gaudi_serve.executors` entry point group, never by importing it."""

from __future__ import annotations

import pytest

from engine import EngineConfig
from engine.executor import (
    EXECUTOR_ENTRY_POINT_GROUP,
    TENSOR_PARALLEL_EXECUTOR,
    create_local_executor,
    default_executor_factory,
    load_executor_factory,
)


def test_tp_size_1_needs_no_entry_point():
    assert default_executor_factory(EngineConfig(tp_size=1)) is create_local_executor


def test_tp_size_above_1_finds_shardings_factory_by_entry_point():
    from sharding.factory import create_executor

    assert load_executor_factory(TENSOR_PARALLEL_EXECUTOR) is create_executor
    assert default_executor_factory(EngineConfig(tp_size=2)) is create_executor


def test_a_missing_factory_names_the_group_and_what_it_holds():
    with pytest.raises(LookupError) as info:
        load_executor_factory("no-such-executor")
    message = str(info.value)
    assert EXECUTOR_ENTRY_POINT_GROUP in message and "'no-such-executor'" in message
    assert f"'{TENSOR_PARALLEL_EXECUTOR}'" in message and "executor_factory=" in message
