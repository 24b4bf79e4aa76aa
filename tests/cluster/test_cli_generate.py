from __future__ import annotations

import subprocess
import sys

from cluster.commands.cli import main


def test_generate_prints_prompt_and_continuation(tiny_model_dir, capsys):
    model = str(tiny_model_dir("llama"))
    code = main(
        ["generate", "def fib(n):", "--model", model, "--max-tokens", "8", "--device", "cpu"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("def fib(n):") and len(out) > len("def fib(n):\n")


def test_generate_bad_value_exits_2_naming_the_field(tiny_model_dir, capsys):
    model = str(tiny_model_dir("llama"))
    assert main(["generate", "x", "--model", model, "--top-p", "0"]) == 2
    assert "top_p must be a number in (0, 1]" in capsys.readouterr().err


def test_console_script_help_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "cluster.commands.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in ("generate", "up", "plan", "audit", "config"):
        assert name in out
