"""What the engine hands back for a request."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenLogprob:
    """Log-probability of one generated token, with the `top` most likely alternatives
    (token id -> logprob), computed from the model's raw distribution."""

    token_id: int
    logprob: float
    top: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestOutput:
    """Cumulative state of a request: `text` and `token_ids` hold everything generated so
    far; `finished` is set on the last output, with `finish_reason` "stop" (EOS, stop token
    or stop string) or "length" (max_tokens or max_model_len), or "abort"."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    # What ended a "stop": the matched stop string, or the stop token id (an EOS id too);
    # None for "length".
    stop_reason: str | int | None = None

    @property
    def num_generated_tokens(self) -> int:
        return len(self.token_ids)
