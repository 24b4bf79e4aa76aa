"""OpenAI-compatible requests: /v1/completions and /v1/chat/completions.

Requests reject unknown fields and unsupported options with a 400 that names the field;
`to_sampling_params` turns them into the engine's SamplingParams. Response bodies are in
`openai_responses`.

Choices: a completions request with P prompts and n samples answers P * n choices, with
`index = prompt_index * n + sample_index` (OpenAI's order). Each sample is its own engine
request; `params_for_sample` gives sample i the seed `seed + i`, so seeded samples differ
from one another yet stay reproducible.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    NonNegativeInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from deployments.protocol.shared import (
    MAX_SEED,
    MAX_STOP_SEQUENCES,
    REQUEST_CONFIG,
    build_sampling_params,
    check_stop,
    reject_unsupported,
    stop_list,
)

if TYPE_CHECKING:
    from engine import SamplingParams

MAX_N = 16
MAX_PROMPTS = 256  # prompts in one /v1/completions request
MAX_COMPLETION_LOGPROBS = 5
MAX_CHAT_TOP_LOGPROBS = 20

_PROMPT_SHAPES = (
    "a string, a list of strings, a list of token ids or a list of token-id lists "
    f"(at most {MAX_PROMPTS} prompts, token ids >= 0)"
)


class StreamOptions(BaseModel):
    """Options for a streamed answer."""

    model_config = REQUEST_CONFIG

    include_usage: bool = Field(
        False, description="Send a last chunk with token usage for the whole request."
    )
    include_obfuscation: bool | None = Field(
        None, description="Accepted for compatibility; gaudi-serve never pads chunks."
    )


class _SamplingRequest(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = REQUEST_CONFIG

    model: str | None = Field(
        None, description="A served model's name (see /v1/models); optional with one model."
    )
    temperature: float | None = Field(
        None, ge=0.0, le=2.0, description="Sampling temperature in [0, 2]; 0 is greedy. Default 1."
    )
    top_p: float | None = Field(
        None, gt=0.0, le=1.0, description="Nucleus sampling mass in (0, 1]. Default 1 (off)."
    )
    n: int = Field(1, ge=1, le=MAX_N, description=f"Choices per prompt, 1..{MAX_N}.")
    stream: bool = Field(False, description="Stream the answer as server-sent events.")
    stream_options: StreamOptions | None = Field(
        None, description="Streaming options; allowed only with stream=true."
    )
    stop: str | list[str] | None = Field(
        None,
        description=f"Up to {MAX_STOP_SEQUENCES} strings that end generation (not returned).",
    )
    stop_token_ids: list[NonNegativeInt] | None = Field(
        None, description="Extension (vLLM): token ids that end generation like EOS does."
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="Makes sampling reproducible; 0 <= seed < 2**63."
    )
    presence_penalty: float | None = Field(
        None, description="Only 0 is supported; use repetition_penalty instead."
    )
    frequency_penalty: float | None = Field(
        None, description="Only 0 is supported; use repetition_penalty instead."
    )
    logit_bias: dict[str, float] | None = Field(
        None, description="Not supported: only null or {} is accepted."
    )
    user: str | None = Field(None, description="An end-user id; accepted and not used.")
    top_k: int | None = Field(
        None, ge=-1, description="Extension (vLLM): keep the k likeliest tokens; 0 or -1 is off."
    )
    repetition_penalty: float | None = Field(
        None,
        gt=0.0,
        le=10.0,
        description="Extension (vLLM): in (0, 10]; > 1 discourages repeats, 1 is off.",
    )
    ignore_eos: bool = Field(
        False, description="Extension (vLLM): keep generating past EOS until the token limit."
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _check_stop(cls, value: Any) -> Any:
        return check_stop(value)

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, value: StreamOptions | None, info: ValidationInfo):
        if value is not None and not info.data.get("stream", False):
            raise ValueError("stream_options is allowed only when stream is true")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _only_zero_penalty(cls, value: float | None, info: ValidationInfo):
        return reject_unsupported(info.field_name, value, (None, 0.0), "use repetition_penalty")

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        return reject_unsupported("logit_bias", value, (None, {}))

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage

    def _sampling_params(self, max_tokens: int, logprobs: int | None) -> SamplingParams:
        return build_sampling_params(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_k=self.top_k or 0,
            top_p=1.0 if self.top_p is None else self.top_p,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            seed=self.seed,
            stop=stop_list(self.stop),
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
        )


class CompletionRequest(_SamplingRequest):
    """A /v1/completions request."""

    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description=f"The prompt(s): {_PROMPT_SHAPES}."
    )
    max_tokens: int | None = Field(
        16, ge=1, description="Most tokens to generate (default 16); null: up to the context."
    )
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_COMPLETION_LOGPROBS,
        description=f"Return each token's logprob and the top 0..{MAX_COMPLETION_LOGPROBS}.",
    )
    echo: bool = Field(False, description="Not supported: only false is accepted.")
    best_of: int | None = Field(None, description="Only 1 is supported.")
    suffix: str | None = Field(None, description="Not supported: only null or '' is accepted.")

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, value: Any) -> Any:
        if isinstance(value, str) or _is_prompt_list(value):
            return value
        raise ValueError(f"prompt must be {_PROMPT_SHAPES}, got {_short(value)}")

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        return reject_unsupported("echo", value, (False,))

    @field_validator("best_of")
    @classmethod
    def _best_of_one(cls, value: int | None) -> int | None:
        return reject_unsupported("best_of", value, (None, 1), "use n for several choices")

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        return reject_unsupported("suffix", value, (None, ""))

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list: each is a string or a list of token ids."""
        prompt = self.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            return [prompt]  # one prompt: a string or a token-id list
        return list(prompt)

    def to_sampling_params(self, *, default_max_tokens: int) -> SamplingParams:
        """The engine's SamplingParams for one sample. `default_max_tokens` applies when
        the request sets max_tokens to null (pass max_model_len minus the prompt length)."""
        max_tokens = default_max_tokens if self.max_tokens is None else self.max_tokens
        return self._sampling_params(max_tokens, self.logprobs)


