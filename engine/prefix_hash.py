"""The prefix-cache block hash: one pure function the block manager and the router share.

A full block of `block_size` tokens is named by a hash chained over every token up to its
end, so two prompts share a block's hash exactly when they share all tokens up to there.
The block manager publishes computed blocks under these hashes; a router hashes a prompt
the same way to ask which replica holds its leading blocks. Both call the functions here,
so they agree by construction. Host-only and torch-free (the router imports it).

Worked example (block_size 4): tokens [1..10] have two full blocks, [1, 2, 3, 4] and
[5, 6, 7, 8]; the trailing [9, 10] is not hashed.

    >>> hashes = prefix_block_hashes(list(range(1, 11)), 4)
    >>> len(hashes)
    2
    >>> hashes[0] == block_hash(None, [1, 2, 3, 4])
    True
    >>> hashes[1] == block_hash(hashes[0], [5, 6, 7, 8])
    True
    >>> prefix_block_hashes([1, 2, 3, 4, 99], 4)[0] == hashes[0]  # same first block
    True

A block overlapping an image chains in the image's content hash (`extra_keys`, from
engine.multimodal.MultiModalInput.block_extra_keys), so the same placeholder tokens with
another image name other blocks, and every block after them differs too:

    >>> with_image = prefix_block_hashes(list(range(1, 11)), 4, extra_keys=[(), (77,)])
    >>> with_image[0] == hashes[0], with_image[1] == hashes[1]
    (True, False)
    >>> with_image[1] == block_hash(hashes[0], [5, 6, 7, 8], (77,))
    True
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence

HASH_BYTES = 16  # 128-bit: a collision would serve another prompt's KV, so keep it negligible

_blake2b = hashlib.blake2b
# Per block length, the compiled packing of (length, *token ids): a hash per block is on
# the engine's hot path, and compiling the format each time cost a sixth of it.
_packers: dict[int, Callable[..., bytes]] = {}


def block_hash(parent: int | None, token_ids: Sequence[int], extra_keys: Sequence[int] = ()) -> int:
    """Hash of one full block of token ids, chained on the previous block's hash (None for
    the first block). Token ids are unsigned 32-bit; anything else raises struct.error.
    extra_keys: 128-bit hashes of what else the block's KV depends on (the images it
    overlaps); none leaves a text block's hash as it always was."""
    h = _blake2b(
        b"" if parent is None else parent.to_bytes(HASH_BYTES, "little"), digest_size=HASH_BYTES
    )
    pack = _packers.get(len(token_ids))
    if pack is None:
        pack = _packers[len(token_ids)] = struct.Struct(f"<I{len(token_ids)}I").pack
    h.update(pack(len(token_ids), *token_ids))
    if extra_keys:
        h.update(struct.pack("<I", len(extra_keys)))
        for key in extra_keys:
            h.update(key.to_bytes(HASH_BYTES, "little"))
    return int.from_bytes(h.digest(), "little")


def prefix_block_hashes(
    token_ids: Sequence[int],
    block_size: int,
    num_blocks: int | None = None,
    parent: int | None = None,
    extra_keys: Sequence[Sequence[int]] | None = None,
) -> list[int]:
    """The chained hashes of the full blocks of token_ids, in order.

    num_blocks: hash at most this many leading blocks (default: every full block).
    parent: the hash of the block just before token_ids[0], to continue a chain.
    extra_keys: per block of token_ids, the hashes chained in beside its tokens (the
        images it overlaps); blocks past its end have none.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be a positive number of tokens, got {block_size}")
    count = len(token_ids) // block_size
    if num_blocks is not None:
        count = min(count, max(num_blocks, 0))
    hashes = []
    extra_keys = extra_keys or ()
    for i in range(count):
        extra = extra_keys[i] if i < len(extra_keys) else ()
        parent = block_hash(parent, token_ids[i * block_size : (i + 1) * block_size], extra)
        hashes.append(parent)
    return hashes
