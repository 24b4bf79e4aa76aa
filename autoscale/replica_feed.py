"""One replica's feed to the routers: which prefix blocks it holds and how long its steps take.

The engine hands each step's `StepRecord` (engine.step_record) to `on_step`, on its stepping
thread; `on_step` only appends it to a bounded inbox, so the engine loop never waits. The
consumer side (`update_for`, `snapshot`: the replica's event loop, or Serve's thread pool
for the routing stats) folds the inbox, under a lock the stepping thread never takes, into:
- a mirror of the replica's cached block hashes: block events applied in order, replaced by
  the record's snapshot after the engine's event log overflowed; a snapshot of the feed
  never touches the engine;
- a bounded log of the latest block events (`max_events`) and step samples (`max_steps`);
- per caller session, a cursor: what that session was last sent (at most `max_sessions`
  sessions, the least recently used dropped).

`update_for(session)` gives a session what changed since its cursor (a `ReplicaUpdate`,
autoscale/replica_update.py); a new session, or one whose cursor fell out of the log, gets
a snapshot. `snapshot()` gives the full state, for Serve's routing stats. Step kinds map to
the step-time model's (autoscale/step_time.py): a prefill's size is the tokens it fed, a
decode's (speculative verify steps included) the rows it ran.

Event numbers have no gaps, so a lost record shows: if the inbox fills up (nobody consumed
for `max_pending_records` steps) and a record's first event is not the next number, the
mirror stops at the gap and the feed asks the engine for a snapshot (`request_snapshot`,
e.g. `Engine.request_block_snapshot`); until one comes, updates carry steps but no new
events, so what they say stays exact, only older.

Worked example (one prefill stores two blocks; a decode step evicts one of them):

    >>> from engine import BlockEvent, BlockEventBatch, StepRecord
    >>> feed = ReplicaFeed("replica-a")
    >>> stored = [BlockEvent(0, "stored", 11), BlockEvent(1, "stored", 22)]
    >>> feed.on_step(StepRecord("prefill", 40, 1, 0, 0.05, BlockEventBatch(stored, 2, False), None))
    >>> first = feed.update_for("ingress-1")  # a new session: a snapshot
    >>> sorted(first.snapshot), first.next_seq, first.events
    ([11, 22], 2, ())
    >>> first.steps
    (StepSample(kind='prefill', size=40, seconds=0.05, num_context_tokens=0),)
    >>> feed.update_for("ingress-1") is None  # nothing new since
    True
    >>> evicted = BlockEventBatch([BlockEvent(2, "evicted", 11)], 3, False)
    >>> feed.on_step(StepRecord("decode", 1, 1, 40, 0.01, evicted, None))
    >>> update = feed.update_for("ingress-1")  # only what changed
    >>> update.events, update.next_seq, update.snapshot
    ((BlockEvent(seq=2, kind='evicted', block_hash=11),), 3, None)
    >>> update.steps
    (StepSample(kind='decode', size=1, seconds=0.01, num_context_tokens=40),)
    >>> feed.snapshot().snapshot  # for the routing stats: everything, sessions untouched
    (22,)
"""

from __future__ import annotations

import functools
import itertools
import operator
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autoscale.replica_update import ReplicaUpdate, StepSample
from autoscale.step_time import DECODE, PREFILL
from engine import BLOCK_EVICTED, BLOCK_STORED, BlockEvent, BlockEventBatch, StepKind, StepRecord

MAX_EVENTS = 16384  # block events kept for sessions that fall behind (~1.5 MiB)
MAX_STEPS = 256  # step samples kept (a step-time model's window is 128)
MAX_SESSIONS = 64  # caller sessions with a cursor (ingress replicas x their step streams)
MAX_PENDING_RECORDS = 4096  # step records waiting for the consumer before the oldest drop

_STEP_KINDS = {StepKind.PREFILL.value: PREFILL, StepKind.DECODE.value: DECODE}


