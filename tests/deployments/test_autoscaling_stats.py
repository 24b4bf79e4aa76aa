"""A replica's start-up as the autoscaler sees it (deployments/autoscaling_stats.py)."""

from __future__ import annotations

import time

import psutil

import deployments
from deployments import autoscaling_stats
from deployments.autoscaling_stats import POOLED_GAP_S, ReplicaAutoscalingStats, replica_started_at


def test_start_up_counts_from_the_process_start_unless_the_process_was_pooled(monkeypatch):
    created = psutil.Process().create_time()
    later = created + 100.0
    monkeypatch.setattr(deployments, "IMPORTED_AT", created + 2.0)  # imported soon after
    assert replica_started_at(later) == created  # a fresh process: its imports count
    monkeypatch.setattr(deployments, "IMPORTED_AT", created + POOLED_GAP_S + 5.0)
    assert replica_started_at(later) == created + POOLED_GAP_S + 5.0  # pooled: from import
    monkeypatch.setattr(deployments, "IMPORTED_AT", later + 60)  # never after now
    assert replica_started_at(later) == later


def test_startup_is_measured_at_ready(monkeypatch):
    monkeypatch.setattr(autoscaling_stats, "replica_started_at", lambda: time.time() - 12.0)
    stats = ReplicaAutoscalingStats()
    assert stats.startup_s is None
    stats.on_ready()
    assert 12.0 <= stats.startup_s < 60.0
