"""The messages of a step: what the host sends the runner (on every rank) and what comes back.

A leaf module (torch only), so the sampler, the runner and every tensor-parallel rank use
these types without importing the scheduler or the builders that fill them
(engine.model_input). A step feeds each row some query tokens and yields, per row, the
tokens it accepted: one for plain decoding, more when a `TokenSelector` (speculative
verification) decides over every query position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch

if TYPE_CHECKING:
    from engine.shapes import StepShape

# A token's logprob under the model's raw distribution and the top-n [(token, logprob)].
TokenLogprobs = tuple[float, list[tuple[int, float]]]


@dataclass
class SamplingInput:
    """Per-row sampling parameters, [batch] each (history: [batch, max_len], -1 padded)."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    repetition_penalty: torch.Tensor
    seeds: torch.Tensor
    counters: torch.Tensor  # how many tokens the row's request has generated so far
    history: torch.Tensor | None
    num_logprobs: int  # the largest top-n asked in the batch; 0 = none
    want_logprobs: bool
    is_all_greedy: bool
    needs_filters: bool  # any top-k / top-p

    def to(self, device: torch.device, num_rows: int) -> SamplingInput:
        """The first num_rows rows (the real ones), on device."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[:num_rows].to(device, non_blocking=True)

        return SamplingInput(
            temperature=move(self.temperature),
            top_k=move(self.top_k),
            top_p=move(self.top_p),
            repetition_penalty=move(self.repetition_penalty),
            seeds=move(self.seeds),
            counters=move(self.counters),
            history=move(self.history),
            num_logprobs=self.num_logprobs,
            want_logprobs=self.want_logprobs,
            is_all_greedy=self.is_all_greedy,
            needs_filters=self.needs_filters,
        )


@dataclass
class StepOutput:
    """What a step yields per row: the tokens it accepted, in order (one for plain
    decoding; for speculative verification the accepted proposals, then the target's own
    token), and when any row asked, each token's `TokenLogprobs`."""

    token_ids: list[list[int]]
    logprobs: list[list[TokenLogprobs]] | None = None


class TokenSelector(Protocol):
    """Turns a step's logits into each row's tokens in place of plain sampling of the last
    query position; its type decides how (e.g. engine.speculative.verify.VerifyInput).
    Built on the host with CPU tensors; the runner moves it and calls `select`."""

    def to(self, device: torch.device, num_rows: int) -> TokenSelector:
        """The first num_rows rows (the real ones), on device."""
        ...

    def select(self, logits: torch.Tensor) -> StepOutput:
        """logits: [num_rows, query_len, vocab], every query position of each row."""
        ...


@dataclass
class ImageEncode:
    """An image the runner encodes before the step's forward (the family's `encode_image`)
    and keeps, by hash, until a step releases it."""

    image_hash: int
    pixel_values: torch.Tensor  # [bucket, channels, height, width]: real patches, then zeros
    num_patches: int  # real patches
    image_size: tuple[int, int]  # (height, width) before processing
    num_tokens: int | None  # its placeholder tokens (features it must give); None: warm-up


@dataclass
class MultiModalFeed:
    """The images of a step of a multimodal model. The runner encodes `encode`, builds the
    step's feature table (a zero row, then the features of `table_hashes` in order), puts
    table row feature_index[i] in place of query position i's embedding where image_mask
    is set, runs the forward, then drops the features of `release`."""

    encode: list[ImageEncode]
    table_hashes: list[int]
    feature_index: torch.Tensor | None  # [batch * query_len] long; None: no image position
    image_mask: torch.Tensor | None  # [batch, query_len] bool
    release: list[int]


@dataclass
class CrossImageEncode:
    """An image a cross-attention model (Llama 3.2 Vision) encodes into pool slot `slot`
    before the step's forward: its keys and values stay there until the slot is reused."""

    slot: int
    pixel_values: torch.Tensor  # [max_num_tiles, channels, height, width]: tiles, then zeros
    num_tiles: int  # real tiles
    aspect_ratio_id: int  # the processor's id of the image's tile grid


@dataclass
class CrossAttentionFeed:
    """The images of a step of a cross-attention model. The runner encodes `encode`; row
    i's cross-attention layers read pool slot slots[i] when rows[i] is 1 (a text-only or
    padding row: 0), with mask[i] the processor's cross-attention mask rows of the
    positions the row feeds."""

    encode: list[CrossImageEncode]
    # None (the three): no row has an image (warm-up)
    slots: torch.Tensor | None  # [batch] long
    rows: torch.Tensor | None  # [batch] float, 1 for a row with an image
    mask: torch.Tensor | None  # [batch, query_len, 1, max_num_tiles] float 0/1


@dataclass
class ModelInput:
    """One padded step: every row feeds shape.query_len query tokens (left-padded)."""

    kind: str  # "prefill" | "decode"
    input_ids: torch.Tensor  # [batch, query_len]
    positions: torch.Tensor  # [batch, query_len]
    slot_mapping: torch.Tensor  # [batch * query_len]
    block_tables: torch.Tensor  # [batch, num_blocks]
    sampling: SamplingInput  # plain sampling of each row's last query position
    num_seqs: int  # real rows; rows past it are padding
    shape: StepShape
    num_tokens: int = 0  # real query tokens, padding excluded (the host's accounting)
    selector: TokenSelector | None = None  # replaces plain sampling when set
    # images of the step (multimodal models; CrossAttentionFeed: cross-attention ones)
    multi_modal: MultiModalFeed | CrossAttentionFeed | None = None


class FeedRow(NamedTuple):
    """One row of a step: token_ids fed at positions start, start + 1, ... of a sequence
    whose KV lives in block_table. A row of no tokens is padding."""

    token_ids: list[int]
    start: int
    block_table: list[int]
