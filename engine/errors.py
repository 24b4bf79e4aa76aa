"""Exceptions the engine raises to its callers. All user-input errors are ValueErrors."""

from __future__ import annotations


class PromptTooLongError(ValueError):
    """The prompt (plus at least one generated token) does not fit max_model_len or the
    largest warmed bucket."""

    def __init__(self, num_prompt_tokens: int, max_prompt_tokens: int):
        self.num_prompt_tokens = num_prompt_tokens
        self.max_prompt_tokens = max_prompt_tokens
        super().__init__(
            f"prompt has {num_prompt_tokens} tokens; at most {max_prompt_tokens} are allowed "
            f"(max_model_len minus one generated token)"
        )


class EmptyPromptError(ValueError):
    def __init__(self):
        super().__init__("prompt must contain at least one token")


class UnsupportedModelError(ValueError):
    """The model's architecture is not one the engine runs."""


class EngineDeadError(RuntimeError):
    """The engine's step loop failed; requests in flight were failed with this error."""


class BucketMissError(RuntimeError):
    """strict_shapes: a step's padded shape was not warmed at start-up."""
