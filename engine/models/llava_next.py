"""Llava-NeXT (`llava_next`): transformers' LlavaNextForConditionalGeneration over the paged
cache, its vision tower run once per image at a fixed patch count.

The text side runs as every family's does: the runner calls the model with `inputs_embeds`
(the token embeddings, with each image's feature vectors in place of its placeholder
tokens) and the `paged` kwarg; transformers' LlavaNext forward passes them to its language
model unchanged. The image side is `encode_image`: the CLIP tower and the projector over
the image's patches padded to a patch-count bucket (`patch_buckets`: the patch counts the
anyres grid pinpoints give, warmed at start-up), then transformers' own
`pack_image_features` (anyres unpadding and the newline vectors) over the real patches.

The vision tower attends with SDPA (`patch_model`): only the text layers read the paged
cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from engine.errors import UnsupportedModelError
from engine.family_features import shared_unsupported_features

__all__ = ["PatchBuckets", "encode_image", "patch_buckets", "patch_model", "unsupported_features"]

VISION_ATTN_IMPLEMENTATION = "sdpa"


def patch_model(model: Any) -> Any:
    """The vision tower back on SDPA: it reads no KV cache (the text model keeps the paged
    attention it was loaded with)."""
    model.model.vision_tower.set_attn_implementation(VISION_ATTN_IMPLEMENTATION)
    return model


def unsupported_features(config: Any) -> list[str]:
    """The shared checks, the text model's family (supported, and its own checks), and the
    one patch-merge layout transformers implements."""
    from engine.families import get_family

    reasons = shared_unsupported_features(config)
    text = config.get_text_config()
    try:
        reasons += get_family(text.model_type).unsupported_features(text)
    except UnsupportedModelError as exc:
        reasons.append(f"its text model: {exc}")
    merge = getattr(config, "multimodal_patch_merge_type", "spatial_unpad")
    if merge not in (None, "spatial_unpad"):
        reasons.append(f"multimodal_patch_merge_type={merge!r} (only 'spatial_unpad' runs)")
    return reasons


@dataclass(frozen=True)
class PatchBuckets:
    """The patch counts the vision tower runs at.

    sizes: patch count -> an image (height, width) that has that many patches (warm-up).
    patch_shape: (channels, height, width) of one patch.
    """

    sizes: dict[int, tuple[int, int]]
    patch_shape: tuple[int, int, int]

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(sorted(self.sizes))


def patch_buckets(config: Any) -> PatchBuckets:
    """The patch counts an image can have: the base image plus the tiles of one of the
    anyres grid pinpoints (a [height, width] in pixels, tiled by the tower's image size).

    >>> from types import SimpleNamespace as NS
    >>> cfg = NS(image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336]],
    ...          vision_config=NS(image_size=336, num_channels=3))
    >>> buckets = patch_buckets(cfg)
    >>> buckets.counts, buckets.sizes[5], buckets.patch_shape
    ((3, 4, 5), (672, 672), (3, 336, 336))
    """
    vision = config.vision_config
    tile = vision.image_size
    sizes = {1 + (h // tile) * (w // tile): (h, w) for h, w in config.image_grid_pinpoints}
    return PatchBuckets(dict(sorted(sizes.items())), (vision.num_channels, tile, tile))


def encode_image(
    model: Any, pixel_values: torch.Tensor, num_patches: int, image_size: tuple[int, int]
) -> torch.Tensor:
    """The feature vectors of one image, [num_placeholder_tokens, text hidden size].

    pixel_values: [bucket, channels, height, width], the image's num_patches real patches
    first, then zero padding (each patch is encoded on its own, so padding changes nothing
    but the fixed shape)."""
    inner, config = model.model, model.config
    layer = config.vision_feature_layer
    strategy = config.vision_feature_select_strategy
    out = inner.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
    if isinstance(layer, int):
        selected = out.hidden_states[layer]
    else:
        selected = torch.cat([out.hidden_states[i] for i in layer], dim=-1)
    if strategy == "default":  # drop CLS
        selected = selected[:, 1:]
    features = inner.multi_modal_projector(selected)[:num_patches]
    sizes = [list(image_size)]  # host ints: no device-to-host sync in the unpadding
    packed, _ = inner.pack_image_features(
        [features],
        sizes,
        vision_feature_select_strategy=strategy,
        image_newline=inner.image_newline,
    )
    return packed[0]
