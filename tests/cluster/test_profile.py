"""`gaudi-serve profile` on the bundled pycoder model: from a serving config or a model
folder, it writes a Perfetto-readable trace and a report, and refuses bad arguments."""

from __future__ import annotations

import json
import textwrap

import pytest

from cluster.commands.cli import main
from engine import default_model_path

PYCODER = default_model_path("pycoder")


def write_config(tmp_path, tp_size: int = 1):
    config = tmp_path / "serve.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            models:
              - name: coder
                path: {PYCODER}
                device: cpu
                dtype: float32
                tp_size: {tp_size}
                engine:
                  max_num_seqs: 4
                  max_model_len: 128
                  max_num_batched_tokens: 128
                  kv_cache_tokens: 1024
                  warmup: false
            """
        )
    )
    return config


def test_profile_from_config_writes_trace_and_report(tmp_path, capsys):
    out = tmp_path / "prof"
    args = ["profile", "--config", str(write_config(tmp_path)), "--model", "coder"]
    assert main([*args, "--steps", "6", "--out", str(out), "--max-tokens", "4"]) == 0
    printed = capsys.readouterr().out
    assert "matmul %" in printed and "host %" in printed and "trace.json" in printed

    trace = json.loads((out / "trace.json").read_text())
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    assert events and all(isinstance(e["name"], str) and e["dur"] >= 0 for e in events)
    report = json.loads((out / "report.json").read_text())
    assert report["num_steps"] == 6 and report["device"] == "cpu"
    assert {"prefill", "decode"} <= set(report["by_kind"])
    for step in report["steps"]:
        assert sum(step["shares_ms"].values()) == pytest.approx(step["wall_ms"], rel=0.05)


def test_profile_model_folder_prints_json(tmp_path, capsys):
    out = tmp_path / "prof"
    code = main(
        [
            *("profile", "--model", str(PYCODER), "--device", "cpu", "--steps", "3"),
            *("--out", str(out), "--num-prompts", "2", "--prompt-len", "8", "--json"),
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_steps"] == 3 and (out / "trace.json").is_file()


def test_profile_tensor_parallel_writes_a_trace_and_report_per_rank(tmp_path, capsys):
    # tp_size 2 on the CPU: two Ray rank actors (DeepSpeed AutoTP over gloo), each
    # profiling the same steps; the row-parallel all-reduces are communication
    out = tmp_path / "prof"
    args = ["profile", "--config", str(write_config(tmp_path)), "--tp-size", "2"]
    assert main([*args, "--steps", "5", "--out", str(out), "--max-tokens", "4"]) == 0
    printed = capsys.readouterr().out
    assert "TP rank 0 of 2" in printed and "TP rank 1 of 2" in printed
    for rank in (0, 1):
        trace = json.loads((out / f"trace.rank{rank}.json").read_text())
        events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
        assert events and all(isinstance(e["name"], str) and e["dur"] >= 0 for e in events)
        assert sum(e["name"].startswith("step ") for e in events) == 5
        report = json.loads((out / f"report.rank{rank}.json").read_text())
        assert (report["tp_rank"], report["tp_size"], report["num_steps"]) == (rank, 2, 5)
        assert report["workload"]["max_tokens"] == 4 and {"prefill", "decode"} <= set(
            report["by_kind"]
        )
        for step in report["steps"]:
            assert sum(step["shares_ms"].values()) == pytest.approx(step["wall_ms"], rel=0.05)
            assert step["shares_ms"]["communication"] > 0
    assert not (out / "trace.json").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "no-such-model"], "--model: no model 'no-such-model'; served: coder"),
        (["--num-prompts", "9", "--prompt-len", "200"], "exceeds the engine's max_model_len"),
    ],
)
def test_profile_bad_values_exit_2(tmp_path, capsys, extra, message):
    config = write_config(tmp_path)
    args = ["profile", "--config", str(config), "--out", str(tmp_path / "p"), *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_profile_model_name_without_config_exits_2(tmp_path, capsys):
    assert main(["profile", "--model", "coder", "--out", str(tmp_path)]) == 2
    assert "--model 'coder' is not a model folder" in capsys.readouterr().err


@pytest.mark.parametrize("steps", ["0", "x"])
def test_profile_steps_must_be_positive(tmp_path, capsys, steps):
    with pytest.raises(SystemExit) as exc:
        main(["profile", "--model", str(PYCODER), "--steps", steps, "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "--steps: expected a positive integer" in capsys.readouterr().err
