"""Speculative decoding settings of one engine: a frozen dataclass, validated at
construction so every error names the field and the allowed values."""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("draft", "ngram", "hybrid")
MAX_SPECULATIVE_TOKENS = 8


@dataclass(frozen=True)
class SpeculativeConfig:
    """How the engine speculates.

    method: "draft" (a small model sharing the target's tokenizer proposes tokens),
        "ngram" (prompt lookup: the tokens that followed the most recent earlier
        occurrence of the sequence's last n tokens) or "hybrid" (prompt lookup where it
        fills the budget, the draft model elsewhere: engine.speculative.hybrid).
    num_speculative_tokens: k, the most tokens proposed per sequence and step (1..8); a
        verify step feeds k + 1 tokens per sequence.
    draft_model: the draft's local model directory, or the name of a model gaudi-serve
        provides (engine.assets.MODEL_NAMES); None = the bundled draft
        (`engine.assets.default_draft_model_path()`). Methods "draft" and "hybrid".
    prompt_lookup_min / prompt_lookup_max: n-gram sizes tried, longest first ("ngram",
        "hybrid").
    adaptive: choose k per step (0 = a plain decode step) from the batch size and the
        measured acceptance (see engine.speculative.adaptive); False = always k.
    """

    method: str = "draft"
    num_speculative_tokens: int = 4
    draft_model: str | None = None
    prompt_lookup_min: int = 1
    prompt_lookup_max: int = 4
    adaptive: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"speculative.method must be one of {list(METHODS)}, got {self.method!r}"
            )
        _int_in("num_speculative_tokens", self.num_speculative_tokens, 1, MAX_SPECULATIVE_TOKENS)
        _int_in("prompt_lookup_min", self.prompt_lookup_min, 1, 64)
        _int_in("prompt_lookup_max", self.prompt_lookup_max, self.prompt_lookup_min, 64)
        if self.draft_model is not None and not isinstance(self.draft_model, str):
            raise ValueError(
                "speculative.draft_model must be a directory path, a provided model's name "
                f"or None, got {self.draft_model!r}"
            )
        if self.method == "ngram" and self.draft_model is not None:
            raise ValueError(
                "speculative.draft_model is only used with methods 'draft' and 'hybrid', got "
                f"draft_model={self.draft_model!r} with method 'ngram'"
            )
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"speculative.adaptive must be a boolean, got {self.adaptive!r}")


def _int_in(name: str, value: object, low: int, high: int) -> None:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if not is_int or not low <= value <= high:
        raise ValueError(f"speculative.{name} must be an integer in [{low}, {high}], got {value!r}")
