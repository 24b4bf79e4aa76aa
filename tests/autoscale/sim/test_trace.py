"""Trace files: round trip, every validation error, deterministic prompt ids, and the
`gaudi-serve trace stats` numbers."""

from __future__ import annotations

import json
import math

import pytest

from autoscale.sim.trace import (
    FIRST_TOKEN_ID,
    TraceError,
    TraceRequest,
    iter_token_prompts,
    parse_line,
    prompt_token_ids,
    read_trace,
    write_trace,
)
from autoscale.sim.trace_stats import format_stats, trace_stats

REQUESTS = [
    TraceRequest(0.0, 40, 8),
    TraceRequest(0.25, 100, 16, "system-a", 64),
    TraceRequest(0.25, 70, 4, "system-a", 32),
    TraceRequest(1.5, 12, 1, "system-b", 12),
]


def test_round_trip(tmp_path):
    path = tmp_path / "t.jsonl"
    assert write_trace(path, REQUESTS) == 4
    assert read_trace(path) == REQUESTS
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"arrival_s": 0.0, "prompt_tokens": 40, "output_tokens": 8}
    assert json.loads(lines[1])["prefix_id"] == "system-a"


def test_blank_lines_are_skipped_but_counted(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('\n{"arrival_s": 1, "prompt_tokens": 2, "output_tokens": 3}\n\n{"x": 1}\n')
    with pytest.raises(TraceError, match=r"t\.jsonl: line 4: unknown field"):
        read_trace(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", r"line 7: not JSON"),
        ("[1, 2]", r"line 7: expected a JSON object, got list"),
        ('{"arrival_s": 0, "prompt_tokens": 1, "output_tokens": 1, "foo": 1}', r"unknown field"),
        ('{"prompt_tokens": 1, "output_tokens": 1}', r"missing field 'arrival_s'"),
        ('{"arrival_s": 0, "output_tokens": 1}', r"missing field 'prompt_tokens'"),
        ('{"arrival_s": 0, "prompt_tokens": 1}', r"missing field 'output_tokens'"),
        ('{"arrival_s": 0, "prompt_tokens": 1.5, "output_tokens": 1}', r"prompt_tokens must be"),
        ('{"arrival_s": 0, "prompt_tokens": true, "output_tokens": 1}', r"prompt_tokens must be"),
        ('{"arrival_s": 0, "prompt_tokens": 1, "output_tokens": "2"}', r"output_tokens must be"),
        ('{"arrival_s": "0", "prompt_tokens": 1, "output_tokens": 1}', r"arrival_s must be"),
        ('{"arrival_s": -1, "prompt_tokens": 1, "output_tokens": 1}', r"arrival_s must be"),
        ('{"arrival_s": 0, "prompt_tokens": 0, "output_tokens": 1}', r"prompt_tokens must be >= 1"),
        ('{"arrival_s": 0, "prompt_tokens": 1, "output_tokens": 0}', r"output_tokens must be >= 1"),
        (
            '{"arrival_s": 0, "prompt_tokens": 4, "output_tokens": 1, "prefix_id": 3, '
            '"prefix_tokens": 2}',
            r"prefix_id must be a string",
        ),
        (
            '{"arrival_s": 0, "prompt_tokens": 4, "output_tokens": 1, "prefix_id": "a"}',
            r"prefix_id and prefix_tokens go together",
        ),
        (
            '{"arrival_s": 0, "prompt_tokens": 4, "output_tokens": 1, "prefix_tokens": 2}',
            r"prefix_id and prefix_tokens go together",
        ),
        (
            '{"arrival_s": 0, "prompt_tokens": 4, "output_tokens": 1, "prefix_id": "a", '
            '"prefix_tokens": 5}',
            r"prefix_tokens must be in \[0, prompt_tokens=4\]",
        ),
        (
            '{"arrival_s": 0, "prompt_tokens": 4, "output_tokens": 1, "prefix_id": "a", '
            '"prefix_tokens": 1.0}',
            r"prefix_tokens must be an integer",
        ),
    ],
)
def test_every_validation_error_names_line_and_field(text, message):
    with pytest.raises(TraceError, match=message) as info:
        parse_line(text, 7)
    assert str(info.value).startswith("line 7: ")


