"""Admission control's rule (autoscale/admission.py)."""

from __future__ import annotations

import doctest

import pytest

from autoscale import admission
from autoscale.admission import admission_retry_after_s


def test_module_examples():
    result = doctest.testmod(admission)
    assert result.attempted >= 1 and result.failed == 0


def test_refused_only_at_the_replica_bound_and_over_the_limit():
    assert admission_retry_after_s(7.2, 2, 2, 5.0) == 3.0  # drains to the limit in 2.2 s
    assert admission_retry_after_s(5.1, 2, 2, 5.0) == 1.0  # at least one second
    assert admission_retry_after_s(7.2, 3, 2, 5.0) == 3.0  # over the bound counts too


@pytest.mark.parametrize(
    ("least_wait_s", "num_replicas", "max_replicas", "limit"),
    [
        (7.2, 1, 2, 5.0),  # the autoscaler can still add a replica
        (5.0, 2, 2, 5.0),  # at the limit, not over
        (None, 2, 2, 5.0),  # a replica without step times: unknown
        (7.2, 2, None, 5.0),  # the bound is unknown
        (7.2, 2, 2, None),  # no limit set
    ],
)
def test_admitted_otherwise(least_wait_s, num_replicas, max_replicas, limit):
    assert admission_retry_after_s(least_wait_s, num_replicas, max_replicas, limit) is None
