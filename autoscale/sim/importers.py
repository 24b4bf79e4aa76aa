"""Readers of published LLM request traces into TraceRequests.

    azure     Azure LLM inference traces (2023, 2024): CSV `TIMESTAMP,ContextTokens,
              GeneratedTokens`, TIMESTAMP a datetime such as `2023-11-16 18:15:46.6805900`
              (any number of fractional digits, an optional `+HH:MM` offset)
    burstgpt  BurstGPT: CSV `Timestamp,Model,Request tokens,Response tokens,Total tokens,
              Log Type`, Timestamp in seconds; a row with 0 response tokens is a failed
              request: skipped, and counted
    mooncake  Mooncake (FAST'25): JSONL `{"timestamp": ms, "input_length", "output_length",
              "hash_ids": [...]}`, one hash id per 512-token block (see `mooncake_prefixes`)

Each reader sorts the rows by time (stably), measures arrival_s from the first row, and
applies `ImportOptions` in this order: the time window (on the source's own clock, from its
first row), re-basing so the first kept request arrives at 0, the time scale, then the
request limit. A row with 0 prompt or output tokens cannot be replayed: it is skipped and
counted under its reason in `ImportResult.skipped`. A malformed row raises
TraceImportError naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

from autoscale.sim.trace import TraceRequest

FORMATS = ("azure", "burstgpt", "mooncake")
MOONCAKE_BLOCK_TOKENS = 512

__all__ = [
    "FORMATS",
    "MOONCAKE_BLOCK_TOKENS",
    "ImportOptions",
    "ImportResult",
    "SourceRow",
    "TraceImportError",
    "import_trace",
    "mooncake_prefixes",
    "read_azure",
    "read_burstgpt",
    "read_mooncake",
]


class TraceImportError(ValueError):
    """A source trace row that cannot be read; the message names file, line and column."""


class ImportOptions(NamedTuple):
    """`time_scale` multiplies arrival times (0.5 replays twice as fast, 2 half as fast);
    `max_requests` keeps the first N; `start_s`/`end_s` keep rows with start_s <= t < end_s,
    t in seconds from the source's first row (None: unbounded)."""

    time_scale: float = 1.0
    max_requests: int | None = None
    start_s: float | None = None
    end_s: float | None = None

    def check(self) -> None:
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ValueError(f"time_scale must be a number > 0, got {self.time_scale!r}")
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {self.max_requests!r}")
        if self.start_s is not None and self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")


class ImportResult(NamedTuple):
    """The imported requests, the source rows read, the rows skipped by reason, and
    format-specific facts (Mooncake: prefix tokens reusable in the source vs as mapped)."""

    requests: list[TraceRequest]
    num_rows: int
    skipped: dict[str, int]
    notes: dict[str, float]


class SourceRow(NamedTuple):
    """One usable row of a source trace, before the options apply."""

    time_s: float  # on the source's clock
    prompt_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()


def read_azure(path: str | Path, options: ImportOptions = ImportOptions()) -> ImportResult:
    """An Azure LLM inference trace (see the module doc)."""
    columns = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
    rows, skipped = [], {}
    for record, col in _csv_rows(path, columns):
        row = SourceRow(
            _datetime_s(record["TIMESTAMP"], col("TIMESTAMP")),
            _int(record["ContextTokens"], col("ContextTokens")),
            _int(record["GeneratedTokens"], col("GeneratedTokens")),
        )
        _keep(row, rows, skipped)
    return _finish(rows, skipped, options, {})


def read_burstgpt(path: str | Path, options: ImportOptions = ImportOptions()) -> ImportResult:
    """A BurstGPT trace (see the module doc); failed rows are counted as "failed"."""
    columns = ("Timestamp", "Request tokens", "Response tokens")
    rows, skipped = [], {}
    for record, col in _csv_rows(path, columns):
        row = SourceRow(
            _float(record["Timestamp"], col("Timestamp")),
            _int(record["Request tokens"], col("Request tokens")),
            _int(record["Response tokens"], col("Response tokens")),
        )
        if row.output_tokens == 0:
            skipped["failed"] = skipped.get("failed", 0) + 1
            continue
        _keep(row, rows, skipped)
    return _finish(rows, skipped, options, {})


