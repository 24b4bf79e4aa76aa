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


def test_profile_refuses_tensor_parallel(tmp_path, capsys):
    config = write_config(tmp_path, tp_size=2)
    assert main(["profile", "--config", str(config), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "tp_size 2" in err and "tp_size 1 only" in err


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
