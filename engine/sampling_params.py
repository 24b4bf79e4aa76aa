"""Per-request sampling parameters, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_LOGPROBS = 20


def _check(cond: bool, name: str, allowed: str, value: object) -> None:
    if not cond:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one request.

    temperature 0 means greedy. top_k 0 (or -1) and top_p 1 disable those filters.
    `seed` makes sampling reproducible regardless of what else is in the batch.
    `stop` strings are excluded from the returned text; `stop_token_ids` end the request
    like EOS does. `logprobs=n` returns each sampled token's logprob and the top n.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", [self.stop])
        object.__setattr__(self, "stop", list(self.stop))
        object.__setattr__(self, "stop_token_ids", list(self.stop_token_ids))
        if self.top_k == -1:
            object.__setattr__(self, "top_k", 0)
        _check(
            _is_int(self.max_tokens) and self.max_tokens >= 1,
            "max_tokens",
            "an integer >= 1",
            self.max_tokens,
        )
        _check(
            _is_num(self.temperature) and 0.0 <= self.temperature <= 100.0,
            "temperature",
            "a number in [0, 100]",
            self.temperature,
        )
        _check(
            _is_int(self.top_k) and self.top_k >= 0,
            "top_k",
            "an integer >= 1, or 0 / -1 to disable",
            self.top_k,
        )
        _check(
            _is_num(self.top_p) and 0.0 < self.top_p <= 1.0,
            "top_p",
            "a number in (0, 1]",
            self.top_p,
        )
        _check(
            _is_num(self.repetition_penalty) and 0.0 < self.repetition_penalty <= 10.0,
            "repetition_penalty",
            "a number in (0, 10]",
            self.repetition_penalty,
        )
        _check(
            self.seed is None or (_is_int(self.seed) and 0 <= self.seed < 2**63),
            "seed",
            "None or an integer in [0, 2**63)",
            self.seed,
        )
        _check(
            all(isinstance(s, str) and s for s in self.stop),
            "stop",
            "a list of non-empty strings",
            self.stop,
        )
        _check(
            all(_is_int(t) and t >= 0 for t in self.stop_token_ids),
            "stop_token_ids",
            "a list of non-negative integers",
            self.stop_token_ids,
        )
        _check(isinstance(self.ignore_eos, bool), "ignore_eos", "a boolean", self.ignore_eos)
        _check(
            self.logprobs is None
            or (_is_int(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS),
            "logprobs",
            f"None or an integer in [0, {MAX_LOGPROBS}]",
            self.logprobs,
        )

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