class TextContentPart(BaseModel):
    """A text part of a message's content."""

    model_config = REQUEST_CONFIG

    type: Literal["text"] = Field(description="The part's kind: 'text'.")
    text: str = Field(description="The text.")


class ImageUrl(BaseModel):
    """Where an image part's image is."""

    model_config = REQUEST_CONFIG

    url: str = Field(
        description="A data: URL (data:image/png;base64,...) or an http(s) URL of a PNG, "
        "JPEG, WebP or GIF image (deployments/images.py has the size limits)."
    )
    detail: Literal["auto", "low", "high"] | None = Field(
        None, description="Accepted and not used: the model's own processor sizes the image."
    )


class ImageUrlContentPart(BaseModel):
    """An image part of a user message's content (for a model that takes images)."""

    model_config = REQUEST_CONFIG

    type: Literal["image_url"] = Field(description="The part's kind: 'image_url'.")
    image_url: ImageUrl = Field(description="The image: {'url': <data: or http(s) URL>}.")


_PART_SHAPES = {
    "text": (TextContentPart, "{'type': 'text', 'text': <string>}"),
    "image_url": (ImageUrlContentPart, "{'type': 'image_url', 'image_url': {'url': <string>}}"),
}


class ChatMessage(BaseModel):
    """One message of a chat conversation."""

    model_config = REQUEST_CONFIG

    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="Who wrote it; 'developer' is treated as 'system'."
    )
    content: str | list[TextContentPart | ImageUrlContentPart] = Field(
        description="A string, or a list of {'type': 'text', 'text': ...} parts and (in a "
        "user message) {'type': 'image_url', 'image_url': {'url': ...}} parts, in order."
    )
    name: str | None = Field(None, description="An optional author name; not used.")
    refusal: None = Field(None, description="Accepted (null only) for echoed replies.")
    tool_calls: list[Any] | None = Field(None, description="Not supported: null or [] only.")
    function_call: None = Field(None, description="Not supported: null only.")
    annotations: list[Any] | None = Field(None, description="Accepted (null or []) only.")

    @field_validator("content", mode="before")
    @classmethod
    def _check_parts(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValueError(
                f"content must be a string or a list of text and image_url parts, "
                f"got {_short(value)}"
            )
        parts = []
        for index, part in enumerate(value):
            kind = part.get("type", "text") if isinstance(part, dict) else "text"
            if not isinstance(kind, str) or kind not in _PART_SHAPES:
                message = (
                    f"content part {index} has type {_short(kind)}; "
                    "only 'text' and 'image_url' are supported"
                )
                raise ValueError(message)
            if kind == "image_url" and info.data.get("role", "user") != "user":
                role = info.data["role"]
                message = f"content part {index}: only user messages hold images, not {role}"
                raise ValueError(message)
            model, shape = _PART_SHAPES[kind]
            try:
                parts.append(model.model_validate(part))
            except ValidationError:
                raise ValueError(
                    f"content part {index} must be {shape}, got {_short(part)}"
                ) from None
        return parts

    @field_validator("tool_calls", "annotations")
    @classmethod
    def _empty_lists_only(cls, value: list[Any] | None, info: ValidationInfo):
        return reject_unsupported(info.field_name, value, (None, []))

    @property
    def text(self) -> str:
        """The content's text as one string (text parts joined by newlines)."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content if isinstance(part, TextContentPart))

    @property
    def has_images(self) -> bool:
        return not isinstance(self.content, str) and any(
            isinstance(part, ImageUrlContentPart) for part in self.content
        )

    def parts(self) -> list[dict[str, str]]:
        """The content as a chat template's parts, in order: {"type": "text", "text"} and
        {"type": "image"} (the image itself goes beside the messages)."""
        if isinstance(self.content, str):
            return [{"type": "text", "text": self.content}]
        return [
            {"type": "text", "text": part.text}
            if isinstance(part, TextContentPart)
            else {"type": "image"}
            for part in self.content
        ]


# Chat fields gaudi-serve does not implement, with the values that ask for nothing.
_CHAT_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "store": (None, False),
    "service_tier": (None, "auto", "default"),
}


class ChatCompletionRequest(_SamplingRequest):
    """A /v1/chat/completions request."""

    messages: list[ChatMessage] = Field(
        min_length=1, description="The conversation so far, oldest first."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Deprecated name of max_completion_tokens."
    )
    max_completion_tokens: int | None = Field(
        None, ge=1, description="Most tokens to generate; default: up to the context length."
    )
    logprobs: bool = Field(False, description="Return each generated token's logprob.")
    top_logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_CHAT_TOP_LOGPROBS,
        description=f"Also return the top 0..{MAX_CHAT_TOP_LOGPROBS} tokens (needs logprobs).",
    )
    metadata: dict[str, str] | None = Field(None, description="Accepted and not used.")
    parallel_tool_calls: bool | None = Field(None, description="Accepted; no tools are run.")
    tools: Any = Field(None, description="Not supported: null or [] only.")
    tool_choice: Any = Field(None, description="Not supported: null or 'none' only.")
    functions: Any = Field(None, description="Not supported: null or [] only.")
    function_call: Any = Field(None, description="Not supported: null or 'none' only.")
    response_format: Any = Field(None, description="Only {'type': 'text'} is supported.")
    modalities: Any = Field(None, description="Only ['text'] is supported.")
    audio: Any = Field(None, description="Not supported: null only.")
    prediction: Any = Field(None, description="Not supported: null only.")
    reasoning_effort: Any = Field(None, description="Not supported: null only.")
    store: Any = Field(None, description="Not supported: null or false only.")
    service_tier: Any = Field(None, description="Only null, 'auto' or 'default'.")

    @field_validator("max_completion_tokens")
    @classmethod
    def _one_token_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        legacy = info.data.get("max_tokens")
        if value is not None and legacy is not None and legacy != value:
            raise ValueError(
                f"max_completion_tokens ({value}) and max_tokens ({legacy}) disagree; "
                "send only max_completion_tokens"
            )
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value: int | None, info: ValidationInfo):
        if value and not info.data.get("logprobs", False):
            raise ValueError("top_logprobs needs logprobs to be true")
        return value

    @field_validator(*_CHAT_UNSUPPORTED)
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        return reject_unsupported(info.field_name, value, _CHAT_UNSUPPORTED[info.field_name])

    def conversation(self) -> list[dict[str, Any]]:
        """The messages as `[{"role", "content"}]` for a chat template: each content one
        string, but that of a message with images, which is its `ChatMessage.parts()`."""
        return [
            {
                "role": "system" if m.role == "developer" else m.role,
                "content": m.parts() if m.has_images else m.text,
            }
            for m in self.messages
        ]

    def image_urls(self) -> list[tuple[str, str]]:
        """(field, url) of every image part, in order; field is its place in the request,
        e.g. "messages.0.content.1.image_url"."""
        return [
            (f"messages.{i}.content.{j}.image_url", part.image_url.url)
            for i, message in enumerate(self.messages)
            if message.has_images
            for j, part in enumerate(message.content)
            if isinstance(part, ImageUrlContentPart)
        ]

    def to_sampling_params(self, *, default_max_tokens: int) -> SamplingParams:
        """The engine's SamplingParams for one sample. `default_max_tokens` applies when
        no token limit is set (pass max_model_len minus the prompt length)."""
        limit = self.max_completion_tokens or self.max_tokens or default_max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self._sampling_params(limit, logprobs)


def params_for_sample(params: SamplingParams, sample_index: int) -> SamplingParams:
    """The params for sample `sample_index` of n: a seeded request gets seed + index."""
    if params.seed is None or sample_index == 0:
        return params
    return dataclasses.replace(params, seed=(params.seed + sample_index) % (MAX_SEED + 1))


def _is_prompt_list(value: Any) -> bool:
    if not isinstance(value, list) or not value:
        return False
    if _is_token_ids(value):
        return True  # one prompt as token ids: any length
    if len(value) > MAX_PROMPTS:
        return False
    if all(isinstance(item, str) for item in value):
        return True
    return all(isinstance(item, list) and item and _is_token_ids(item) for item in value)


def _is_token_ids(value: list[Any]) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
