"""The host side of images in steps of a cross-attention model (Llama 3.2 Vision): which
pool slot holds each image's keys and values, which images to encode, and each row's
cross-attention inputs.

An image takes a slot (by content hash: requests with the same image share it) when a
step first schedules a sequence holding it, and keeps it while a running sequence holds
it; the runner encodes it into the slot in that step. A preempted sequence leaves the
running set, so its image is encoded again if no other sequence holds it when its
prefill restarts. Slots: the engine's max_num_seqs (one image per prompt).

Each step (prefill and decode alike) gives every row its slot, whether it has an image,
and the processor's cross-attention mask rows of the positions it feeds: an image attends
from its token to the end of the prompt, over its real tiles; positions past the prompt
repeat the prompt's last row, as transformers' `generate` does.

Worked example: a prompt of 6 tokens with its image token at 2 and 1 of 2 tiles real. A
prefill chunk feeding positions 0..3 and a decode row at position 7 (which reads the
prompt's last row, 5):

>>> import numpy as np
>>> mask_rows(np.array([0, 1, 2, 3]), start=2, num_tiles=1, num_prompt_tokens=6, max_num_tiles=2)
array([[0., 0.],
       [0., 0.],
       [1., 0.],
       [1., 0.]], dtype=float32)
>>> mask_rows(np.array([7]), start=2, num_tiles=1, num_prompt_tokens=6, max_num_tiles=2)
array([[1., 0.]], dtype=float32)
"""

from __future__ import annotations

import numpy as np
import torch

from engine.messages import CrossAttentionFeed, CrossImageEncode, ModelInput
from engine.scheduler import SchedulerOutput
from engine.sequence import Sequence

__all__ = ["CrossAttentionFeeder", "mask_rows"]

MAX_IMAGES_PER_PROMPT = 1


def mask_rows(
    positions: np.ndarray, start: int, num_tiles: int, num_prompt_tokens: int, max_num_tiles: int
) -> np.ndarray:
    """The processor's cross-attention mask rows [len(positions), max_num_tiles] of a
    prompt whose one image token sits at `start`: the image's real tiles from its token on;
    positions past the prompt take the prompt's last row."""
    at = np.minimum(positions, num_prompt_tokens - 1)
    rows = np.zeros((len(positions), max_num_tiles), dtype=np.float32)
    rows[:, :num_tiles] = (at >= start)[:, None]
    return rows


class CrossAttentionFeeder:
    """Builds each step's `CrossAttentionFeed`.

    buckets: the tile counts the vision model runs at (one: max_num_tiles); num_slots:
    images held at once. Counters and `warmed` as engine.multimodal.feed.ImageFeeder's.
    """

    max_images_per_prompt = MAX_IMAGES_PER_PROMPT

    def __init__(self, buckets: tuple[int, ...], num_slots: int):
        self.buckets = buckets
        self.max_num_tiles = max(buckets)
        self.warmed: set[int] = set()
        self.slots: dict[int, int] = {}  # image hash -> its pool slot
        self.free_slots = list(range(num_slots - 1, -1, -1))
        self.num_bucket_misses = 0
        self.num_encoded_images = 0

    @property
    def encoded(self) -> set[int]:
        """Hashes of the images the pool holds."""
        return set(self.slots)

    def feed(
        self, sched: SchedulerOutput, inp: ModelInput, running: list[Sequence]
    ) -> CrossAttentionFeed:
        """The cross-attention inputs of the step `inp` built from `sched` (rows in
        scheduled order)."""
        scheduled = [item.seq for item in sched.scheduled]
        held = {s.multi_modal.image_hashes[0] for s in [*running, *scheduled] if s.multi_modal}
        for image_hash in [h for h in self.slots if h not in held]:
            self.free_slots.append(self.slots.pop(image_hash))
        batch, q_len = inp.shape.batch_size, inp.shape.query_len
        slots = np.zeros(batch, dtype=np.int64)
        rows = np.zeros(batch, dtype=np.float32)
        mask = np.zeros((batch, q_len, 1, self.max_num_tiles), dtype=np.float32)
        positions = inp.positions.numpy()
        encode = []
        for row, seq in enumerate(scheduled):
            mm = seq.multi_modal
            if mm is None:
                continue
            image_hash = mm.image_hashes[0]
            if image_hash not in self.slots:
                if not self.free_slots:
                    raise RuntimeError(
                        f"no free image slot for a step of {len(scheduled)} rows: the pool "
                        f"holds {len(self.slots)} images, one per running sequence at most"
                    )
                self.slots[image_hash] = self.free_slots.pop()
                encode.append(self._encode(seq, self.slots[image_hash]))
            slots[row], rows[row] = self.slots[image_hash], 1.0
            mask[row, :, 0] = mask_rows(
                positions[row],
                mm.placeholder_ranges[0][0],
                mm.pixel_values[0].shape[0],
                seq.num_prompt_tokens,
                self.max_num_tiles,
            )
        return CrossAttentionFeed(
            encode, torch.from_numpy(slots), torch.from_numpy(rows), torch.from_numpy(mask)
        )

    def _encode(self, seq: Sequence, slot: int) -> CrossImageEncode:
        mm = seq.multi_modal
        pixels = torch.from_numpy(np.ascontiguousarray(mm.pixel_values[0]))
        num_tiles = pixels.shape[0]
        if self.max_num_tiles not in self.warmed:
            self.num_bucket_misses += 1
        if num_tiles < self.max_num_tiles:
            pad = pixels.new_zeros((self.max_num_tiles - num_tiles, *pixels.shape[1:]))
            pixels = torch.cat([pixels, pad])
        self.num_encoded_images += 1
        return CrossImageEncode(slot, pixels, num_tiles, mm.aspect_ratio_ids[0])

    def warmup_feed(
        self, bucket_sizes: dict[int, tuple[int, int]], pixel_shape: tuple[int, ...]
    ) -> CrossAttentionFeed:
        """A feed that encodes one all-zero image of max_num_tiles tiles into slot 0 (free
        again after it) and gives no row an image."""
        tiles = self.max_num_tiles
        self.warmed.update(bucket_sizes)
        encode = [CrossImageEncode(0, torch.zeros((tiles, *pixel_shape)), tiles, 1)]
        return CrossAttentionFeed(encode, None, None, None)
