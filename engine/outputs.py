"""What the engine hands back for a request: a `RequestDelta` per step while it runs (the
serving path), or one cumulative `RequestOutput` (the offline `LLM`)."""

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


@dataclass(frozen=True, slots=True)
class RequestDelta:
    """What one step (or, merged, several) added to a running request.

    `token_ids` and `logprobs` hold only the new tokens (one per step for plain decoding,
    several after a speculative verify step or a merge); `text` is the new visible text
    (it may be empty while a multi-byte character or a possible stop string is held
    back). `num_generated_tokens` counts every token so far. The request's first delta
    also carries `prompt_token_ids` (None on the others). `finished`, `finish_reason` and
    `stop_reason` are as in RequestOutput.
    """

    request_id: str
    token_ids: list[int]
    text: str
    num_generated_tokens: int
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    logprobs: list[TokenLogprob] | None = None
    finished: bool = False
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    prompt_token_ids: list[int] | None = None

    def merged(self, later: RequestDelta) -> RequestDelta:
        """This delta followed by `later` (of the same request), as one."""
        logprobs = self.logprobs
        if later.logprobs is not None:
            logprobs = [*(logprobs or ()), *later.logprobs]
        return RequestDelta(
            request_id=self.request_id,
            token_ids=[*self.token_ids, *later.token_ids],
            text=self.text + later.text,
            num_generated_tokens=later.num_generated_tokens,
            num_cached_tokens=later.num_cached_tokens,
            logprobs=logprobs,
            finished=later.finished,
            finish_reason=later.finish_reason,
            stop_reason=later.stop_reason,
            prompt_token_ids=self.prompt_token_ids or later.prompt_token_ids,
        )
