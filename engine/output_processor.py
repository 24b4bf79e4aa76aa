"""After a step: append sampled tokens, detokenize, decide which requests finish."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.detokenizer import IncrementalDetokenizer
from engine.outputs import RequestDelta, RequestOutput, TokenLogprob
from engine.sequence import Sequence


@dataclass
class RequestState:
    seq: Sequence
    detokenizer: IncrementalDetokenizer
    logprobs: list[TokenLogprob] | None = None
    num_emitted_tokens: int = 0  # output tokens already handed out in deltas

    def __post_init__(self) -> None:
        if self.seq.params.logprobs is not None:
            self.logprobs = []


@dataclass(frozen=True)
class StopRule:
    """Model-wide end-of-sequence ids and length limit."""

    eos_token_ids: frozenset[int] = field(default_factory=frozenset)
    max_model_len: int = 0


def check_stop(state: RequestState, token: int, rule: StopRule) -> None:
    """Set seq.finish_reason ("stop" | "length") and seq.stop_reason if seq is done."""
    seq, params = state.seq, state.seq.params
    if state.detokenizer.stopped:
        seq.finish_reason, seq.stop_reason = "stop", state.detokenizer.matched_stop
    elif (not params.ignore_eos and token in rule.eos_token_ids) or token in params.stop_token_ids:
        seq.finish_reason, seq.stop_reason = "stop", token
    elif seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= rule.max_model_len:
        seq.finish_reason = "length"


def make_delta(state: RequestState, finished: bool) -> RequestDelta:
    """What the request gained since its previous delta: slices of only the new tokens
    and logprobs, and the newly visible text (call after the finish flush)."""
    seq = state.seq
    start = state.num_emitted_tokens
    state.num_emitted_tokens = seq.num_output_tokens
    first = seq.num_prompt_tokens + start
    return RequestDelta(
        request_id=seq.request_id,
        token_ids=seq.token_ids[first:],
        text=state.detokenizer.take_visible(finished),
        num_generated_tokens=seq.num_output_tokens,
        num_cached_tokens=seq.num_cached_tokens,
        logprobs=state.logprobs[start:] if state.logprobs is not None else None,
        finished=finished,
        finish_reason=seq.finish_reason if finished else None,
        stop_reason=seq.stop_reason if finished else None,
        prompt_token_ids=seq.prompt_token_ids if start == 0 else None,
    )


def make_output(state: RequestState, finished: bool) -> RequestOutput:
    """The cumulative output (copies the token and logprob lists: for the offline path,
    once per request at its finish, not per step on the serving path)."""
    seq = state.seq
    return RequestOutput(
        request_id=seq.request_id,
        prompt=seq.prompt,
        prompt_token_ids=seq.prompt_token_ids,
        text=state.detokenizer.visible_text(finished),
        token_ids=seq.output_token_ids,
        finished=finished,
        finish_reason=seq.finish_reason,
        logprobs=list(state.logprobs) if state.logprobs is not None else None,
        num_cached_tokens=seq.num_cached_tokens,
        stop_reason=seq.stop_reason,
    )
