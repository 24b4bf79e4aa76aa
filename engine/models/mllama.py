"""Llama 3.2 Vision (`mllama`): transformers' MllamaForConditionalGeneration over the paged
cache, its cross-attention layers reading each image's keys and values from a pool.

The text model interleaves self-attention layers (the paged cache, as every family's) with
cross-attention layers that attend to the image's vision states. Those states do not grow
with the sequence, so they are not paged: when a request's prefill starts, its image runs
once through the vision model and the projector at a fixed shape (the tiles padded to
max_num_tiles, as the processor pads them), and every cross-attention layer's keys and
values of it are written to one slot of a pool ([num_slots, kv_heads, image tokens,
head_dim] per layer, a slot per running image; engine.multimodal.cross_feed picks them).
Each step then passes, per row, the slot to read, whether the row has an image, and the
processor's cross-attention mask rows of the positions it feeds; transformers turns the
mask into its additive mask and the MLP's row mask as it does in `generate`.

Text-only rows: transformers skips the cross-attention layers when a request has no image;
here the layer runs for the whole batch, and a text-only row's attention output is zeroed
(and its MLP masked by the all-zero mask row), so the layer adds exactly zero: the same
hidden states. Rows of an image request before its image token attend uniformly to every
image token (transformers' fully masked rows), so their KV depends on the image too
(`MultiModalInput.cross_attention`: every prompt block chains in the image's hash).

The vision model attends with SDPA (`patch_model`): only the self-attention layers read
the paged cache, and the cross-attention layers never write to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.mllama.modeling_mllama import MllamaTextCrossAttention

from engine.errors import UnsupportedModelError
from engine.family_features import shared_unsupported_features
from engine.messages import CrossAttentionFeed
from engine.models.llava_next import PatchBuckets

__all__ = [
    "CrossAttentionBatch",
    "CrossAttentionImages",
    "PooledCrossAttention",
    "patch_buckets",
    "patch_model",
    "unsupported_features",
]

VISION_ATTN_IMPLEMENTATION = "sdpa"


@dataclass
class CrossAttentionBatch:
    """Per-step inputs of the pooled cross-attention layers, shared by each of them.

    slots: [batch] long, the pool slot each row reads (any slot for a text-only row)
    rows: [batch] in the model's dtype, 1 for a row with an image, 0 for one without
    """

    slots: torch.Tensor
    rows: torch.Tensor


class PooledCrossAttention(MllamaTextCrossAttention):
    """transformers' cross-attention with its keys and values read from the slot pool
    (`k_pool`, `v_pool`: [num_slots, kv_heads, image tokens, head_dim]) instead of computed
    from `cross_attention_states` or a cache. Set on the model by `patch_model`."""

    k_pool: torch.Tensor
    v_pool: torch.Tensor

    def forward(
        self,
        hidden_states: torch.Tensor,
        cross_attention_states: torch.Tensor | None = None,
        cache: Any = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cross: CrossAttentionBatch | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        if cross is None:
            raise RuntimeError(
                "the pooled cross-attention layers need the `cross` forward kwarg; run the "
                "model through engine.ModelRunner"
            )
        bsz, q_len, _ = hidden_states.size()
        query = self.q_proj(hidden_states).view(bsz, q_len, self.num_heads, self.head_dim)
        query = self.q_norm(query.transpose(1, 2))
        key = self.k_pool.index_select(0, cross.slots)
        value = self.v_pool.index_select(0, cross.slots)
        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            scale=self.scaling,
            enable_gqa=self.num_heads != self.num_key_value_heads,
        )
        # a text-only row: no cross-attention at all (transformers skips the layer)
        out = out * cross.rows.view(bsz, 1, 1, 1)
        out = out.transpose(1, 2).reshape(bsz, q_len, -1)
        return self.o_proj(out), None


def cross_attention_modules(model: Any) -> list[PooledCrossAttention]:
    """The text model's cross-attention modules, in layer order."""
    return [
        layer.cross_attn
        for layer in model.model.language_model.layers
        if isinstance(getattr(layer, "cross_attn", None), MllamaTextCrossAttention)
    ]


def patch_model(model: Any) -> Any:
    """The vision model back on SDPA (it reads no KV cache), and the cross-attention
    layers on their slot pools (`PooledCrossAttention`; pools set by
    `CrossAttentionImages`)."""
    model.model.vision_model.set_attn_implementation(VISION_ATTN_IMPLEMENTATION)
    for module in cross_attention_modules(model):
        module.__class__ = PooledCrossAttention
    return model


