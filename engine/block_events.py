"""What the prefix cache gained and lost, as numbered events a router can follow.

The block manager records a `stored` event when a block's hash becomes findable in its
prefix cache and an `evicted` event when it stops being findable (the block is handed out
for other content). Applying the events in order to an empty set reproduces the cache's
hash set exactly (`BlockManager.cached_block_hashes()`).

Recording never blocks and memory stays bounded: the owner drains the log (e.g. once per
step or per stats publish). If more than `max_pending` events pile up between drains the
log drops them all and reports `overflowed`; the consumer then resyncs from a snapshot
taken at the same moment as that drain (nothing runs in between on the engine thread).
Event numbers keep counting through an overflow, so a consumer that missed a batch sees
the gap as well.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

BLOCK_STORED = "stored"
BLOCK_EVICTED = "evicted"


class BlockEvent(NamedTuple):
    seq: int  # 0, 1, 2, ... per block manager, with no gaps
    kind: str  # BLOCK_STORED or BLOCK_EVICTED
    block_hash: int


class BlockEventBatch(NamedTuple):
    """One drain: the events since the last one, in order, and the number the next event
    will carry. overflowed: events were dropped (events is empty); resync from a snapshot."""

    events: list[BlockEvent]
    next_seq: int
    overflowed: bool


# A BlockEvent from a plain (seq, kind, block_hash) tuple, without a Python-level call.
_as_event = partial(tuple.__new__, BlockEvent)


class BlockEventLog:
    """A bounded buffer of block events, drained by its owner. Events wait as plain tuples
    and become `BlockEvent`s when drained (recording is on the block manager's hot path)."""

    def __init__(self, max_pending: int):
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1 event, got {max_pending}")
        self.max_pending = max_pending
        self.next_seq = 0
        self._pending: list[tuple[int, str, int]] = []
        self._overflowed = False

    def record(self, kind: str, block_hash: int) -> None:
        if not self._overflowed:
            if len(self._pending) < self.max_pending:
                self._pending.append((self.next_seq, kind, block_hash))
            else:  # the consumer must resync anyway: keep nothing until it drains
                self._pending = []
                self._overflowed = True
        self.next_seq += 1

    def drain(self) -> BlockEventBatch:
        pending = self._pending
        events = list(map(_as_event, pending)) if pending else []
        batch = BlockEventBatch(events, self.next_seq, self._overflowed)
        self._pending = []
        self._overflowed = False
        return batch
