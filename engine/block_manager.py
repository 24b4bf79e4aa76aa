"""Paged KV cache bookkeeping: free blocks, per-sequence block tables, prefix reuse.

Host-only: it hands out block ids; the model runner owns the cache tensors.

Block 0 is reserved as the padding block: padded slots of a fixed-shape step write there
and padded block-table entries point there, so padding never touches a real sequence.

Prefix reuse: once every position of a full block has its KV written, the block is
published under a hash chained over all tokens up to its end. A later sequence whose
prompt starts with the same tokens takes those blocks (reference counted) and computes
only the rest. Freed blocks keep their hash and stay reusable until they are handed out
again (least recently freed first). The hash is `engine.prefix_hash.block_hash`, the one
a router uses too; a block overlapping an image chains in the image's content hash
(`Sequence.block_extra_keys`), so the same placeholder tokens with another image never
share a block. Every change to the set of findable hashes is recorded as a numbered
event (`drain_events`), so a router can mirror the cache (see engine/block_events.py).
A sequence's block hashes are computed once and kept on it (`Sequence.prefix_hashes`):
admission checks and publishing read them from there.
"""

from __future__ import annotations

from collections import OrderedDict

from engine.block_events import BLOCK_EVICTED, BLOCK_STORED, BlockEventBatch, BlockEventLog
from engine.prefix_hash import block_hash, prefix_block_hashes
from engine.sequence import Sequence

PADDING_BLOCK_ID = 0


class BlockManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
        max_pending_events: int | None = None,
    ):
        """max_pending_events: events kept between drains before the log overflows
        (default: 2 per block, at least 1024)."""
        if num_blocks < 2:
            raise ValueError(f"the KV cache needs at least 2 blocks, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hashes: list[int | None] = [None] * num_blocks
        self.hash_to_block: dict[int, int] = {}
        if max_pending_events is None:
            max_pending_events = max(1024, 2 * num_blocks)
        self.events = BlockEventLog(max_pending_events)
        # Free blocks in eviction order (oldest first). Block 0 is never free.
        self.free_blocks: OrderedDict[int, None] = OrderedDict.fromkeys(range(1, num_blocks))
        self.num_prefix_hits_tokens = 0

    # -- accounting ---------------------------------------------------------------------
    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_usable_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- block hashes -------------------------------------------------------------------
    def _extend_prefix_hashes(self, seq: Sequence, num_blocks: int) -> list[int]:
        """seq.prefix_hashes, extended to cover its first num_blocks full blocks."""
        chain = seq.prefix_hashes
        start = len(chain)
        if start >= num_blocks:
            return chain
        bs = self.block_size
        parent = chain[-1] if chain else None
        tokens = seq.token_ids[start * bs : num_blocks * bs]
        if start + 1 == num_blocks and seq.multi_modal is None:  # a decode row's new block
            chain.append(block_hash(parent, tokens))
        else:
            extra_keys = seq.block_extra_keys(bs)[start:num_blocks]
            chain += prefix_block_hashes(tokens, bs, parent=parent, extra_keys=extra_keys)
        return chain

    # -- admission ----------------------------------------------------------------------
    def _cached_prefix(self, seq: Sequence) -> list[int]:
        """Blocks holding a cached prefix of seq. At least one token is always left to
        compute, so the step that admits seq produces its logits. Hashes only up to the
        first block not cached."""
        if not self.enable_prefix_caching:
            return []
        hits: list[int] = []
        bs = self.block_size
        chain = seq.prefix_hashes
        hash_to_block = self.hash_to_block
        for i in range((len(seq.token_ids) - 1) // bs):
            if i == len(chain):  # hashed one block at a time: a miss ends the walk
                self._extend_prefix_hashes(seq, i + 1)
            block_id = hash_to_block.get(chain[i])
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def can_allocate(self, seq: Sequence) -> bool:
        hits = self._cached_prefix(seq)
        revived = sum(1 for b in hits if self.ref_counts[b] == 0)
        num_new = self.blocks_needed(seq.num_tokens) - len(hits)
        return num_new + revived <= self.num_free_blocks

    def allocate(self, seq: Sequence) -> None:
        """Give seq blocks for all its tokens, reusing cached prefix blocks."""
        if seq.block_table:
            raise RuntimeError(f"{seq} already holds blocks")
        hits = self._cached_prefix(seq)
        ref_counts, free_blocks = self.ref_counts, self.free_blocks
        for block_id in hits:
            if ref_counts[block_id] == 0:
                del free_blocks[block_id]
            ref_counts[block_id] += 1
        num_hits = len(hits)
        self._take_free_blocks(hits, self.blocks_needed(seq.num_tokens) - num_hits)
        seq.block_table = hits  # the cached prefix, then new blocks
        seq.num_computed_tokens = seq.num_cached_tokens = num_hits * self.block_size
        seq.num_hashed_blocks = num_hits
        self.num_prefix_hits_tokens += seq.num_cached_tokens

    def _take_free_block(self) -> int:
        table: list[int] = []
        self._take_free_blocks(table, 1)
        return table[0]

    def _take_free_blocks(self, table: list[int], count: int) -> None:
        """Append count blocks to table, each the least recently freed one (its cached
        content evicted)."""
        popitem = self.free_blocks.popitem
        block_hashes, hash_to_block, ref_counts = (
            self.block_hashes,
            self.hash_to_block,
            self.ref_counts,
        )
        for _ in range(count):
            block_id = popitem(last=False)[0]
            old = block_hashes[block_id]
            if old is not None:  # evict its cached content
                if hash_to_block.get(old) == block_id:
                    del hash_to_block[old]
                    self.events.record(BLOCK_EVICTED, old)
                block_hashes[block_id] = None
            ref_counts[block_id] = 1
            table.append(block_id)

    # -- decode -------------------------------------------------------------------------
    def can_append(self, seq: Sequence) -> bool:
        """Whether the block for seq's next fed token exists or one is free."""
        return len(seq.block_table) >= -(-len(seq.token_ids) // self.block_size) or bool(
            self.free_blocks
        )

    def append_slots(self, seq: Sequence, num_tokens: int | None = None) -> None:
        """Grow seq's block table to cover num_tokens (default: all its tokens)."""
        needed = self.blocks_needed(seq.num_tokens if num_tokens is None else num_tokens)
        if len(seq.block_table) < needed:
            self._take_free_blocks(seq.block_table, needed - len(seq.block_table))

    def reserve_slots(self, seq: Sequence, num_tokens: int) -> None:
        """Grow seq's block table toward covering num_tokens with free blocks only, as far
        as they go (speculative lookahead: never worth a preemption)."""
        needed = self.blocks_needed(num_tokens)
        while len(seq.block_table) < needed and self.free_blocks:
            seq.block_table.append(self._take_free_block())

    def trim(self, seq: Sequence, num_tokens: int) -> None:
        """Drop trailing blocks beyond num_tokens (speculative rollback). They hold no
        published content, so they go to the front of the free list, to be reused before
        blocks that still serve the prefix cache."""
        keep = self.blocks_needed(num_tokens)
        while len(seq.block_table) > keep:
            block_id = seq.block_table.pop()
            self._release(block_id)
            if self.ref_counts[block_id] == 0 and self.block_hashes[block_id] is None:
                self.free_blocks.move_to_end(block_id, last=False)

    # -- publishing and freeing ---------------------------------------------------------
    def publish_computed_blocks(self, seq: Sequence) -> None:
        """Publish seq's full blocks whose KV is now written, for prefix reuse."""
        if not self.enable_prefix_caching:
            return
        table = seq.block_table
        num_full = min(seq.num_computed_tokens // self.block_size, len(table))
        start = seq.num_hashed_blocks
        if num_full <= start:
            return
        chain = self._extend_prefix_hashes(seq, num_full)
        block_hashes, hash_to_block = self.block_hashes, self.hash_to_block
        for i in range(start, num_full):
            block_id, h = table[i], chain[i]
            if block_hashes[block_id] is None:
                block_hashes[block_id] = h
                if h not in hash_to_block:
                    hash_to_block[h] = block_id
                    self.events.record(BLOCK_STORED, h)
        seq.num_hashed_blocks = num_full

    # -- what the prefix cache holds, for a router --------------------------------------
    def drain_events(self) -> BlockEventBatch:
        """Stored/evicted events since the last drain, in order (see engine/block_events.py).
        On `overflowed`, resync from `cached_block_hashes()` taken right after this call."""
        return self.events.drain()

    def cached_block_hashes(self) -> set[int]:
        """Every hash findable in the prefix cache now: the full snapshot events mirror."""
        return set(self.hash_to_block)

    def free(self, seq: Sequence) -> None:
        """Release seq's blocks (finished, aborted or preempted)."""
        ref_counts, free_blocks = self.ref_counts, self.free_blocks
        for block_id in reversed(seq.block_table):
            n = ref_counts[block_id] = ref_counts[block_id] - 1
            if n <= 0:
                if n < 0:
                    raise RuntimeError(f"block {block_id} freed twice")
                free_blocks[block_id] = None
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_hashed_blocks = 0

    def _release(self, block_id: int) -> None:
        self.ref_counts[block_id] -= 1
        if self.ref_counts[block_id] < 0:
            raise RuntimeError(f"block {block_id} freed twice")
        if self.ref_counts[block_id] == 0:
            self.free_blocks[block_id] = None
