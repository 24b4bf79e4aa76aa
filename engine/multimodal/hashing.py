"""Content hashes of images: what the prefix cache and the feature cache key images by."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

HASH_BYTES = 16  # 128-bit, as engine.prefix_hash: a collision would serve another image's KV


def processor_fingerprint(config_json: str) -> bytes:
    """A digest of the processor's configuration: the same pixels processed differently
    are different inputs to the model."""
    return hashlib.blake2b(config_json.encode(), digest_size=HASH_BYTES).digest()


def image_hash(image: Any, fingerprint: bytes) -> int:
    """The 128-bit hash of a PIL image's mode, size and pixels under a processor."""
    h = hashlib.blake2b(fingerprint, digest_size=HASH_BYTES)
    mode = image.mode.encode()
    h.update(struct.pack("<III", len(mode), *image.size))
    h.update(mode)
    h.update(image.tobytes())
    return int.from_bytes(h.digest(), "little")
