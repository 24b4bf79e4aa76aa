"""Text Generation Inference (TGI) compatible models: /generate, /generate_stream, /info.

Field names follow TGI's router, so the `text_generation` client's models parse what we
send. Sampling follows TGI's rule: a request samples when `do_sample` is true *or* any
warper is set (temperature != 1, top_k, top_p < 1); otherwise it is greedy. A given
temperature must be > 0.

Left to the ingress: `truncate` (keep the last N prompt tokens), `return_full_text`
(prepend `inputs` to generated_text) and `details` (send `Details`; the sampled tokens'
logprobs are requested whenever details is true).

Images: TGI's markdown, `![](<data: or http(s) URL>)` (empty alt text, as TGI's router
matches it) anywhere in `inputs`; each stands for one image, in order, and becomes the
model's image placeholder. Errors name the n-th image as "inputs.images.<n>".
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from deployments.protocol.shared import (
    MAX_SEED,
    MAX_STOP_SEQUENCES,
    REQUEST_CONFIG,
    ResponseModel,
    build_sampling_params,
    check_stop,
    reject_unsupported,
)

if TYPE_CHECKING:
    from engine import SamplingParams

DEFAULT_MAX_NEW_TOKENS = 100  # TGI 2.x's default
MAX_TOP_N_TOKENS = 5  # TGI's default --max-top-n-tokens

FinishReason = Literal["length", "eos_token", "stop_sequence"]
MARKDOWN_IMAGE = re.compile(r"!\[\]\(([^)]*)\)")  # ![](url): group 1 is the URL

_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "best_of": (None, 1),
    "typical_p": (None, 1.0),
    "watermark": (False,),
    "decoder_input_details": (False,),
    "frequency_penalty": (None, 0.0),
    "grammar": (None,),
    "adapter_id": (None,),
}


class GenerateParameters(BaseModel):
    """The `parameters` of a TGI request."""

    model_config = REQUEST_CONFIG

    max_new_tokens: int | None = Field(
        DEFAULT_MAX_NEW_TOKENS, ge=1, description="Most tokens to generate (default 100)."
    )
    do_sample: bool = Field(
        False, description="Sample instead of greedy (also implied by any warper)."
    )
    temperature: float | None = Field(
        None, gt=0.0, le=100.0, description="Sampling temperature, > 0; default 1."
    )
    top_k: int | None = Field(None, gt=0, description="Keep the k likeliest tokens.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus mass in (0, 1].")
    repetition_penalty: float | None = Field(
        None, gt=0.0, le=10.0, description="In (0, 10]; > 1 discourages repeats, 1 is off."
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="Makes sampling reproducible; < 2**63."
    )
    stop: list[str] = Field(
        default_factory=list,
        description=f"Up to {MAX_STOP_SEQUENCES} strings that end generation.",
    )
    details: bool = Field(False, description="Return generation details and token logprobs.")
    top_n_tokens: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_N_TOKENS,
        description=f"Also return the top 0..{MAX_TOP_N_TOKENS} tokens at each step.",
    )
    return_full_text: bool = Field(False, description="Prepend the prompt to generated_text.")
    truncate: int | None = Field(
        None, ge=1, description="Keep only the last `truncate` prompt tokens."
    )
    best_of: int | None = Field(None, description="Only 1 is supported.")
    typical_p: float | None = Field(None, description="Not supported: null or 1.0 only.")
    watermark: bool = Field(False, description="Not supported: false only.")
    decoder_input_details: bool = Field(
        False, description="Not supported (no prompt logprobs): false only."
    )
    frequency_penalty: float | None = Field(
        None, description="Not supported: null or 0 only; use repetition_penalty."
    )
    grammar: Any = Field(None, description="Not supported: null only.")
    adapter_id: str | None = Field(None, description="Not supported: null only.")

    @field_validator("stop", mode="before")
    @classmethod
    def _check_stop(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            raise ValueError(f"stop must be a list of strings, got {value!r}")
        return check_stop(value)

    @field_validator("max_new_tokens")
    @classmethod
    def _default_when_null(cls, value: int | None) -> int:
        return DEFAULT_MAX_NEW_TOKENS if value is None else value

    @field_validator(*_UNSUPPORTED)
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        return reject_unsupported(info.field_name, value, _UNSUPPORTED[info.field_name])

    @property
    def is_sampling(self) -> bool:
        """TGI's rule: sample if asked to, or if any warper changes the distribution."""
        has_warpers = (
            (self.temperature is not None and self.temperature != 1.0)
            or (self.top_k is not None and self.top_k != 0)
            or (self.top_p is not None and self.top_p < 1.0)
        )
        return self.do_sample or has_warpers

    def to_sampling_params(self) -> SamplingParams:
        """The engine's SamplingParams; greedy unless `is_sampling`."""
        sampling = self.is_sampling
        if self.top_n_tokens:
            logprobs = self.top_n_tokens
        else:
            logprobs = 0 if self.details else None
        return build_sampling_params(
            max_tokens=self.max_new_tokens,
            temperature=(self.temperature or 1.0) if sampling else 0.0,
            top_k=(self.top_k or 0) if sampling else 0,
            top_p=(self.top_p or 1.0) if sampling else 1.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            seed=self.seed,
            stop=list(self.stop),
            logprobs=logprobs,
        )


