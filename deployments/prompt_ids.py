"""Prompts become token ids before routing: the ingress (and `LLMClient`) tokenizes each
prompt once, chat template and truncation included, and sends `LLMServer.generate` the
ids, which the replica does not tokenize again. A router then sees exactly the tokens the
replica will prefill (for its prefix hashes), and the replica's event loop does no
tokenizing.

Each model's `engine.PromptEncoder` is loaded from the tokenizer folder its replicas
report (`ModelInfo`), lazily, once, in a worker thread; the engine computes prompt ids
with the same class, so both agree by construction. Where no tokenizer loads from there
(the ingress runs on a node without the model's files, e.g. a Kubernetes ingress pod
without the model volume) one warning is logged per model and requests go out as before,
as text or messages that the replica tokenizes: never a failed request for that.

Errors keep their home: a chat for a model without a chat template is forwarded as
messages, so the replica answers the 400 naming "messages" as it always did; too-long and
out-of-vocabulary prompts are rejected by the replica from the ids.

A prompt with images (decoded PIL images, deployments.images) goes through the model's own
`engine.multimodal.MultiModalProcessor`, loaded from the model's folder like the
tokenizer, in a worker thread: the replica gets `{"prompt": ids, "multi_modal":
MultiModalInput}` and processes nothing. Where the processor does not load here, the
images travel with the text or messages and the replica processes them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from deployments.generation import InvalidRequestError, ModelInfo
from deployments.protocol import ApiError
from engine import (
    MultiModalInput,
    MultiModalProcessor,
    PromptEncoder,
    load_prompt_encoder,
    truncate_prompt,
)

logger = logging.getLogger(__name__)

# Prompts longer than this (characters, chat message contents summed) are tokenized in a
# worker thread rather than on the event loop. With SmolLM2's tokenizer a 4k-token prompt
# (~12k characters) takes ~3 ms and a 1k-token one ~0.75 ms; a thread hop costs ~0.1 ms.
MAX_INLINE_PROMPT_CHARS = 4096


class PromptIds:
    """The prompt arguments of `LLMServer.generate` calls, as token ids where the model's
    tokenizer loads here. One per process side (the ingress's ModelTable, an LLMClient);
    safe to use from several event loops."""

    def __init__(self) -> None:
        self._encoders: dict[str, PromptEncoder | None] = {}  # by tokenizer folder
        self._processors: dict[str, MultiModalProcessor | None] = {}  # by model folder
        self._lock = threading.Lock()  # held while a tokenizer or processor loads

    async def generate_kwargs(
        self,
        info: ModelInfo,
        prompt: str | list[int] | None = None,
        *,
        messages: list[dict[str, Any]] | None = None,
        truncate: int | None = None,
        images: list[Any] | None = None,
    ) -> dict[str, Any]:
        """`{"prompt": token ids}` for a text or token-id `prompt` or chat `messages`, with
        `truncate` (keep the last N tokens) applied; with `images` (PIL images, one per
        image placeholder in the text, or per {"type": "image"} part in the messages) also
        `"multi_modal"`. As given (`prompt`, `messages`, `truncate`, `images`: the replica
        resolves them) when the model's tokenizer (or processor) does not load here, or for
        messages to a model without a chat template. Raises ApiError 400 naming "truncate"
        for a truncate that is not an integer >= 1."""
        as_given = {"prompt": prompt}
        if messages is not None:
            as_given["messages"] = messages
        if truncate is not None:
            as_given["truncate"] = truncate
        if images:
            as_given["images"] = images
        if (prompt is None) == (messages is None):  # the replica names what is wrong
            return as_given
        if images:
            return await self._with_images(info, prompt, messages, truncate, images, as_given)
        encoder = await self.encoder(info)
        if encoder is None or (messages is not None and not encoder.has_chat_template):
            return as_given
        ids = await _encode(encoder, prompt, messages)
        if truncate is not None:
            try:
                ids = truncate_prompt(ids, truncate)
            except ValueError as exc:
                raise ApiError(400, str(exc), "truncate") from None
        return {"prompt": ids}

    async def _with_images(
        self,
        info: ModelInfo,
        prompt: str | list[int] | None,
        messages: list[dict[str, Any]] | None,
        truncate: int | None,
        images: list[Any],
        as_given: dict[str, Any],
    ) -> dict[str, Any]:
        processor = await self.processor(info)
        if processor is None:
            return as_given
        try:  # pixels to patches: milliseconds per image, off the event loop
            ids, multi_modal = await asyncio.to_thread(
                process_images, processor, prompt, messages, images, truncate
            )
        except InvalidRequestError as exc:
            raise ApiError(400, exc.message, exc.param) from None
        return {"prompt": ids, "multi_modal": multi_modal}

    async def processor(self, info: ModelInfo) -> MultiModalProcessor | None:
        """The model's MultiModalProcessor; None where it does not load here."""
        path = info.path
        if path in self._processors:
            return self._processors[path]
        return await asyncio.to_thread(self._load_processor, info.name, path)

    def _load_processor(self, model: str, path: str) -> MultiModalProcessor | None:
        with self._lock:
            if path not in self._processors:
                try:
                    self._processors[path] = MultiModalProcessor.load(path)
                except (OSError, ValueError, KeyError) as exc:  # FileNotFoundError included
                    logger.warning(
                        "model %r: no image processor loads from %s on this node (%s); its "
                        "prompts with images go to the replicas as text and images",
                        model,
                        path,
                        exc,
                    )
                    self._processors[path] = None
            return self._processors[path]

    async def encoder(self, info: ModelInfo) -> PromptEncoder | None:
        """The model's PromptEncoder; None where its tokenizer does not load here."""
        path = info.tokenizer_dir
        if path in self._encoders:
            return self._encoders[path]
        return await asyncio.to_thread(self._load, info.name, path)

    def _load(self, model: str, path: str) -> PromptEncoder | None:
        with self._lock:
            if path not in self._encoders:
                try:
                    self._encoders[path] = load_prompt_encoder(path)
                except (OSError, ValueError) as exc:  # FileNotFoundError included
                    logger.warning(
                        "model %r: no tokenizer loads from %s on this node (%s); its prompts "
                        "go to the replicas as text, which tokenize them",
                        model,
                        path,
                        exc,
                    )
                    self._encoders[path] = None
            return self._encoders[path]


def process_images(
    processor: MultiModalProcessor,
    prompt: str | list[int] | None,
    messages: list[dict[str, Any]] | None,
    images: list[Any],
    truncate: int | None = None,
) -> tuple[list[int], MultiModalInput]:
    """The prompt ids and processed images of a text `prompt` (one image placeholder per
    image) or chat `messages` (one {"type": "image"} part per image). Blocking (call it in
    a worker thread); raises InvalidRequestError naming the input. A `truncate` that would
    drop tokens is refused: cutting into an image's tokens would orphan its features."""
    if messages is not None:
        param, process, value = "messages", processor.process_chat, messages
    elif isinstance(prompt, str):
        param, process, value = "prompt", processor.process, prompt
    else:
        raise InvalidRequestError("a prompt with images must be text, not token ids", "prompt")
    try:
        ids, multi_modal = process(value, images)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param) from None
    if truncate is not None and truncate < len(ids):
        message = (
            f"truncate={truncate} would cut this prompt with images ({len(ids)} tokens, its "
            "images' included): omit truncate or send a shorter prompt"
        )
        raise InvalidRequestError(message, "truncate")
    return ids, multi_modal


async def _encode(
    encoder: PromptEncoder, prompt: str | list[int] | None, messages: list[dict[str, Any]] | None
) -> list[int]:
    if messages is not None:
        num_chars = sum(len(str(m.get("content") or "")) for m in messages)
        encode, value, param = encoder.encode_chat, messages, "messages"
    elif isinstance(prompt, str):
        num_chars = len(prompt)
        encode, value, param = encoder.encode, prompt, "prompt"
    else:
        return list(prompt)
    try:
        if num_chars > MAX_INLINE_PROMPT_CHARS:  # the tokenizer lets go of the GIL meanwhile
            return await asyncio.to_thread(encode, value)
        return encode(value)
    except ValueError as exc:  # as the replica answered a prompt its tokenizer refused
        raise ApiError(400, str(exc), param) from None
