"""The host side of images in steps: which images the runner encodes, which features each
query position takes, and when the runner drops an image's features.

The runner keeps each image's features (by content hash) from the step that first reads
part of its placeholders until no running sequence is part-way through them. The host
mirrors that set (`encoded`), so each step names what to encode and what to release;
nothing else is shared. A sequence that is preempted (recomputed), or whose image the
prefix cache already holds, encodes the image again only if a step reads its placeholders.

Worked example: a row of a prefill step feeds positions 8..15 (query_len 8, no padding) of
a prompt whose image has placeholders at 10..21; its table row is 1 (row 0 is zeros), so
positions 10..15 take feature rows 1..6 and the rest keep their token embeddings.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.messages import ImageEncode, ModelInput, MultiModalFeed
from engine.scheduler import SchedulerOutput, StepKind
from engine.sequence import Sequence

__all__ = ["ImageFeeder", "pick_patch_bucket"]


def pick_patch_bucket(buckets: tuple[int, ...], num_patches: int) -> int:
    """The smallest bucket holding num_patches patches.

    >>> pick_patch_bucket((3, 4, 5), 4), pick_patch_bucket((3, 5), 4)
    (4, 5)
    """
    for bucket in buckets:
        if bucket >= num_patches:
            return bucket
    raise ValueError(f"an image of {num_patches} patches fits no patch bucket {list(buckets)}")


class ImageFeeder:
    """Builds each step's `MultiModalFeed` for a multimodal model.

    buckets: the patch counts the vision tower runs at (engine.models.llava_next
    `patch_buckets`); warmed: those already run (start-up warm-up), the rest count as
    bucket misses when first used.
    """

    max_images_per_prompt: int | None = None  # no limit

    def __init__(self, buckets: tuple[int, ...]):
        self.buckets = buckets
        self.warmed: set[int] = set()
        self.encoded: set[int] = set()  # hashes whose features the runner holds
        self.num_bucket_misses = 0
        self.num_encoded_images = 0

    def feed(
        self, sched: SchedulerOutput, inp: ModelInput, running: list[Sequence]
    ) -> MultiModalFeed | None:
        """The images of the step `inp` built from `sched` (rows in scheduled order), or
        None when it has nothing to encode, read or release."""
        needed: dict[int, tuple[Sequence, int]] = {}  # hash -> (a seq holding it, image index)
        index = mask = None
        if sched.kind is StepKind.PREFILL and any(s.seq.multi_modal for s in sched.scheduled):
            index, mask = self._positions(sched, inp, needed)
        release = sorted(self.encoded - self._in_progress(running) - needed.keys())
        self.encoded.difference_update(release)
        encode = [self._encode(seq, k) for h, (seq, k) in needed.items() if h not in self.encoded]
        self.encoded.update(needed)
        if not (needed or release):
            return None
        return MultiModalFeed(encode, list(needed), index, mask, release)

    def _positions(
        self, sched: SchedulerOutput, inp: ModelInput, needed: dict[int, tuple[Sequence, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feature_index [batch * query_len] and image_mask [batch, query_len]; fills
        `needed` with the images read, in table order."""
        q_len = inp.shape.query_len
        index = np.zeros((inp.shape.batch_size, q_len), dtype=np.int64)
        table_rows: dict[int, int] = {}  # hash -> its first table row
        num_rows = 1  # row 0: zeros, for positions that take no image
        for row, item in enumerate(sched.scheduled):
            mm = item.seq.multi_modal
            if mm is None:
                continue
            first, n = item.seq.num_computed_tokens, item.num_tokens
            pad = q_len - n
            for k, (h, (start, length)) in enumerate(
                zip(mm.image_hashes, mm.placeholder_ranges, strict=True)
            ):
                lo, hi = max(start, first), min(start + length, first + n)
                if lo >= hi:
                    continue
                if h not in table_rows:
                    table_rows[h] = num_rows
                    num_rows += length
                    needed[h] = (item.seq, k)
                base = table_rows[h] - start
                cols = slice(pad + lo - first, pad + hi - first)
                index[row, cols] = np.arange(base + lo, base + hi)
        feature_index = torch.from_numpy(index)
        return feature_index.view(-1), feature_index > 0

    @staticmethod
    def _in_progress(running: list[Sequence]) -> set[int]:
        """Images some running sequence has computed part of (features still needed)."""
        keep = set()
        for seq in running:
            mm, done = seq.multi_modal, seq.num_computed_tokens
            if mm is not None and 0 < done < mm.end:
                keep.update(
                    h
                    for h, (start, length) in zip(
                        mm.image_hashes, mm.placeholder_ranges, strict=True
                    )
                    if start < done < start + length
                )
        return keep

    def _encode(self, seq: Sequence, k: int) -> ImageEncode:
        mm = seq.multi_modal
        pixels = torch.from_numpy(np.ascontiguousarray(mm.pixel_values[k]))
        num_patches = pixels.shape[0]
        bucket = pick_patch_bucket(self.buckets, num_patches)
        if bucket not in self.warmed:
            self.num_bucket_misses += 1
        if bucket > num_patches:
            pad = pixels.new_zeros((bucket - num_patches, *pixels.shape[1:]))
            pixels = torch.cat([pixels, pad])
        self.num_encoded_images += 1
        return ImageEncode(
            mm.image_hashes[k], pixels, num_patches, mm.image_sizes[k], mm.placeholder_ranges[k][1]
        )

    def warmup_feed(
        self, bucket_sizes: dict[int, tuple[int, int]], pixel_shape: tuple[int, ...]
    ) -> MultiModalFeed:
        """A feed that encodes one all-zero image of every bucket (bucket -> an image size
        of that many patches; pixel_shape: (channels, height, width) of a patch) and
        releases them; their hashes are the bucket numbers, which no image is likely to
        have (a 128-bit content hash)."""
        encode = [
            ImageEncode(b, torch.zeros((b, *pixel_shape)), b, size, None)
            for b, size in bucket_sizes.items()
        ]
        self.warmed.update(bucket_sizes)
        return MultiModalFeed(encode, [], None, None, sorted(bucket_sizes))
