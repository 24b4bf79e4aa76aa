"""The processed images of one request, as the engine receives them (`MultiModalInput`).

Built by `MultiModalProcessor.process` (the ingress or `LLM.generate`), pickled to a replica
and kept on the request's `Sequence`. Torch-free: pixels travel as numpy arrays.

Worked example: one image of 6 placeholder tokens at prompt positions 2..7, blocks of 4
tokens. Block 0 (positions 0-3) and block 1 (4-7) overlap it; block 2 (8-11) does not.

>>> import numpy as np
>>> mm = MultiModalInput((7,), ((2, 6),), (np.zeros((1, 3, 2, 2), np.float32),), ((2, 2),))
>>> mm.block_extra_keys(num_tokens=12, block_size=4)
[(7,), (7,), ()]

A cross-attention model's image (Llama 3.2 Vision: one image token, at 6) weighs on every
token's KV, the tokens before it too, so every block chains it in:

>>> mm = MultiModalInput((7,), ((6, 1),), (np.zeros((1, 3, 2, 2), np.float32),), ((2, 2),),
...                      aspect_ratio_ids=(1,), cross_attention=True)
>>> mm.block_extra_keys(num_tokens=12, block_size=4)
[(7,), (7,), (7,)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["MultiModalInput"]


@dataclass(frozen=True, eq=False)
class MultiModalInput:
    """The processed images of one request, picklable.

    image_hashes: a 128-bit content hash per image (its pixels and the processor's config);
        the prefix cache chains it into the hashes of the blocks the image overlaps.
    placeholder_ranges: (start, length) of each image's placeholder tokens in the prompt ids,
        in order and disjoint; length is the number of feature vectors the image becomes.
    pixel_values: per image, its real patches [num_patches, channels, height, width]
        (float32 numpy: the base image, then the anyres grid's tiles).
    image_sizes: per image, its (height, width) before processing (anyres unpadding).
    aspect_ratio_ids: per image, the processor's id of its tile grid (a cross-attention
        model: Llama 3.2 Vision, whose pixel_values are the image's real tiles); () else.
    cross_attention: the images reach the text model through cross-attention layers
        rather than in place of the placeholders: every prompt token's KV then depends on
        every image (tokens before an image attend to it too), so every block chains in
        every image's hash.
    """

    image_hashes: tuple[int, ...]
    placeholder_ranges: tuple[tuple[int, int], ...]
    pixel_values: tuple[Any, ...]
    image_sizes: tuple[tuple[int, int], ...]
    aspect_ratio_ids: tuple[int, ...] = ()
    cross_attention: bool = False

    def __post_init__(self) -> None:
        counts = {
            len(self.image_hashes),
            len(self.placeholder_ranges),
            len(self.pixel_values),
            len(self.image_sizes),
        }
        if len(counts) != 1:
            raise ValueError(
                "multi_modal: image_hashes, placeholder_ranges, pixel_values and image_sizes "
                f"must have one entry per image, got {len(self.image_hashes)}, "
                f"{len(self.placeholder_ranges)}, {len(self.pixel_values)}, "
                f"{len(self.image_sizes)}"
            )
        end = 0
        for start, length in self.placeholder_ranges:
            if start < end or length < 1:
                raise ValueError(
                    "multi_modal.placeholder_ranges must be disjoint (start, length) pairs in "
                    f"order with length >= 1, got {self.placeholder_ranges}"
                )
            end = start + length
        if self.cross_attention and len(self.aspect_ratio_ids) != len(self.image_hashes):
            raise ValueError(
                "multi_modal.aspect_ratio_ids must have one entry per image with "
                f"cross_attention, got {len(self.aspect_ratio_ids)} for "
                f"{len(self.image_hashes)} images"
            )

    @property
    def num_images(self) -> int:
        return len(self.image_hashes)

    @property
    def end(self) -> int:
        """One past the last placeholder position (0 without images)."""
        return sum(self.placeholder_ranges[-1]) if self.placeholder_ranges else 0

    def check(self, token_ids: list[int], image_token_id: int, max_patches: int) -> None:
        """Raise ValueError naming `multi_modal` unless the prompt ids hold exactly these
        placeholders and each image's patches fit the model."""
        if self.end > len(token_ids):
            raise ValueError(
                f"multi_modal.placeholder_ranges end at {self.end}, past the prompt's "
                f"{len(token_ids)} tokens: give the ids MultiModalProcessor.process returned"
            )
        for start, length in self.placeholder_ranges:
            if any(t != image_token_id for t in token_ids[start : start + length]):
                raise ValueError(
                    f"multi_modal.placeholder_ranges ({start}, {length}) covers tokens other "
                    f"than the image token {image_token_id}"
                )
        num_image_tokens = sum(1 for t in token_ids if t == image_token_id)
        num_placeholders = sum(length for _, length in self.placeholder_ranges)
        if num_image_tokens != num_placeholders:
            raise ValueError(
                f"the prompt holds {num_image_tokens} image tokens but multi_modal's images "
                f"take {num_placeholders}"
            )
        for i, pixels in enumerate(self.pixel_values):
            shape = getattr(pixels, "shape", ())
            if len(shape) != 4 or not 1 <= shape[0] <= max_patches:
                raise ValueError(
                    f"multi_modal.pixel_values[{i}] must be [num_patches <= {max_patches}, "
                    f"channels, height, width], got shape {tuple(shape)}"
                )

    def block_extra_keys(self, num_tokens: int, block_size: int) -> list[tuple[int, ...]]:
        """Per full block of the first num_tokens prompt tokens, the hashes of the images
        overlapping it (() for none): `engine.prefix_block_hashes(..., extra_keys=...)`."""
        if self.cross_attention:
            return [self.image_hashes] * (num_tokens // block_size)
        keys: list[tuple[int, ...]] = []
        for i in range(num_tokens // block_size):
            lo, hi = i * block_size, (i + 1) * block_size
            keys.append(
                tuple(
                    h
                    for h, (start, length) in zip(
                        self.image_hashes, self.placeholder_ranges, strict=True
                    )
                    if start < hi and start + length > lo
                )
            )
        return keys