def read_mooncake(path: str | Path, options: ImportOptions = ImportOptions()) -> ImportResult:
    """A Mooncake trace (see the module doc and `mooncake_prefixes` for the prefix mapping).
    Notes: `source_reusable_tokens` (prompt tokens each request shares with an earlier one
    in the source, summed) and `mapped_reusable_tokens` (the same under the mapping)."""
    rows, skipped = [], {}
    with open(path, encoding="utf-8") as f:
        for line_no, text in enumerate(f, start=1):
            if text.strip():
                _keep(_mooncake_row(text, _where(path, line_no)), rows, skipped)
    kept = _select(rows, options)
    prefixes, notes = mooncake_prefixes(kept)
    requests = [
        TraceRequest(t, row.prompt_tokens, row.output_tokens, prefix_id, prefix_tokens)
        for t, row, (prefix_id, prefix_tokens) in zip(
            _times(kept, options), kept, prefixes, strict=True
        )
    ]
    return ImportResult(requests, len(rows) + sum(skipped.values()), skipped, notes)


def mooncake_prefixes(
    rows: list[SourceRow], block_tokens: int = MOONCAKE_BLOCK_TOKENS
) -> tuple[list[tuple[str | None, int]], dict[str, float]]:
    """(prefix_id, prefix_tokens) of each row (in arrival order) from its hash ids.

    A trace request's prompt is one prefix group's token stream cut at prefix_tokens, then
    tokens of its own (`trace.prompt_token_ids`): two requests of one group share exactly
    min(their prefix_tokens) tokens, and of different groups none. Mooncake's hash ids
    describe a tree of blocks, which that cannot always express, so the mapping is greedy:

    1. k = the longest leading run of a request's hash ids that some earlier request also
       starts with (blocks found through a trie of (parent, hash id) nodes);
    2. k = 0: the request opens a group of its own, with no prefix yet;
       k > 0: it joins the group of the latest earlier request p that starts with those k
       blocks, with k blocks of prefix, and p's prefix grows to at least k blocks (so p's
       prompt holds the blocks the request will find cached);
    3. blocks are counted as 512 tokens, capped at the prompt length (a last block may be
       partial); a request whose prefix stays 0 has no prefix_id.

    Exact for chains (a conversation whose every turn extends the last) and for stars (a
    shared system prompt, then unique text). A tree that branches below its group's first
    fork is not: requests on different branches then share min(prefix) tokens in the
    mapped trace, more than in the source. The notes count prompt tokens reusable from an
    earlier request in the source (`source_reusable_tokens`) and as mapped
    (`mapped_reusable_tokens`); they differ only where the mapping over-shares."""
    nodes: dict[tuple[int, int], int] = {}  # (parent node, hash id) -> node, 0 = the root
    last_at: dict[int, int] = {}  # node -> the latest row whose hash ids pass through it
    group_of: list[int] = []  # row -> the row that opened its group
    blocks: list[int] = []  # row -> prefix length in blocks
    source_reusable = 0
    for index, row in enumerate(rows):
        node, shared, parent = 0, 0, None
        for depth, hash_id in enumerate(row.hash_ids, start=1):
            child = nodes.get((node, hash_id))
            if child is None:
                child = nodes[(node, hash_id)] = len(nodes) + 1
            elif shared == depth - 1:
                shared, parent = depth, last_at[child]
            node = child
            last_at[node] = index
        if parent is not None:  # neither prompt may end inside the shared blocks
            source_reusable += min(
                shared * block_tokens, row.prompt_tokens, rows[parent].prompt_tokens
            )
        if parent is None:
            group_of.append(index)
            blocks.append(0)
        else:
            group_of.append(group_of[parent])
            blocks.append(shared)
            blocks[parent] = max(blocks[parent], shared)
    prefixes = []
    for index, row in enumerate(rows):
        tokens = min(blocks[index] * block_tokens, row.prompt_tokens)
        prefixes.append((f"mooncake-{group_of[index]}", tokens) if tokens else (None, 0))
    notes = {
        "source_reusable_tokens": float(source_reusable),
        "mapped_reusable_tokens": float(_mapped_reusable(prefixes)),
    }
    return prefixes, notes


def _mapped_reusable(prefixes: list[tuple[str | None, int]]) -> int:
    longest: dict[str, int] = {}  # group -> the longest prefix of its earlier requests
    total = 0
    for prefix_id, tokens in prefixes:
        if prefix_id is not None:
            total += min(tokens, longest.get(prefix_id, 0))
            longest[prefix_id] = max(tokens, longest.get(prefix_id, 0))
    return total


READERS: dict[str, Callable[[str | Path, ImportOptions], ImportResult]] = {
    "azure": read_azure,
    "burstgpt": read_burstgpt,
    "mooncake": read_mooncake,
}


def import_trace(
    fmt: str, path: str | Path, options: ImportOptions = ImportOptions()
) -> ImportResult:
    """Read `path` in format `fmt` (one of FORMATS)."""
    if fmt not in READERS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    options.check()
    return READERS[fmt](path, options)