def unsupported_features(config: Any) -> list[str]:
    """The shared checks and the text model's: its layers are Llama's (RoPE scaling
    included), so the Llama family's checks apply."""
    from engine.families import get_family

    text = config.get_text_config()
    reasons = shared_unsupported_features(config)
    try:
        reasons += get_family("llama").unsupported_features(text)
    except UnsupportedModelError as exc:
        reasons.append(f"its text model: {exc}")
    return reasons


def patch_buckets(config: Any) -> PatchBuckets:
    """One bucket: every image runs as max_num_tiles tiles (the processor pads them).

    >>> from types import SimpleNamespace as NS
    >>> cfg = NS(vision_config=NS(max_num_tiles=4, image_size=448, num_channels=3))
    >>> patch_buckets(cfg)
    PatchBuckets(sizes={4: (448, 1792)}, patch_shape=(3, 448, 448))
    """
    vision = config.vision_config
    tile, tiles = vision.image_size, vision.max_num_tiles
    return PatchBuckets({tiles: (tile, tile * tiles)}, (vision.num_channels, tile, tile))


class CrossAttentionImages:
    """The device side of images for a cross-attention model: the K/V slot pools, each
    image's encoding into its slot, and each step's forward kwargs.

    num_slots: images held at once (the engine's max_num_seqs: a running sequence holds at
    most one image).
    """

    def __init__(self, model: Any, num_slots: int, device: torch.device):
        self.model = model
        vision = model.config.vision_config
        self.max_num_tiles = vision.max_num_tiles
        self.num_image_tokens = vision.max_num_tiles * model.model.vision_model.num_patches
        self.modules = cross_attention_modules(model)
        dtype = model.get_input_embeddings().weight.dtype
        for module in self.modules:
            shape = (num_slots, module.num_key_value_heads, self.num_image_tokens, module.head_dim)
            module.k_pool = torch.zeros(shape, dtype=dtype, device=device)
            module.v_pool = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def num_slots(self) -> int:
        return self.modules[0].k_pool.shape[0] if self.modules else 0

    def encode(self, feed: CrossAttentionFeed) -> None:
        """Run the feed's new images through the vision model and the projector, and
        write every cross-attention layer's keys and values of each into its slot."""
        dev = self.modules[0].k_pool.device
        dtype = self.modules[0].k_pool.dtype
        inner = self.model.model
        for image in feed.encode:
            pixels = image.pixel_values.to(dev, dtype=dtype, non_blocking=True)
            tiles = pixels.shape[0]
            ratio_ids = torch.tensor([[image.aspect_ratio_id]], device=dev)
            ratio_mask = (torch.arange(tiles, device=dev) < image.num_tiles).long().view(1, 1, -1)
            out = inner.vision_model(
                pixel_values=pixels[None, None],
                aspect_ratio_ids=ratio_ids,
                aspect_ratio_mask=ratio_mask,
            )
            states = inner.multi_modal_projector(out.last_hidden_state).reshape(
                1, -1, inner.hidden_size
            )
            for module in self.modules:
                key = module.k_proj(states).view(1, -1, module.num_key_value_heads, module.head_dim)
                value = module.v_proj(states).view(
                    1, -1, module.num_key_value_heads, module.head_dim
                )
                module.k_pool[image.slot] = module.k_norm(key.transpose(1, 2))[0]
                module.v_pool[image.slot] = value.transpose(1, 2)[0]

    def step_inputs(self, feed: CrossAttentionFeed | None, batch: int, q_len: int) -> dict:
        """The step's cross-attention tensors on the device (all zeros where no row has
        an image: a warm-up or all-padding step)."""
        dev = self.modules[0].k_pool.device
        dtype = self.modules[0].k_pool.dtype
        if feed is None or feed.slots is None:
            return {
                "cross_slots": torch.zeros(batch, dtype=torch.long, device=dev),
                "cross_rows": torch.zeros(batch, dtype=dtype, device=dev),
                "cross_mask": torch.zeros((batch, q_len, 1, self.max_num_tiles), device=dev),
            }
        return {
            "cross_slots": feed.slots.to(dev, non_blocking=True),
            "cross_rows": feed.rows.to(dev, dtype=dtype, non_blocking=True),
            "cross_mask": feed.mask.to(dev, non_blocking=True),
        }

    @staticmethod
    def forward_kwargs(
        cross_slots: torch.Tensor, cross_rows: torch.Tensor, cross_mask: torch.Tensor
    ) -> dict[str, Any]:
        """The model kwargs of a step's cross-attention tensors. transformers skips the
        cross-attention layers when `cross_attention_states` is None; the pooled layers
        read their keys and values from the pool, so any tensor keeps them running (the
        rows)."""
        return {
            "cross_attention_states": cross_rows,
            "cross_attention_mask": cross_mask,
            "cross": CrossAttentionBatch(cross_slots, cross_rows),
        }
