"""The only code that touches the device: owns the model and its paged KV cache on one
rank, and runs one padded step (forward, then sampling).

A multimodal model (a family with `encode_image`) also keeps each image's features on the
device, by content hash, from the step that encodes it until a step releases it (the host
decides both: engine.multimodal.feed). Its prefill steps run on `inputs_embeds`: the token
embeddings with image features in place of the placeholders' (zeros and no image in a step
without one, so each prefill shape has one graph); its decode steps run on input_ids.

A cross-attention model (a family with `cross_attention`: Llama 3.2 Vision) keeps each
image's keys and values in a slot pool instead (the family's device side), and every step
passes each row's slot and cross-attention mask rows (engine.multimodal.cross_feed).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from engine.attention import KV_FP8_DTYPE, PagedMetadata
from engine.devices import Device
from engine.loader import KVSpec
from engine.messages import (
    CrossAttentionFeed,
    ModelInput,
    MultiModalFeed,
    SamplingInput,
    StepOutput,
)
from engine.sampler import sample
from engine.shapes import StepShape


class ModelRunner:
    """encode_image: the model family's image encoder (engine.families), None for a
    text-only model. cross_attention: the family's device side of images for a
    cross-attention model, built with num_image_slots slots (None: no such layers)."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: Device,
        kv_spec: KVSpec,
        block_size: int,
        encode_image: Callable[..., torch.Tensor] | None = None,
        cross_attention: Callable[..., Any] | None = None,
        num_image_slots: int = 1,
    ):
        self.model = model
        self.device = device
        self.kv_spec = kv_spec
        # where an FP8 cache saturates (asked of the device only when the cache is FP8)
        is_fp8 = kv_spec.cache_dtype == KV_FP8_DTYPE
        self.kv_fp8_max = device.kv_fp8_max if is_fp8 else torch.finfo(KV_FP8_DTYPE).max
        self.block_size = block_size
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.graphs: dict[StepShape, object] = {}  # shape -> replayable forward
        self.num_graph_replays = 0
        self.num_eager_runs = 0
        self.encode_image = encode_image
        self.image_features: dict[int, torch.Tensor] = {}  # hash -> [num_tokens, hidden]
        self.cross_attention = None
        if cross_attention is not None:
            self.cross_attention = cross_attention(model, num_image_slots, device.torch_device)

    def init_kv_cache(self, num_blocks: int) -> None:
        """Allocate per layer K and V pools: [num_blocks, block_size, kv_heads, head_dim] of
        the spec's storage dtype (float8 for an fp8 KV cache, else the model's)."""
        spec = self.kv_spec
        shape = (num_blocks, self.block_size, spec.num_kv_heads, spec.head_dim)
        dev = self.device.torch_device
        self.kv_caches = [
            (
                torch.zeros(shape, dtype=spec.storage_dtype, device=dev),
                torch.zeros(shape, dtype=spec.storage_dtype, device=dev),
            )
            for _ in range(spec.num_layers)
        ]

    @property
    def num_kv_blocks(self) -> int:
        return self.kv_caches[0][0].shape[0] if self.kv_caches else 0

    def prepare_inputs(self, inp: ModelInput) -> dict[str, torch.Tensor]:
        dev = self.device.torch_device
        positions = inp.positions.to(dev, non_blocking=True)
        num_context = inp.shape.num_blocks * self.block_size
        inputs = {
            "input_ids": inp.input_ids.to(dev, non_blocking=True),
            "positions": positions,
            "slot_mapping": inp.slot_mapping.to(dev, non_blocking=True),
            "block_tables": inp.block_tables.to(dev, non_blocking=True),
            "mask": PagedMetadata.causal_mask(positions, num_context),
        }
        if self.cross_attention is not None:
            batch, q_len = inp.input_ids.shape
            inputs.update(self.cross_attention.step_inputs(inp.multi_modal, batch, q_len))
        elif self.encode_image is not None and inp.kind == "prefill":
            inputs["image_embeds"], inputs["image_mask"] = self.prepare_image_inputs(inp)
        return inputs

    def prepare_image_inputs(self, inp: ModelInput) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeds [batch, query_len, hidden]: the step's image features at the
        positions that take one (zeros elsewhere); image_mask [batch, query_len, 1]."""
        dev = self.device.torch_device
        batch, q_len = inp.input_ids.shape
        weight = self.model.get_input_embeddings().weight
        feed = inp.multi_modal
        if feed is None or feed.feature_index is None:
            embeds = torch.zeros((batch, q_len, weight.shape[1]), dtype=weight.dtype, device=dev)
            return embeds, torch.zeros((batch, q_len, 1), dtype=torch.bool, device=dev)
        # table: [1 + step's image tokens, hidden], row 0 zeros
        table = torch.cat(
            [weight.new_zeros((1, weight.shape[1]))]
            + [self.image_features[h].to(weight.dtype) for h in feed.table_hashes]
        )
        index = feed.feature_index.to(dev, non_blocking=True)
        embeds = table.index_select(0, index).view(batch, q_len, -1)
        return embeds, feed.image_mask.to(dev, non_blocking=True).unsqueeze(-1)

    def run_image_encoders(self, feed: MultiModalFeed | CrossAttentionFeed | None) -> None:
        """Encode the feed's new images and keep their features."""
        if feed is None:
            return
        if self.cross_attention is not None:
            self.cross_attention.encode(feed)
            return
        dev = self.device.torch_device
        dtype = self.model.get_input_embeddings().weight.dtype
        for image in feed.encode:
            pixels = image.pixel_values.to(dev, dtype=dtype, non_blocking=True)
            features = self.encode_image(self.model, pixels, image.num_patches, image.image_size)
            if image.num_tokens is not None and features.shape[0] != image.num_tokens:
                raise RuntimeError(
                    f"image {image.image_hash:032x} gave {features.shape[0]} feature vectors "
                    f"for {image.num_tokens} placeholder tokens: the processor and the model "
                    "disagree"
                )
            self.image_features[image.image_hash] = features

    def release_images(self, feed: MultiModalFeed | CrossAttentionFeed | None) -> None:
        if not isinstance(feed, MultiModalFeed):
            return  # a cross-attention model's slots are reused, never released
        for image_hash in feed.release:
            self.image_features.pop(image_hash, None)

    def run_forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        slot_mapping: torch.Tensor,
        block_tables: torch.Tensor,
        mask: torch.Tensor,
        num_logits: int = 1,
        image_embeds: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        cross_slots: torch.Tensor | None = None,
        cross_rows: torch.Tensor | None = None,
        cross_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Padded forward over the paged cache -> logits [batch, num_logits, vocab] for the
        last num_logits positions of every row. Static shapes only: capturable.
        image_embeds/image_mask (a multimodal prefill): where the mask is set, the image
        feature replaces the token's embedding. cross_* (a cross-attention model): each
        row's pool slot, image flag and cross-attention mask rows."""
        paged = PagedMetadata(
            self.kv_caches, slot_mapping, block_tables, positions, mask, self.kv_fp8_max
        )
        tokens: dict[str, Any] = {"input_ids": input_ids}
        if image_embeds is not None:
            embeds = self.model.get_input_embeddings()(input_ids)
            tokens = {"inputs_embeds": torch.where(image_mask, image_embeds, embeds)}
        if cross_slots is not None:
            tokens.update(self.cross_attention.forward_kwargs(cross_slots, cross_rows, cross_mask))
        out = self.model(
            **tokens,
            position_ids=positions,
            paged=paged,
            use_cache=False,
            logits_to_keep=num_logits,
        )
        return out.logits

    @staticmethod
    def num_logits(shape: StepShape) -> int:
        """Logits kept per row: the last position of a prefill chunk; every query position
        of a decode step (one for plain decoding; a `TokenSelector` may use them all)."""
        return shape.query_len if shape.kind == "decode" else 1

    @torch.inference_mode()
    def run_logits(self, inp: ModelInput) -> torch.Tensor:
        """The padded forward (graph replay where captured) -> logits of the real rows,
        [num_seqs, num_logits, vocab], on the device. NOTE: a replayed graph's output is
        overwritten by the next replay: consume it first."""
        self.run_image_encoders(inp.multi_modal)
        inputs = self.prepare_inputs(inp)
        graph = self.graphs.get(inp.shape)
        if graph is not None:
            logits = graph(**inputs)
            self.num_graph_replays += 1
        else:
            logits = self.run_forward(**inputs, num_logits=self.num_logits(inp.shape))
            self.num_eager_runs += 1
        self.release_images(inp.multi_modal)
        return logits[: inp.num_seqs]

    @torch.inference_mode()
    def execute(self, inp: ModelInput) -> StepOutput:
        """The forward, then each row's tokens: the input's selector decides when it has
        one, else plain sampling of the last query position."""
        logits = self.run_logits(inp)
        # NOTE: a step boundary between forward and sampling keeps each bucket's lazy-mode
        # graph independent of the sampling path the batch takes (HPU; no-op elsewhere).
        self.device.mark_step()
        if inp.selector is not None:
            return inp.selector.to(self.device.torch_device, inp.num_seqs).select(logits)
        sampling = self.prepare_sampling(inp.sampling, inp.num_seqs)
        return sample(logits[:, -1, :], sampling).as_step_output()

    @torch.inference_mode()
    def warmup(self, inp: ModelInput, capture: bool) -> None:
        """Run one all-padding step of inp.shape; capture its graph if asked."""
        self.execute(inp)
        if capture:
            forward = functools.partial(self.run_forward, num_logits=self.num_logits(inp.shape))
            self.graphs[inp.shape] = self.device.capture(forward, self.prepare_inputs(inp))

    def prepare_sampling(self, s: SamplingInput, num_seqs: int) -> SamplingInput:
        return s.to(self.device.torch_device, num_seqs)
