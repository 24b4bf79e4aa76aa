"""One request's state as the scheduler and block manager see it (host-only bookkeeping)."""

from __future__ import annotations

import enum
import itertools
from typing import TYPE_CHECKING

from engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from engine.multimodal import MultiModalInput

_seq_ids = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """Token ids (prompt then output), the block table and how many tokens have KV written.

    Positions [0, num_computed_tokens) have their KV in the cache; a step feeds tokens from
    num_computed_tokens on. After a preemption num_computed_tokens drops to 0 and the whole
    sequence (prompt and output so far) is prefilled again.

    multi_modal: the prompt's processed images (None: text only); their placeholder
    positions take image features in place of token embeddings, and the prefix cache
    hashes the images into the blocks they overlap (`block_extra_keys`).
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        seed: int,
        prompt: str | None = None,
        multi_modal: MultiModalInput | None = None,
    ):
        self.seq_id = next(_seq_ids)
        self.request_id = request_id
        self.prompt = prompt
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.seed = seed  # params.seed, or one drawn from the engine's generator
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache
        self.num_hashed_blocks = 0  # leading full blocks already published to the prefix cache
        # The prefix-cache hashes of its leading full blocks, as far as the block manager
        # has computed them (engine.prefix_hash, chained): tokens are only ever appended,
        # so a block's hash never changes and each is computed once.
        self.prefix_hashes: list[int] = []
        self.num_preemptions = 0
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.multi_modal = multi_modal if multi_modal and multi_modal.num_images else None
        self._extra_keys: list[tuple[int, ...]] | None = None

    def block_extra_keys(self, block_size: int) -> list[tuple[int, ...]]:
        """Per full prompt block, the image hashes the prefix cache chains into its hash
        (engine.prefix_hash); empty for a text-only sequence. Blocks past the list (the
        output's) have none."""
        if self.multi_modal is None:
            return []
        if self._extra_keys is None:
            self._extra_keys = self.multi_modal.block_extra_keys(self.num_prompt_tokens, block_size)
        return self._extra_keys

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_prefilling(self) -> bool:
        """More than the last token still lacks KV: the next step for it is (part of) a prefill."""
        num_tokens = len(self.token_ids)  # (the scheduler asks this of every row, every step)
        return num_tokens - self.num_computed_tokens > 1 or num_tokens == self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, req={self.request_id!r}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, blocks={len(self.block_table)})"
        )
