"""Prompts to token ids, the one way the engine computes them: a text prompt through the
tokenizer (special tokens such as BOS added as the tokenizer does), chat messages through
the tokenizer's chat template with the generation prompt, and truncation to the last N
tokens.

`AsyncEngine.encode` / `encode_chat` use a `PromptEncoder` over the engine's tokenizer;
the ingress uses one over a tokenizer loaded from the same folder (`load_prompt_encoder`,
no weights), so both compute the same ids for the same prompt by construction and the
replica receives ids it does not tokenize again.

Importing this module loads neither torch nor transformers; `load_prompt_encoder` loads
both (through engine.loader).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["PromptEncoder", "load_prompt_encoder", "truncate_prompt"]


class PromptEncoder:
    """Token ids of prompts, from a Hugging Face tokenizer (`tokenizer`: what
    `AutoTokenizer.from_pretrained` returns). Safe to call from several threads at once
    (it never changes the tokenizer's settings)::

        encoder = load_prompt_encoder(model_dir)   # the tokenizer only
        ids = encoder.encode_chat([{"role": "user", "content": "hi"}])
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    @property
    def has_chat_template(self) -> bool:
        """Whether `encode_chat` can run (the tokenizer has a chat template)."""
        return bool(self.tokenizer.chat_template)

    def encode(self, text: str) -> list[int]:
        """The prompt ids of `text`, special tokens such as BOS added as the tokenizer does."""
        return self.tokenizer.encode(text)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt ids of a chat: the chat template with the generation prompt added.
        Raises ValueError when the tokenizer has no chat template."""
        if not self.has_chat_template:
            raise ValueError("messages need a chat template, and this model's tokenizer has none")
        tokenizer = self.tokenizer
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The template already wrote any BOS text: encode without adding special tokens.
        return tokenizer.encode(text, add_special_tokens=False)


def truncate_prompt(token_ids: list[int], truncate: int) -> list[int]:
    """The last `truncate` ids of a prompt (all of them when it is shorter). Raises
    ValueError naming `truncate` unless it is an integer >= 1.

    >>> truncate_prompt([1, 2, 3, 4], 2)
    [3, 4]
    """
    if not isinstance(truncate, int) or truncate < 1:
        raise ValueError(f"truncate must be an integer >= 1, got {truncate!r}")
    return list(token_ids[-truncate:])


def load_prompt_encoder(path: str | Path) -> PromptEncoder:
    """A PromptEncoder over the tokenizer in folder `path` (a model's or a tokenizer's;
    no weights are read). Raises FileNotFoundError when no tokenizer loads from there."""
    from engine.loader import load_tokenizer

    return PromptEncoder(load_tokenizer(Path(path)))
