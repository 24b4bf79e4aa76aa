"""Which prefix-cache blocks each replica holds, mirrored from its block events.

Each replica's block manager numbers the events that add a block hash to its prefix cache
(`stored`) or remove one (`evicted`), and can give a full snapshot of its hashes (see
engine/block_events.py). This index applies them per replica and answers, for a prompt's
block hashes (`engine.prefix_block_hashes`), how many leading blocks each replica holds.

Staying exact:
- Events must arrive in order. A gap in their numbers (lost batch, or the replica's log
  overflowed) marks the replica stale: `needs_snapshot` says so until `apply_snapshot`
  replaces its entries. A stale replica still answers from what is known, and later events
  still apply (each is a true fact about the cache); only the missed ones are unknown.
- Events numbered below what a snapshot covered are skipped, so a snapshot may overtake
  events drained before it.
- A replica that restarts starts a new block manager, numbered from 0 again: call
  `reset_replica` (same id) or `remove_replica` (a replica gone for good); an event batch
  whose `next_seq` goes backwards is taken as a restart too. Either way its entries drop.

Lookups are fast for many replicas: each hash maps to a bitmask of the replicas holding
it, so `match` walks the prompt's hashes once, whatever the number of replicas, and stops
at the first block no replica holds.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

from engine import BLOCK_EVICTED as EVICTED
from engine import BLOCK_STORED as STORED

# An engine.BlockEvent, or any (seq, kind, block_hash) tuple.
BlockEventLike = tuple[int, str, int]


@dataclass
class _Replica:
    bit: int
    hashes: set[int] = field(default_factory=set)
    next_seq: int = 0  # the number of the next event expected
    is_stale: bool = False


class PrefixIndex:
    """Per-replica sets of cached block hashes, kept in step by events and snapshots."""

    def __init__(self) -> None:
        self._replicas: dict[Hashable, _Replica] = {}
        self._holders: dict[int, int] = {}  # block hash -> bitmask of replicas holding it
        self._by_bit: dict[int, Hashable] = {}
        self._free_bits: list[int] = []

    # -- replicas -----------------------------------------------------------------------
    @property
    def replicas(self) -> list[Hashable]:
        return list(self._replicas)

    def _entry(self, replica: Hashable) -> _Replica:
        entry = self._replicas.get(replica)
        if entry is None:
            bit = self._free_bits.pop() if self._free_bits else 1 << len(self._replicas)
            entry = self._replicas[replica] = _Replica(bit)
            self._by_bit[bit] = replica
        return entry

    def remove_replica(self, replica: Hashable) -> None:
        """Forget a replica (dead, or replaced): its entries drop. Unknown ones are ignored."""
        entry = self._replicas.pop(replica, None)
        if entry is None:
            return
        self._clear(entry, entry.hashes)
        del self._by_bit[entry.bit]
        self._free_bits.append(entry.bit)

    def reset_replica(self, replica: Hashable) -> None:
        """The replica restarted with an empty cache: drop its entries, expect event 0."""
        entry = self._entry(replica)
        self._clear(entry, entry.hashes)
        entry.hashes, entry.next_seq, entry.is_stale = set(), 0, False

    def needs_snapshot(self, replica: Hashable) -> bool:
        """Whether events were missed, so only a snapshot makes the replica exact again."""
        entry = self._replicas.get(replica)
        return entry is not None and entry.is_stale

    def next_seq(self, replica: Hashable) -> int | None:
        """The number of the replica's next event expected (None: an unknown replica)."""
        entry = self._replicas.get(replica)
        return entry.next_seq if entry is not None else None

    def num_blocks(self, replica: Hashable) -> int:
        entry = self._replicas.get(replica)
        return len(entry.hashes) if entry else 0

    # -- feeding ------------------------------------------------------------------------
    def apply_events(
        self, replica: Hashable, events: Iterable[BlockEventLike], next_seq: int
    ) -> None:
        """Apply one drained batch: its events in order and the number the next event
        will carry (a gap either within or after them marks the replica stale)."""
        entry = self._entry(replica)
        if next_seq < entry.next_seq:  # the numbering went back: a new block manager
            self.reset_replica(replica)
        # (A router applies every event of every replica: the loop runs on locals.)
        holders, hashes, bit = self._holders, entry.hashes, entry.bit
        expected = entry.next_seq
        for seq, kind, h in events:
            if seq < expected:
                continue  # covered by a snapshot
            if seq > expected:
                entry.is_stale = True
            expected = seq + 1
            if kind == STORED:
                if h not in hashes:
                    hashes.add(h)
                    holders[h] = holders.get(h, 0) | bit
            elif kind == EVICTED:
                if h in hashes:
                    left = holders[h] & ~bit
                    if left:
                        holders[h] = left
                    else:
                        del holders[h]
                    hashes.discard(h)
            else:
                entry.next_seq = expected
                raise ValueError(
                    f"block event kind must be {STORED!r} or {EVICTED!r}, got {kind!r}"
                )
        entry.next_seq = expected
        if next_seq > entry.next_seq:
            entry.is_stale = True
            entry.next_seq = next_seq

    def apply_snapshot(self, replica: Hashable, hashes: Iterable[int], next_seq: int) -> None:
        """Replace the replica's entries by a full snapshot taken when its event counter
        stood at next_seq; the replica is exact again."""
        entry = self._entry(replica)
        new = set(hashes)
        self._clear(entry, entry.hashes - new)
        for h in new - entry.hashes:
            self._holders[h] = self._holders.get(h, 0) | entry.bit
        entry.hashes, entry.next_seq, entry.is_stale = new, next_seq, False

    def _clear(self, entry: _Replica, hashes: Iterable[int]) -> None:
        """Drop the replica's bit from these hashes' holders."""
        holders = self._holders
        for h in hashes:
            left = holders[h] & ~entry.bit
            if left:
                holders[h] = left
            else:
                del holders[h]

    # -- asking -------------------------------------------------------------------------
    def match(self, block_hashes: Sequence[int]) -> dict[Hashable, int]:
        """How many leading blocks of block_hashes each replica holds; replicas holding
        none are left out. One pass over the hashes, stopping at the first nobody holds."""
        found: dict[Hashable, int] = {}
        alive = sum(entry.bit for entry in self._replicas.values())
        holders = self._holders
        num_matched = 0
        for h in block_hashes:
            still = holders.get(h, 0) & alive
            if still != alive:
                self._record(found, alive & ~still, num_matched)
                if not still:
                    return found
                alive = still
            num_matched += 1
        self._record(found, alive, num_matched)
        return found

    def _record(self, found: dict[Hashable, int], bits: int, num_blocks: int) -> None:
        if not num_blocks:
            return
        while bits:
            bit = bits & -bits  # the lowest set bit
            found[self._by_bit[bit]] = num_blocks
            bits ^= bit

    def holds(self, replica: Hashable, block_hash: int) -> bool:
        """Whether the replica holds this block hash."""
        entry = self._replicas.get(replica)
        return entry is not None and block_hash in entry.hashes

    def num_cached_blocks(self, replica: Hashable, block_hashes: Sequence[int]) -> int:
        """How many leading blocks of block_hashes this one replica holds."""
        entry = self._replicas.get(replica)
        if entry is None:
            return 0
        for i, h in enumerate(block_hashes):
            if h not in entry.hashes:
                return i
        return len(block_hashes)
