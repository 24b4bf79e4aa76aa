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
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from deployments.generation import ModelInfo
from deployments.protocol import ApiError
from engine import PromptEncoder, load_prompt_encoder, truncate_prompt

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
        self._lock = threading.Lock()  # held while a tokenizer loads

    async def generate_kwargs(
        self,
        info: ModelInfo,
        prompt: str | list[int] | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        truncate: int | None = None,
    ) -> dict[str, Any]:
        """`{"prompt": token ids}` for a text or token-id `prompt` or chat `messages`, with
        `truncate` (keep the last N tokens) applied. As given (`prompt`, `messages`,
        `truncate`: the replica resolves them) when the model's tokenizer does not load
        here, or for messages to a model without a chat template. Raises ApiError 400
        naming "truncate" for a truncate that is not an integer >= 1."""
        as_given = {"prompt": prompt}
        if messages is not None:
            as_given["messages"] = messages
        if truncate is not None:
            as_given["truncate"] = truncate
        if (prompt is None) == (messages is None):  # the replica names what is wrong
            return as_given
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


async def _encode(
    encoder: PromptEncoder, prompt: str | list[int] | None, messages: list[dict[str, str]] | None
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
