"""`gaudi-serve up`: config from the command line, and a real run in a subprocess that
serves HTTP, shows its replicas through `gaudi-serve status`, drains an in-flight stream on
SIGTERM, exits 0 and leaves no Ray process."""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import threading

import httpx
import psutil
import pytest
import yaml

from cluster.commands import up
from tests.cluster.up_process import gaudi_serve_up
from tests.deployments.serve_fixtures import assert_all_exited, free_port, model_entry

READY_TIMEOUT_S = 300  # a hang guard, not a speed check: first starts are slow on 2 cores


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    up.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_command_line_overrides_the_config(tiny_model_dir, tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"models": [model_entry("a", tiny_model_dir("llama"))]}))
    config = up.build_config(parse("--config", str(path), "--tp", "2", "--port", "9001"))
    assert config.models[0].tp_size == 2 and config.http.port == 9001
    assert config.models[0].engine.max_model_len == 128  # the file's settings stay

    model_dir = tiny_model_dir("llama")
    config = up.build_config(parse("--model", str(model_dir), "--host", "0.0.0.0"))
    assert [(m.name, m.path) for m in config.models] == [(model_dir.name, model_dir)]
    assert config.http.host == "0.0.0.0"
    assert "curl http://127.0.0.1:8000/v1/completions" in up.ready_message(config)


def test_bad_arguments_exit_2_with_the_problem(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("models: [{name: a, tp_size: 3}]\n")
    assert up.run(parse("--config", str(path))) == up.EXIT_INVALID
    assert "models.0.tp_size" in capsys.readouterr().err
    assert up.run(parse("--name", "x")) == up.EXIT_INVALID
    assert "--name needs --model" in capsys.readouterr().err
    assert up.run(parse("--model", str(tmp_path / "nowhere"))) == up.EXIT_INVALID
    assert "nowhere" in capsys.readouterr().err


@pytest.fixture
def served(tiny_model_dir, tmp_path):
    """`gaudi-serve up` in a subprocess, up; yields (UpProcess, base URL)."""
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"models": [model_entry("tiny", tiny_model_dir("llama"))]}))
    port = free_port()
    argv = ["--config", str(path), "--port", str(port), "--num-cpus", "4"]
    with gaudi_serve_up(*argv, "--drain-timeout-s", "60") as run:
        run.wait_for_line("is up at")
        yield run, f"http://127.0.0.1:{port}"


def test_up_serves_and_drains_on_sigterm(served):
    run, url = served
    process = run.process
    body = {"model": "tiny", "prompt": "def f(x):", "max_tokens": 4}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4

    # `up` says how to see the replicas, and that command shows them.
    status_command = run.wait_for_line("Replica states: ").split(": ", 1)[1]
    assert status_command.startswith("gaudi-serve status --address ")
    status = subprocess.run(
        [sys.executable, "-m", "cluster.commands.cli", *status_command.split()[1:]],
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT_S,
    )
    assert status.returncode == 0, status.stderr
    assert "application gaudi-serve: RUNNING" in status.stdout
    assert "deployment tiny: HEALTHY" in status.stdout
    assert re.search(r"replica \w+: RUNNING \(node [\d.]+, pid \d+\)", status.stdout)

    ray_processes = psutil.Process(process.pid).children(recursive=True)
    events: list[str] = []
    started = threading.Event()

    def stream():
        long = {**body, "max_tokens": 100, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=long, timeout=120) as r:
            for line in r.iter_lines():
                if line:
                    events.append(line)
                    started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(60)
    process.send_signal(signal.SIGTERM)
    reader.join(120)
    assert process.wait(120) == 0
    run.wait_for_line("stopped")

    # The request in flight at SIGTERM ran to its end.
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert_all_exited(ray_processes)
