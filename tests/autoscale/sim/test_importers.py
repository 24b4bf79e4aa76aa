"""Importers of published traces, on small samples written here in each format: times,
options (window, scale, limit), skipped rows, Mooncake's prefix mapping, and errors that
name the file, the line and the column."""

from __future__ import annotations

import json

import pytest

from autoscale.sim.importers import (
    ImportOptions,
    SourceRow,
    TraceImportError,
    import_trace,
    mooncake_prefixes,
    read_azure,
    read_burstgpt,
    read_mooncake,
)
from autoscale.sim.trace import TraceRequest, prompt_token_ids

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:51.1,0,5
2023-11-16 18:15:47.0000000,879,20
2023-11-16 18:16:00,52,0
"""

BURSTGPT = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,472,18,490,Conversation log
45,ChatGPT,1087,0,1087,Conversation log
118,GPT-4,417,276,693,Conversation log
200,ChatGPT,1360,8,1368,API log
"""


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def _mooncake(tmp_path, rows: list[dict]):
    return _write(tmp_path, "m.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def test_azure_times_are_relative_to_the_first_row_and_sorted(tmp_path):
    result = read_azure(_write(tmp_path, "a.csv", AZURE))
    assert result.requests == [
        TraceRequest(0.0, 374, 44),
        TraceRequest(0.31941, 879, 20),
        TraceRequest(4.314579, 396, 109),
    ]
    assert result.num_rows == 5
    assert result.skipped == {"no_prompt_tokens": 1, "no_output_tokens": 1}


def test_azure_timezone_offsets(tmp_path):
    text = (
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-10 00:00:00.009930+00:00,10,2\n"
        "2024-05-10 02:00:01.009930+02:00,11,3\n"
    )
    result = read_azure(_write(tmp_path, "a.csv", text))
    assert [r.arrival_s for r in result.requests] == [0.0, 1.0]


def test_burstgpt_skips_and_counts_failures(tmp_path):
    result = read_burstgpt(_write(tmp_path, "b.csv", BURSTGPT))
    assert result.requests == [
        TraceRequest(0.0, 472, 18),
        TraceRequest(113.0, 417, 276),
        TraceRequest(195.0, 1360, 8),
    ]
    assert result.skipped == {"failed": 1}
    assert result.num_rows == 4


def test_options_window_scale_and_limit(tmp_path):
    path = _write(tmp_path, "b.csv", BURSTGPT)
    # Window [100, 300) s from the first row (t=5): rows at 118 and 200, re-based to 0.
    windowed = import_trace("burstgpt", path, ImportOptions(start_s=100, end_s=300))
    assert [r.arrival_s for r in windowed.requests] == [0.0, 82.0]
    faster = import_trace("burstgpt", path, ImportOptions(time_scale=0.5))
    assert [r.arrival_s for r in faster.requests] == [0.0, 56.5, 97.5]
    first_two = import_trace("burstgpt", path, ImportOptions(max_requests=2))
    assert len(first_two.requests) == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (ImportOptions(time_scale=0), r"time_scale must be a number > 0"),
        (ImportOptions(max_requests=0), r"max_requests must be >= 1"),
        (ImportOptions(start_s=5, end_s=5), r"end_s \(5\) must be after start_s \(5\)"),
    ],
)
def test_bad_options(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        import_trace("azure", _write(tmp_path, "a.csv", AZURE), options)


def test_unknown_format_lists_the_allowed_ones(tmp_path):
    with pytest.raises(ValueError, match=r"format must be one of \['azure', 'burstgpt', 'moon"):
        import_trace("sharegpt", tmp_path / "x")


@pytest.mark.parametrize(
    ("reader", "text", "message"),
    [
        (read_azure, "", r"a\.csv: line 1: empty file"),
        (read_azure, "TIME,ContextTokens\n", r"line 1: header lacks column\(s\) \['TIMESTAMP'"),
        (
            read_azure,
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,12,x\n",
            r"a\.csv: line 2, column 'GeneratedTokens': expected an integer >= 0, got 'x'",
        ),
        (
            read_azure,
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,12,1\nyesterday,1,1\n",
            r"line 3, column 'TIMESTAMP': expected a datetime like",
        ),
        (
            read_azure,
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-13-16 18:15:46,12,1\n",
            r"line 2, column 'TIMESTAMP': not a valid date and time",
        ),
        (
            read_azure,
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,-3,1\n",
            r"line 2, column 'ContextTokens': expected an integer >= 0, got '-3'",
        ),
        (
            read_azure,
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,12\n",
            r"line 2: 2 fields, the header has 3",
        ),
        (
            read_burstgpt,
            BURSTGPT.replace("118,GPT-4", "soon,GPT-4"),
            r"line 4, column 'Timestamp': expected a number of seconds, got 'soon'",
        ),
    ],
)
def test_csv_errors_name_file_line_and_column(tmp_path, reader, text, message):
    with pytest.raises(TraceImportError, match=message):
        reader(_write(tmp_path, "a.csv", text))


def test_mooncake_prefixes_for_a_conversation_and_a_shared_system_prompt(tmp_path):
    rows = [
        # a conversation: every turn extends the last
        {"timestamp": 1000, "input_length": 1000, "output_length": 10, "hash_ids": [1, 2]},
        {"timestamp": 1500, "input_length": 1600, "output_length": 20, "hash_ids": [1, 2, 3, 4]},
        {"timestamp": 2000, "input_length": 2200, "output_length": 30, "hash_ids": [1, 2, 3, 4, 5]},
        # a system prompt [7] shared by two unrelated questions
        {"timestamp": 2500, "input_length": 700, "output_length": 5, "hash_ids": [7, 8]},
        {"timestamp": 3000, "input_length": 900, "output_length": 6, "hash_ids": [7, 9]},
        # nothing shared
        {"timestamp": 3500, "input_length": 100, "output_length": 7, "hash_ids": [11]},
    ]
    result = read_mooncake(_mooncake(tmp_path, rows))
    assert [r.arrival_s for r in result.requests] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert [(r.prefix_id, r.prefix_tokens) for r in result.requests] == [
        ("mooncake-0", 1000),  # all of it: the next turn finds it cached (capped at 1000)
        ("mooncake-0", 1600),  # 4 blocks: the third turn reuses them
        ("mooncake-0", 2048),  # 4 blocks shared with turn 2
        ("mooncake-3", 512),
        ("mooncake-3", 512),
        (None, 0),
    ]
    # Exact for chains and stars: as many reusable tokens as in the source.
    assert result.notes["source_reusable_tokens"] == 1000 + 1600 + 512
    assert result.notes["mapped_reusable_tokens"] == result.notes["source_reusable_tokens"]
    # The replayed prompts share the same tokens as the source's blocks.
    ids = [prompt_token_ids(r, i, 5000) for i, r in enumerate(result.requests)]
    assert ids[1][:1000] == ids[0] and ids[2][:1600] == ids[1][:1600]
    assert ids[3][:512] == ids[4][:512] and ids[3][512:] != ids[4][512:700]


def test_mooncake_mapping_over_shares_a_deep_branch_and_says_so():
    block = 4
    rows = [
        SourceRow(0, 12, 1, (1, 2, 3)),
        SourceRow(1, 12, 1, (1, 2, 4)),  # shares 2 blocks with row 0
        SourceRow(2, 12, 1, (1, 5, 6)),  # shares 1 block with rows 0 and 1
        SourceRow(3, 12, 1, (1, 5, 7)),  # shares 2 with row 2: row 2's prefix grows to 2
    ]
    prefixes, notes = mooncake_prefixes(rows, block_tokens=block)
    assert prefixes == [("mooncake-0", 8), ("mooncake-0", 8), ("mooncake-0", 8), ("mooncake-0", 8)]
    # Source: 0 + 8 + 4 + 8; mapped: rows 1, 2, 3 each find 8 tokens of an earlier one.
    assert notes == {"source_reusable_tokens": 20.0, "mapped_reusable_tokens": 24.0}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{oops", r"m\.jsonl: line 2: not JSON"),
        ("[1]", r"line 2: expected a JSON object"),
        ('{"timestamp": 1, "input_length": 5}', r"line 2, column 'output_length': missing"),
        (
            '{"timestamp": "x", "input_length": 5, "output_length": 1}',
            r"line 2, column 'timestamp': expected a number >= 0, got 'x'",
        ),
        (
            '{"timestamp": 1, "input_length": 5.5, "output_length": 1}',
            r"line 2, column 'input_length': expected an integer, got 5.5",
        ),
        (
            '{"timestamp": 1, "input_length": 5, "output_length": 1, "hash_ids": [1, "a"]}',
            r"line 2, column 'hash_ids': expected a list of integers",
        ),
    ],
)
def test_mooncake_errors_name_file_line_and_column(tmp_path, line, message):
    good = '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]}'
    path = _write(tmp_path, "m.jsonl", good + "\n" + line + "\n")
    with pytest.raises(TraceImportError, match=message):
        read_mooncake(path)


def test_mooncake_window_applies_before_the_prefix_mapping(tmp_path):
    rows = [
        {"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [1, 2]},
        {"timestamp": 5000, "input_length": 600, "output_length": 1, "hash_ids": [1, 2]},
        {"timestamp": 6000, "input_length": 600, "output_length": 0, "hash_ids": [1, 2]},
    ]
    result = read_mooncake(_mooncake(tmp_path, rows), ImportOptions(start_s=1.0))
    assert result.requests == [TraceRequest(0.0, 600, 1)]  # its partner is outside the window
    assert result.skipped == {"no_output_tokens": 1}
    assert result.num_rows == 3
