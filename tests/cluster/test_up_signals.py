"""`gaudi-serve up` in a subprocess, stopped by SIGINT or SIGTERM in each phase before it
serves (the serving phase: tests/cluster/test_up.py), and failing instead of waiting on
what cannot be placed. Each run must end cleanly: exit code, a "stopped" line, no process
of its Ray left, no DeepSpeed buffer left in /dev/shm.

The runs are few on purpose (each starts a Ray): the warm-up and waiting-for-resources
phases share one run per signal, since one replica of a TP model warms up while the
second waits for the CPUs the first holds; one more run forces the stop with a second
signal.
"""

from __future__ import annotations

import signal

import pytest
import yaml

from cluster.commands import up
from engine.assets import default_model_path
from sharding.dist import SHM_BUFFER_PREFIX, SHM_DIR
from tests.cluster.up_process import HANG_GUARD_S, assert_nothing_left_behind, gaudi_serve_up
from tests.deployments.serve_fixtures import free_port, model_entry, wait_until

SIGNALS = [signal.SIGINT, signal.SIGTERM]


def shm_buffers() -> set:
    return set(SHM_DIR.glob(f"{SHM_BUFFER_PREFIX}_*"))


def write_config(tmp_path, model_dir, **entry) -> str:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"models": [{**model_entry("tiny", model_dir), **entry}]}))
    return str(path)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_before_ray_is_up_stops_cleanly(sig, tiny_model_dir, tmp_path):
    config = write_config(tmp_path, tiny_model_dir("llama"))
    shm_before = shm_buffers()  # a buffer another run left is not this run's
    with gaudi_serve_up("--config", config, "--num-cpus", "2", "--port", str(free_port())) as run:
        run.wait_for_line("starting a local Ray")
        run.process.send_signal(sig)
        code, output = run.finish()
        assert code == 0, output
        assert "gaudi-serve: stopped" in output and "deploying" not in output
        assert_nothing_left_behind(run, shm_before)


@pytest.mark.parametrize(
    ("sig", "num_signals"),
    [(signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGTERM, 2)],
    ids=["SIGINT", "SIGTERM", "SIGTERM-twice"],
)
def test_a_signal_while_warming_up_and_waiting_for_resources_stops_cleanly(
    sig, num_signals, tiny_model_dir, tmp_path
):
    # Two TP-2 replicas on 2 CPUs: the first takes both and warms up (a TP group with
    # its /dev/shm buffers); the second waits for resources. A second signal forces the
    # stop: Serve's graceful shutdown is skipped, Ray still goes, and the killed ranks'
    # buffers with it.
    config = write_config(tmp_path, tiny_model_dir("llama"), tp_size=2, serve={"num_replicas": 2})
    shm_before = shm_buffers()
    argv = ["--config", config, "--num-cpus", "2", "--port", str(free_port())]
    with gaudi_serve_up(*argv) as run:
        line = run.wait_for_line("waiting for resources")
        assert "tiny needs 2 x {'CPU': 1} on one node per replica" in line
        assert "tiny 0/2 replicas running" in line
        wait_until(lambda: shm_buffers() - shm_before, timeout_s=HANG_GUARD_S)  # TP group up
        run.process.send_signal(sig)
        if num_signals == 2:
            run.wait_for_line("stopping cleanly (send it again to force)")
            run.process.send_signal(sig)
        code, output = run.finish()
        assert code == (0 if num_signals == 1 else up.EXIT_FORCED), output
        assert ("skipped Serve's graceful shutdown" in output) == (num_signals == 2)
        assert "gaudi-serve: stopped" in output and "is up at" not in output
        assert_nothing_left_behind(run, shm_before)


def test_replicas_that_cannot_be_placed_fail_after_the_placement_timeout(tiny_model_dir, tmp_path):
    # One CPU, two replicas of one CPU each: the second can never be placed.
    config = write_config(tmp_path, tiny_model_dir("llama"), serve={"num_replicas": 2})
    shm_before = shm_buffers()
    argv = ["--config", config, "--num-cpus", "1", "--port", str(free_port())]
    with gaudi_serve_up(*argv, "--placement-timeout-s", "1") as run:
        code, output = run.finish()
        assert code == up.EXIT_FAILED, output
        assert "replicas of 'tiny' could not be placed within" in output
        assert "tiny needs {'CPU': 1} per replica" in output
        assert "the cluster has 1 node(s): CPU 1" in output
        assert "--placement-timeout-s" in output
        assert "gaudi-serve: stopped" in output
        assert_nothing_left_behind(run, shm_before)


def test_tp_the_kv_heads_do_not_allow_fails_before_starting_ray():
    # The bundled model has 2 KV heads (pinned: the default, SmolLM2 when prepared, has 3).
    pycoder = str(default_model_path("pycoder"))
    with gaudi_serve_up("--model", pycoder, "--tp", "4", "--port", str(free_port())) as run:
        code, output = run.finish()
    assert code == up.EXIT_INVALID, output
    assert "model 'pycoder'" in output and "has 2 KV heads" in output
    assert "tp_size 4 does not divide" in output and "valid tp_size values: [1, 2]" in output
    assert "starting a local Ray" not in output


def test_a_device_the_cluster_lacks_fails_with_what_it_has(tiny_model_dir, tmp_path):
    config = write_config(tmp_path, tiny_model_dir("llama"), device="hpu")
    shm_before = shm_buffers()
    with gaudi_serve_up("--config", config, "--num-cpus", "2", "--port", str(free_port())) as run:
        code, output = run.finish()
        assert code == up.EXIT_INVALID, output
        assert "model 'tiny' (device hpu, tp_size 1) needs {'CPU': 1, 'HPU': 1}" in output
        assert "the cluster has no HPU: 1 node(s): CPU 2" in output
        assert "deploying" not in output
        assert_nothing_left_behind(run, shm_before)