class GenerateRequest(BaseModel):
    """A /generate or /generate_stream request (also TGI's `/` with `stream`)."""

    model_config = REQUEST_CONFIG

    inputs: str = Field(min_length=1, description="The prompt.")
    parameters: GenerateParameters = Field(
        default_factory=GenerateParameters, description="Generation parameters."
    )
    stream: bool = Field(False, description="On `/`: stream the answer as server-sent events.")

    @field_validator("parameters", mode="before")
    @classmethod
    def _default_when_null(cls, value: Any) -> Any:
        return {} if value is None else value

    def to_sampling_params(self) -> SamplingParams:
        return self.parameters.to_sampling_params()

    def image_urls(self) -> list[tuple[str, str]]:
        """(field, url) of every markdown image in `inputs`, in order; field is
        "inputs.images.<n>"."""
        return [
            (f"inputs.images.{n}", match.group(1).strip())
            for n, match in enumerate(MARKDOWN_IMAGE.finditer(self.inputs))
        ]

    def prompt_with(self, image_placeholder: str) -> str:
        """`inputs` with each markdown image replaced by `image_placeholder`."""
        return MARKDOWN_IMAGE.sub(lambda _: image_placeholder, self.inputs)


class Token(ResponseModel):
    """A generated token."""

    id: int
    text: str
    logprob: float | None = None
    special: bool


class InputToken(ResponseModel):
    """A prompt token (only with decoder_input_details, which is not supported)."""

    id: int
    text: str
    logprob: float | None = None


class Details(ResponseModel):
    """Details of a /generate answer (when the request set details)."""

    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None = None
    prefill: list[InputToken] = Field(default_factory=list)
    tokens: list[Token]
    top_tokens: list[list[Token]] | None = None  # per position, with top_n_tokens


class GenerateResponse(ResponseModel):
    """The /generate answer (TGI's `/` answers a one-element list of it)."""

    generated_text: str
    details: Details | None = None


class StreamDetails(ResponseModel):
    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None = None


class StreamResponse(ResponseModel):
    """One server-sent event of /generate_stream; the last one carries generated_text
    (and details, when the request set details)."""

    token: Token
    top_tokens: list[Token] | None = None
    generated_text: str | None = None
    details: StreamDetails | None = None


class Info(ResponseModel):
    """The /info answer."""

    model_id: str
    model_sha: str | None = None
    model_dtype: str
    model_device_type: str
    model_pipeline_tag: str | None = "text-generation"
    max_concurrent_requests: int
    max_best_of: int = 1
    max_stop_sequences: int = MAX_STOP_SEQUENCES
    max_input_tokens: int
    max_total_tokens: int
    max_client_batch_size: int = 1
    router: str = "gaudi-serve"
    version: str
    sha: str | None = None
    docker_label: str | None = None


def to_tgi_finish_reason(finish_reason: str, *, is_stop_sequence: bool) -> FinishReason:
    """TGI's finish reason for the engine's ("stop" or "length"); the engine reports EOS,
    stop tokens and stop strings all as "stop", so the caller says which it was."""
    if finish_reason == "length":
        return "length"
    if finish_reason == "stop":
        return "stop_sequence" if is_stop_sequence else "eos_token"
    raise ValueError(f"finish_reason must be 'stop' or 'length', got {finish_reason!r}")