# -- shared steps ---------------------------------------------------------------------------
def _keep(row: SourceRow, rows: list[SourceRow], skipped: dict[str, int]) -> None:
    if row.prompt_tokens == 0:
        skipped["no_prompt_tokens"] = skipped.get("no_prompt_tokens", 0) + 1
    elif row.output_tokens == 0:
        skipped["no_output_tokens"] = skipped.get("no_output_tokens", 0) + 1
    else:
        rows.append(row)


def _select(rows: list[SourceRow], options: ImportOptions) -> list[SourceRow]:
    """Sorted by time, within the window, at most max_requests."""
    options.check()
    rows = sorted(rows, key=lambda r: r.time_s)
    if rows:
        origin = rows[0].time_s
        start = -math.inf if options.start_s is None else options.start_s
        end = math.inf if options.end_s is None else options.end_s
        rows = [r for r in rows if start <= r.time_s - origin < end]
    return rows[: options.max_requests]


def _times(rows: list[SourceRow], options: ImportOptions) -> list[float]:
    if not rows:
        return []
    first = rows[0].time_s
    return [round((r.time_s - first) * options.time_scale, 6) for r in rows]


def _finish(
    rows: list[SourceRow], skipped: dict[str, int], options: ImportOptions, notes: dict[str, float]
) -> ImportResult:
    kept = _select(rows, options)
    requests = [
        TraceRequest(t, r.prompt_tokens, r.output_tokens)
        for t, r in zip(_times(kept, options), kept, strict=True)
    ]
    return ImportResult(requests, len(rows) + sum(skipped.values()), skipped, notes)


# -- parsing --------------------------------------------------------------------------------
def _where(path: str | Path, line: int, column: str | None = None) -> str:
    return f"{path}: line {line}" + (f", column {column!r}" if column else "")


def _csv_rows(
    path: str | Path, columns: tuple[str, ...]
) -> Iterator[tuple[dict[str, str], Callable[[str], str]]]:
    """(row by column, column -> "FILE: line N, column C") of each data row."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise TraceImportError(f"{_where(path, 1)}: empty file; expected a header")
        header = [h.strip() for h in header]
        missing = [c for c in columns if c not in header]
        if missing:
            raise TraceImportError(
                f"{_where(path, 1)}: header lacks column(s) {missing}; expected "
                f"{list(columns)}, got {header}"
            )
        for values in reader:
            line = reader.line_num
            if not values or not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise TraceImportError(
                    f"{_where(path, line)}: {len(values)} fields, the header has {len(header)}"
                )
            record = dict(zip(header, values, strict=True))
            yield record, lambda column, line=line: _where(path, line, column)


def _int(text: str, where: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise TraceImportError(f"{where}: expected an integer >= 0, got {text!r}")
    return value


def _float(text: str, where: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise TraceImportError(f"{where}: expected a number of seconds, got {text!r}")
    return value


_DATETIME = re.compile(
    r"(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2})(?:\.(\d+))?\s*(Z|[+-]\d{2}:?\d{2})?"
)


def _datetime_s(text: str, where: str) -> float:
    """Seconds since the epoch (naive times read as UTC), fractional digits kept exactly."""
    match = _DATETIME.fullmatch(text.strip())
    if match is None:
        raise TraceImportError(
            f"{where}: expected a datetime like '2023-11-16 18:15:46.6805900', got {text!r}"
        )
    whole, fraction, offset = match.groups()
    try:
        moment = datetime.strptime(whole.replace("T", " "), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise TraceImportError(f"{where}: not a valid date and time: {text!r}") from None
    tz = timezone.utc
    if offset and offset != "Z":
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        tz = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    seconds = moment.replace(tzinfo=tz).timestamp()
    return seconds + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def _mooncake_row(text: str, where: str) -> SourceRow:
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceImportError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(fields, dict):
        raise TraceImportError(f"{where}: expected a JSON object, got {type(fields).__name__}")
    for name in ("timestamp", "input_length", "output_length"):
        if name not in fields:
            raise TraceImportError(f"{where}, column {name!r}: missing")
    values = []
    for name in ("timestamp", "input_length", "output_length"):
        value = fields[name]
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if not is_number or not math.isfinite(value) or value < 0:
            raise TraceImportError(
                f"{where}, column {name!r}: expected a number >= 0, got {value!r}"
            )
        if name != "timestamp" and value != int(value):
            raise TraceImportError(f"{where}, column {name!r}: expected an integer, got {value!r}")
        values.append(value)
    hash_ids = fields.get("hash_ids", [])
    if not isinstance(hash_ids, list) or not all(
        isinstance(h, int) and not isinstance(h, bool) for h in hash_ids
    ):
        raise TraceImportError(
            f"{where}, column 'hash_ids': expected a list of integers, got {hash_ids!r}"
        )
    return SourceRow(values[0] / 1000.0, int(values[1]), int(values[2]), tuple(hash_ids))
