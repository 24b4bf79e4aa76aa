"""StopSignal: the first SIGINT/SIGTERM asks for a stop, the second forces one (at the next
wait, or at once inside an interruptible section); the previous handlers come back on
uninstall."""

from __future__ import annotations

import os
import signal
import time

import pytest

from cluster.commands.stop_signal import ForcedStop, StopSignal


@pytest.fixture
def stop():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    stop = StopSignal().install()
    yield stop
    stop.uninstall()
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_first_signal_requests_a_stop_and_the_second_forces_it(stop):
    assert not stop.is_requested and not stop.wait(0.01)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.wait(5) and stop.is_requested and stop.count == 1
    os.kill(os.getpid(), signal.SIGINT)  # outside an interruptible section: only counted
    assert stop.is_forced and stop.count == 2
    with pytest.raises(ForcedStop):
        stop.wait(0.01)
    with pytest.raises(ForcedStop), stop.interruptible():  # too late to start one
        pytest.fail("an interruptible section must not start after a forced stop")


def test_inside_an_interruptible_section_the_second_signal_raises(stop):
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.wait(5)
    with pytest.raises(ForcedStop), stop.interruptible():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # blocked, as in a shutdown call; the handler raises


def test_a_stop_that_arrived_another_way_counts_once(stop, capfd):
    stop.request("SIGTERM while Ray was starting")
    assert stop.is_requested and stop.count == 1
    assert "SIGTERM while Ray was starting: stopping" in capfd.readouterr().err
