"""What an `LLMServer` replica sends back through a deployment handle.

A generation streams `GenerationChunk`s: each carries only what is new since the previous
chunk (text and tokens), so a long answer does not resend its prefix on every step. A
caller that opened a step stream (the ingress) gets, per engine step, one message with the
chunks of all its requests on that replica instead of one message per request (see
`LLMServer.step_stream`). These are plain frozen dataclasses: the ingress and Python
clients unpickle them without loading a model or a tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

# NOTE: each class pickles as (class, field values in order) through __reduce__: a few
# bytes per token rather than a field-name dict per object (a stream sends a chunk per
# engine step). A new field must be added to its __reduce__ too.


@dataclass(frozen=True)
class TopToken:
    """One of the likeliest tokens at a position (when logprobs were requested)."""

    id: int
    text: str
    logprob: float

    def __reduce__(self) -> tuple:
        return TopToken, (self.id, self.text, self.logprob)


@dataclass(frozen=True)
class GeneratedToken:
    """One generated token. When logprobs were requested, `text` is the token decoded on its
    own (a token holding part of a UTF-8 character decodes to U+FFFD) and `logprob` and
    `top` are set; otherwise all three are empty. The stream's text is always in
    `GenerationChunk.text`."""

    id: int
    text: str | None
    is_special: bool
    logprob: float | None = None
    top: tuple[TopToken, ...] = ()

    def __reduce__(self) -> tuple:
        return GeneratedToken, (self.id, self.text, self.is_special, self.logprob, self.top)


@dataclass(frozen=True)
class GenerationChunk:
    """The part of one request's answer produced since the previous chunk.

    `finish_reason` is set on the last chunk only: "stop" (EOS, a stop token or a stop
    string; `stop_reason` says which) or "length" (max_tokens or the context length).
    """

    request_id: str
    text: str
    tokens: tuple[GeneratedToken, ...]
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens served from the prefix cache
    num_generated_tokens: int  # so far, this chunk included
    finish_reason: str | None = None
    stop_reason: str | int | None = None

    def __reduce__(self) -> tuple:
        fields = (self.request_id, self.text, self.tokens, self.num_prompt_tokens)
        fields += (self.num_cached_tokens, self.num_generated_tokens)
        return GenerationChunk, (*fields, self.finish_reason, self.stop_reason)

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def is_stop_string(self) -> bool:
        """Whether a stop string (rather than EOS or a stop token) ended the request."""
        return self.finish_reason == "stop" and isinstance(self.stop_reason, str)


@dataclass(frozen=True)
class Handoff:
    """Sent on a request's own stream, right after its first chunk, when the rest of its
    chunks travel on a step stream (`LLMServer.step_stream`) of the caller's session: the
    own stream then sends nothing more and ends once the request has finished (or raises,
    as it would have). `step_stream_id` names the step stream that carries them."""

    step_stream_id: str


@dataclass(frozen=True)
class ModelInfo:
    """What a deployment serves, as its replicas resolved it."""

    name: str
    path: str
    device: str
    dtype: str
    tp_size: int
    max_model_len: int
    max_num_seqs: int
    vocab_size: int
    has_chat_template: bool
    tokenizer_path: str | None = None  # the folder the replicas' tokenizer came from
    # what stands for an image in a prompt's text (e.g. "<image>"); None: a text-only model
    image_placeholder: str | None = None

    @property
    def takes_images(self) -> bool:
        return self.image_placeholder is not None

    @property
    def input_modalities(self) -> list[str]:
        """What its prompts may hold: ["text"] or ["text", "image"]."""
        return ["text", "image"] if self.takes_images else ["text"]

    @property
    def tokenizer_dir(self) -> str:
        """Where a caller loads the same tokenizer the replicas use."""
        return self.tokenizer_path or self.path

    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt that still leaves room for one generated token."""
        return self.max_model_len - 1


class InvalidRequestError(ValueError):
    """Bad input to a replica (a 4xx). `param` names the offending input: "prompt",
    "messages", "truncate" or a sampling parameter.

    NOTE: errors cross the handle pickled as (class, args): every argument goes to the base
    constructor so they rebuild intact (an engine error with another signature would not).
    """

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message, param)
        # plain attributes, not properties over args: Ray's RayTaskError(InvalidRequestError)
        # wrapper has other args and forwards unknown attributes to this exception
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message


class EngineUnavailableError(RuntimeError):
    """The replica's engine failed or is wedged (a 503); Serve will replace the replica."""

    def __init__(self, message: str):
        super().__init__(message)