def test_non_finite_arrival_is_rejected():
    for value in (math.inf, math.nan):
        with pytest.raises(TraceError, match="arrival_s must be a finite number"):
            TraceRequest(value, 1, 1)


def test_arrivals_must_not_go_back(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trace(path, [TraceRequest(2.0, 1, 1), TraceRequest(1.0, 1, 1)])
    with pytest.raises(TraceError, match=r"line 2: arrival_s 1.0 is before the previous"):
        read_trace(path)


def test_prompt_ids_share_exactly_the_group_prefix():
    vocab = 1000
    a = prompt_token_ids(REQUESTS[1], 1, vocab)  # system-a, 64 prefix tokens
    b = prompt_token_ids(REQUESTS[2], 2, vocab)  # system-a, 32 prefix tokens
    c = prompt_token_ids(REQUESTS[3], 3, vocab)  # system-b
    assert (len(a), len(b), len(c)) == (100, 70, 12)
    assert a[:32] == b[:32]  # one stream per group: the shorter prefix is the longer's head
    assert a[32:40] != b[32:40]
    assert a[:12] != c
    assert all(FIRST_TOKEN_ID <= t < vocab for t in a + b + c)
    # Deterministic: the same ids again, from the same (prefix_id, index) alone.
    assert prompt_token_ids(REQUESTS[1], 1, vocab) == a
    assert prompt_token_ids(TraceRequest(9.0, 100, 1, "system-a", 64), 1, vocab) == a
    pairs = list(iter_token_prompts(REQUESTS, vocab))
    assert [ids for _, ids in pairs][1] == a
    with pytest.raises(ValueError, match="vocab_size must be over 32"):
        prompt_token_ids(REQUESTS[0], 0, FIRST_TOKEN_ID)


def test_trace_stats_numbers():
    stats = trace_stats(REQUESTS)
    assert stats["requests"] == 4
    assert stats["duration_s"] == 1.5
    assert stats["mean_rate"] == pytest.approx(3 / 1.5)
    assert stats["prompt_tokens_mean"] == pytest.approx((40 + 100 + 70 + 12) / 4)
    # sorted prompts 12, 40, 70, 100: p50 at position 1.5 -> 55
    assert stats["prompt_tokens_p50"] == pytest.approx(55.0)
    assert stats["prompt_tokens_max"] == 100
    assert stats["output_tokens_p50"] == pytest.approx(6.0)
    assert stats["num_prefix_groups"] == 2
    assert stats["prefixed_requests"] == 0.75
    assert stats["prefix_share"] == pytest.approx((64 + 32 + 12) / 222)
    assert "prefix_share" in format_stats(stats)


def test_trace_stats_of_nothing_is_null_not_zero():
    stats = trace_stats([])
    assert stats["requests"] == 0
    assert stats["mean_rate"] is None
    assert stats["prompt_tokens_p50"] is None
    assert stats["prefix_share"] is None


# -- gaudi-serve trace ------------------------------------------------------------------------
def _cli(argv: list[str]) -> int:
    from cluster.commands.cli import main

    return main(argv)


def test_cli_synth_then_stats(tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    argv = ["trace", "synth", "--kind", "bursty", "--rate", "5", "--duration", "60", "--cv", "2"]
    argv += ["--seed", "3", "--out", str(out), "--prompt-tokens", "uniform:16:64"]
    argv += ["--output-tokens", "lognormal:32:0.5:4:128", "--prefix-groups", "3:32:0.5:uniform"]
    assert _cli(argv) == 0
    requests = read_trace(out)
    assert f"wrote {len(requests)} requests" in capsys.readouterr().out
    assert all(16 <= r.prompt_tokens - r.prefix_tokens <= 64 for r in requests)
    assert {r.prefix_id for r in requests} == {None, "group-0", "group-1", "group-2"}
    first = out.read_bytes()
    assert _cli(argv) == 0 and out.read_bytes() == first  # the same seed, the same file
    assert _cli(["trace", "stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert stats == json.loads(json.dumps(trace_stats(requests)))
    assert _cli(["trace", "stats", str(out)]) == 0
    assert "prefix_share" in capsys.readouterr().out


def test_cli_import(tmp_path, capsys):
    source = tmp_path / "b.csv"
    source.write_text(
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "10,ChatGPT,30,5,35,Conversation log\n"
        "12,ChatGPT,40,0,40,Conversation log\n"
        "14,GPT-4,50,6,56,API log\n"
    )
    out = tmp_path / "t.jsonl"
    argv = ["trace", "import", "--format", "burstgpt", "--in", str(source), "--out", str(out)]
    assert _cli([*argv, "--time-scale", "0.5", "--max-requests", "5"]) == 0
    printed = capsys.readouterr().out
    assert "read 3 rows; wrote 2 requests" in printed and "skipped: 1 failed" in printed
    assert read_trace(out) == [TraceRequest(0.0, 30, 5), TraceRequest(2.0, 50, 6)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["synth", "--kind", "steady"], "argument --kind: invalid choice: 'steady'"),
        (["synth", "--kind", "poisson", "--rate", "0"], "argument --rate: expected a number > 0"),
        (
            ["synth", "--kind", "poisson", "--rate", "1", "--prompt-tokens", "uniform:9"],
            "argument --prompt-tokens: --prompt-tokens: bad value 'uniform:9'",
        ),
        (["import", "--format", "sharegpt"], "argument --format: invalid choice: 'sharegpt'"),
        (["import", "--format", "azure", "--max-requests", "0"], "argument --max-requests"),
        (["frobnicate"], "argument ACTION: invalid choice: 'frobnicate'"),
    ],
)
def test_cli_argument_errors_name_the_flag(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        _cli(["trace", *argv, "--seed", "1", "--duration", "1", "--out", str(tmp_path / "x")])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_bad_files_exit_2_naming_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"arrival_s": 0, "prompt_tokens": 1, "output_tokens": 1}\n{"arrival_s": 1}\n')
    assert _cli(["trace", "stats", str(bad)]) == 2
    assert f"{bad}: line 2: missing field 'prompt_tokens'" in capsys.readouterr().err
    source = tmp_path / "a.csv"
    source.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\nnope,1,1\n")
    argv = ["trace", "import", "--format", "azure", "--in", str(source), "--out", str(bad)]
    assert _cli(argv) == 2
    assert "a.csv: line 2, column 'TIMESTAMP'" in capsys.readouterr().err
    assert _cli(["trace", "stats", str(tmp_path / "missing.jsonl")]) == 2
    assert "No such file" in capsys.readouterr().err
    argv = ["trace", "synth", "--kind", "diurnal", "--rate", "1", "--duration", "5"]
    assert _cli([*argv, "--amplitude", "2", "--seed", "1", "--out", str(bad)]) == 2
    assert "--amplitude must be in [0, 1], got 2.0" in capsys.readouterr().err


def test_a_groups_shorter_prefix_is_the_start_of_its_longer_one():
    long = TraceRequest(0.0, 600, 8, prefix_id="sys", prefix_tokens=512)
    short = TraceRequest(1.0, 100, 8, prefix_id="sys", prefix_tokens=64)
    ids_long, ids_short = prompt_token_ids(long, 0, 1000), prompt_token_ids(short, 1, 1000)
    assert ids_short[:64] == ids_long[:64]
    assert all(FIRST_TOKEN_ID <= t < 1000 for t in ids_long + ids_short)
    assert prompt_token_ids(long, 0, 1000) == ids_long  # deterministic