@dataclass
class _Cursor:
    """What a session was last sent: events up to next_seq (in the feed's epoch) and the
    first num_steps step samples."""

    epoch: int
    next_seq: int
    num_steps: int


class ReplicaFeed:
    """A replica's block events and step timings, per caller session (see the module doc)."""

    def __init__(
        self,
        replica_id: str,
        max_events: int = MAX_EVENTS,
        max_steps: int = MAX_STEPS,
        *,
        max_sessions: int = MAX_SESSIONS,
        max_pending_records: int = MAX_PENDING_RECORDS,
        request_snapshot: Callable[[], object] | None = None,
    ):
        """request_snapshot: asks the engine for a snapshot in its next step's record (after
        lost records); settable later, as the engine is built after its observer."""
        limits = {
            "max_events": max_events,
            "max_steps": max_steps,
            "max_sessions": max_sessions,
            "max_pending_records": max_pending_records,
        }
        for name, value in limits.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.replica_id = replica_id
        self.max_sessions = max_sessions
        self.request_snapshot = request_snapshot
        self._inbox: deque[StepRecord] = deque(maxlen=max_pending_records)
        self._lock = threading.Lock()
        # The mirror of the replica's cached block hashes, as of event _mirror_seq: the
        # events after it, all in the log, are folded in at once when they would leave the
        # log or a snapshot is taken (`_fold`).
        self._hashes: set[int] = set()
        self._mirror_seq = 0
        self._events: deque = deque(maxlen=max_events)  # of BlockEvent, up to _next_seq - 1
        self._next_seq = 0
        self._epoch = 0  # bumped when a snapshot replaces the mirror
        self._is_stale = False  # a gap: no events applied until a snapshot comes
        self._steps: deque[StepSample] = deque(maxlen=max_steps)
        self._num_steps = 0  # step samples ever added
        self._sessions: OrderedDict[str, _Cursor] = OrderedDict()

    # -- the stepping thread ------------------------------------------------------------
    def on_step(self, record: StepRecord) -> None:
        """The engine's step observer: queue the record (thread-safe, never blocks)."""
        self._inbox.append(record)

    # -- the consumer -------------------------------------------------------------------
    def update_for(self, session: str) -> ReplicaUpdate | None:
        """What changed since `session`'s previous update: a snapshot for a new session or
        one whose cursor fell out of the log; None when nothing did."""
        with self._lock:
            self._ingest()
            cursor = self._sessions.get(session)
            if cursor is None:
                cursor = self._sessions[session] = _Cursor(-1, 0, 0)
                while len(self._sessions) > self.max_sessions:
                    self._sessions.popitem(last=False)
            else:
                self._sessions.move_to_end(session)
            steps = self._steps_since(cursor.num_steps)
            log_start = self._next_seq - len(self._events)
            is_current = cursor.epoch == self._epoch and cursor.next_seq >= log_start
            if is_current and cursor.next_seq == self._next_seq and not steps:
                return None
            cursor.num_steps = self._num_steps
            if not is_current:
                cursor.epoch, cursor.next_seq = self._epoch, self._next_seq
                return self._snapshot_update(steps)
            events = _tail(self._events, self._next_seq - cursor.next_seq)
            cursor.next_seq = self._next_seq
            return _new_update((self.replica_id, events, self._next_seq, None, steps))

    def snapshot(self) -> ReplicaUpdate:
        """Every cached block hash the feed knows of and the recent step samples (for
        Serve's routing stats); no session's cursor moves."""
        with self._lock:
            self._ingest()
            return self._snapshot_update(tuple(self._steps))

    def recent_steps(self) -> tuple[StepSample, ...]:
        """The recent step samples alone (no copy of the hash set)."""
        with self._lock:
            self._ingest()
            return tuple(self._steps)

    @property
    def num_sessions(self) -> int:
        return len(self._sessions)

    def _snapshot_update(self, steps: tuple[StepSample, ...]) -> ReplicaUpdate:
        self._fold(())
        return ReplicaUpdate(self.replica_id, (), self._next_seq, tuple(self._hashes), steps)

    def _steps_since(self, num_steps: int) -> tuple[StepSample, ...]:
        num_new = min(self._num_steps - num_steps, len(self._steps))
        if num_new <= 0:
            return ()
        return _tail(self._steps, num_new)

    def _ingest(self) -> None:
        inbox = self._inbox
        while inbox:
            record = inbox.popleft()
            self._add_step(record)
            self._apply_events(record.block_events, record.snapshot)
        if self._is_stale and self.request_snapshot is not None:
            self.request_snapshot()

    def _add_step(self, record: StepRecord) -> None:
        kind = _STEP_KINDS.get(record.kind)
        if kind is None:
            raise ValueError(f"step kind must be one of {sorted(_STEP_KINDS)}, got {record.kind!r}")
        size = record.num_tokens if kind == PREFILL else record.num_rows
        self._steps.append(_new_sample((kind, size, record.seconds, record.num_context_tokens)))
        self._num_steps += 1

    def _apply_events(self, batch: BlockEventBatch, snapshot: set[int] | None) -> None:
        first_seq = batch.next_seq - len(batch.events)
        if not (batch.overflowed or self._is_stale) and first_seq == self._next_seq:
            log = self._events
            if len(log) + len(batch.events) > log.maxlen:  # events would leave unfolded
                self._fold(batch.events)
            log.extend(batch.events)
            self._next_seq = batch.next_seq
        elif snapshot is not None:  # the engine's state right after this batch
            self._hashes = set(snapshot)
            self._events.clear()
            self._next_seq = self._mirror_seq = batch.next_seq
            self._epoch += 1
            self._is_stale = False
        else:  # a gap (events lost): stop here until a snapshot comes
            self._is_stale = True

    def _fold(self, batch: Sequence[BlockEvent]) -> None:
        """Bring the mirror up to date: the log's events it lacks, then batch's (the events
        numbered on from the log's last)."""
        unfolded = _tail(self._events, self._next_seq - self._mirror_seq)
        _apply_in_bulk(self._hashes, (*unfolded, *batch))
        self._mirror_seq = self._next_seq + len(batch)


