"""Request traces: one JSON object a line, shared by the simulator and the real replay.

    {"arrival_s": 0.25, "prompt_tokens": 812, "output_tokens": 128,
     "prefix_id": "system-a", "prefix_tokens": 512}

`prefix_id` and `prefix_tokens` are optional (both or neither). A request's prompt token
ids are derived from (prefix_id, line number) alone (`prompt_token_ids`): every request of
a prefix group starts with the same `prefix_tokens` ids and the rest is unique to its line,
so the simulator and a replay against a real server hash the same blocks.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FIRST_TOKEN_ID = 32  # ids below are left alone: special tokens live there in most vocabularies


class TraceError(ValueError):
    """A trace line that is not a valid request; the message names the line and field."""


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace (see the module doc)."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_id: str | None = None
    prefix_tokens: int = 0

    def __post_init__(self):
        if not (0.0 <= self.arrival_s < math.inf):
            raise TraceError(f"arrival_s must be a finite number >= 0, got {self.arrival_s!r}")
        if self.prompt_tokens < 1:
            raise TraceError(f"prompt_tokens must be >= 1, got {self.prompt_tokens!r}")
        if self.output_tokens < 1:
            raise TraceError(f"output_tokens must be >= 1, got {self.output_tokens!r}")
        if (self.prefix_id is None) != (self.prefix_tokens == 0):
            raise TraceError(
                "prefix_id and prefix_tokens go together: give both (prefix_tokens >= 1) "
                f"or neither, got prefix_id={self.prefix_id!r} prefix_tokens={self.prefix_tokens!r}"
            )
        if not 0 <= self.prefix_tokens <= self.prompt_tokens:
            raise TraceError(
                f"prefix_tokens must be in [0, prompt_tokens={self.prompt_tokens}], "
                f"got {self.prefix_tokens!r}"
            )

    def to_json(self) -> str:
        fields = asdict(self)
        if self.prefix_id is None:
            del fields["prefix_id"], fields["prefix_tokens"]
        return json.dumps(fields)


_FIELDS = {"arrival_s", "prompt_tokens", "output_tokens", "prefix_id", "prefix_tokens"}


def parse_line(text: str, line_no: int) -> TraceRequest:
    """One trace line as a request; TraceError names the line and the field."""
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as e:
        raise TraceError(f"line {line_no}: not JSON ({e.msg})") from None
    if not isinstance(fields, dict):
        raise TraceError(f"line {line_no}: expected a JSON object, got {type(fields).__name__}")
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise TraceError(f"line {line_no}: unknown field(s) {unknown}; allowed: {sorted(_FIELDS)}")
    for name in ("arrival_s", "prompt_tokens", "output_tokens"):
        if name not in fields:
            raise TraceError(f"line {line_no}: missing field {name!r}")
    for name in ("prompt_tokens", "output_tokens", "prefix_tokens"):
        if name in fields and (isinstance(fields[name], bool) or not isinstance(fields[name], int)):
            raise TraceError(f"line {line_no}: {name} must be an integer, got {fields[name]!r}")
    if isinstance(fields["arrival_s"], bool) or not isinstance(fields["arrival_s"], int | float):
        raise TraceError(f"line {line_no}: arrival_s must be a number, got {fields['arrival_s']!r}")
    if "prefix_id" in fields and not isinstance(fields["prefix_id"], str):
        raise TraceError(f"line {line_no}: prefix_id must be a string, got {fields['prefix_id']!r}")
    try:
        return TraceRequest(
            arrival_s=float(fields["arrival_s"]),
            prompt_tokens=fields["prompt_tokens"],
            output_tokens=fields["output_tokens"],
            prefix_id=fields.get("prefix_id"),
            prefix_tokens=fields.get("prefix_tokens", 0),
        )
    except TraceError as e:
        raise TraceError(f"line {line_no}: {e}") from None


def read_trace(path: str | Path) -> list[TraceRequest]:
    """Every request of a JSONL trace, in file order (line numbers count from 1; blank lines
    are skipped but counted). Arrivals must not go back in time. TraceError messages start
    with `FILE: line N:`."""
    requests: list[TraceRequest] = []
    with open(path, encoding="utf-8") as f:
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                request = parse_line(text, line_no)
            except TraceError as e:
                raise TraceError(f"{path}: {e}") from None
            if requests and request.arrival_s < requests[-1].arrival_s:
                raise TraceError(
                    f"{path}: line {line_no}: arrival_s {request.arrival_s} is before the "
                    f"previous line's {requests[-1].arrival_s}; a trace is sorted by arrival"
                )
            requests.append(request)
    return requests


def write_trace(path: str | Path, requests: Iterable[TraceRequest]) -> int:
    """Write requests one a line; returns how many."""
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for request in requests:
            f.write(request.to_json() + "\n")
            count += 1
    return count


def _ids(seed: str, count: int, vocab_size: int) -> list[int]:
    """count ids in [FIRST_TOKEN_ID, vocab_size) drawn from seed; the first k of n are the
    ids of count k (a prefix group's shorter prefixes agree with its longer ones)."""
    if count <= 0:
        return []
    key = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:16], "little")
    return np.random.default_rng(key).integers(FIRST_TOKEN_ID, vocab_size, count).tolist()


def prompt_token_ids(request: TraceRequest, index: int, vocab_size: int) -> list[int]:
    """The prompt's token ids: the prefix group's `prefix_tokens` ids, then ids unique to
    `index` (the request's position in the trace, from 0). Deterministic across processes.
    NOTE: ids depend on (prefix_id, index) only, so two traces share them line by line: replay
    each trace against a fresh server (or one whose prefix cache another trace did not fill)."""
    if vocab_size <= FIRST_TOKEN_ID:
        raise ValueError(f"vocab_size must be over {FIRST_TOKEN_ID}, got {vocab_size}")
    prefix = _ids(f"prefix:{request.prefix_id}", request.prefix_tokens, vocab_size)
    rest = _ids(f"request:{index}", request.prompt_tokens - request.prefix_tokens, vocab_size)
    return prefix + rest


def iter_token_prompts(
    requests: Iterable[TraceRequest], vocab_size: int
) -> Iterator[tuple[TraceRequest, list[int]]]:
    """Each request with its prompt token ids."""
    for index, request in enumerate(requests):
        yield request, prompt_token_ids(request, index, vocab_size)
