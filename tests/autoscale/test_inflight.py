"""In-flight accounting: counted at routing time, out at first token and completion."""

from __future__ import annotations

import doctest

import pytest

from autoscale import inflight
from autoscale.inflight import InFlight, ReplicaLoad


def test_docstring_example():
    result = doctest.testmod(inflight)
    assert result.attempted >= 1 and result.failed == 0


def test_counts_return_to_idle():
    work = InFlight()
    work.on_routed("a", 1, 300)
    work.on_routed("b", 2, 50)
    work.on_routed("a", 3, 0)  # everything cached but the last token? still a request
    work.on_first_token(1)
    work.on_first_token(1)  # repeated: no change
    work.on_first_token("unknown")
    assert work.load("a") == ReplicaLoad(num_requests=2, num_queued_tokens=0, num_decoding=1)
    assert work.on_finished(3) and work.on_finished(1) and work.on_finished(2)
    assert work.load("a") == work.load("b") == ReplicaLoad(0, 0, 0)


def test_a_removed_replica_forgets_its_requests():
    work = InFlight()
    work.on_routed("a", 1, 300)
    work.on_routed("b", 2, 10)
    work.remove_replica("a")
    assert work.load("a") == ReplicaLoad(0, 0, 0)
    assert not work.on_finished(1)  # its completion arrives late: nothing to count out
    assert work.load("b") == ReplicaLoad(1, 10, 0)


def test_bad_calls_raise():
    work = InFlight()
    work.on_routed("a", 1, 10)
    with pytest.raises(ValueError, match="already in flight"):
        work.on_routed("b", 1, 10)
    with pytest.raises(ValueError, match="num_prefill_tokens"):
        work.on_routed("b", 2, -1)