def _apply_in_bulk(hashes: set[int], events: tuple) -> None:
    """Apply block events in order to a set of hashes: each hash ends as its last stored or
    evicted event leaves it (events of other kinds change nothing), in a few passes that
    run in C rather than a step per event."""
    kinds = list(map(_kind_of, events))
    is_stored = list(map(BLOCK_STORED.__eq__, kinds))
    if kinds.count(BLOCK_STORED) + kinds.count(BLOCK_EVICTED) != len(kinds):
        events = [e for e in events if e[1] == BLOCK_STORED or e[1] == BLOCK_EVICTED]
        is_stored = [e[1] == BLOCK_STORED for e in events]
    last = dict(zip(map(_hash_of, events), is_stored, strict=True))  # hash -> last stored?
    hashes.difference_update(itertools.compress(last, map(operator.not_, last.values())))
    hashes.update(itertools.compress(last, last.values()))


_kind_of = operator.itemgetter(1)
# NamedTuples from a tuple of their fields, without a Python-level call (once per step).
_new_sample = functools.partial(tuple.__new__, StepSample)
_new_update = functools.partial(tuple.__new__, ReplicaUpdate)
_hash_of = operator.itemgetter(2)


def _tail(log: deque, count: int) -> tuple:
    """The last count items of log, in order, walked from its nearer end (a session reads
    a few new items of a long log after each step)."""
    if count <= 0:
        return ()
    if 2 * count <= len(log):
        return tuple(itertools.islice(reversed(log), count))[::-1]
    return tuple(itertools.islice(log, len(log) - count, None))
