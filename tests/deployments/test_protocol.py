"""The HTTP API models: OpenAI and TGI requests into SamplingParams, responses that the
official clients parse, and error bodies."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import text_generation.errors
import text_generation.types as tgi_types
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion
from openai.types.chat import ChatCompletionChunk as OpenAIChatChunk
from openai.types.shared import ErrorObject
from pydantic import ValidationError

from deployments.protocol import (
    SSE_DONE,
    ApiError,
    ChatChoice,
    ChatChoiceLogprobs,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatResponseMessage,
    ChatTokenLogprob,
    ChatTopLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamChunk,
    Details,
    GenerateRequest,
    GenerateResponse,
    Info,
    ModelCard,
    ModelList,
    StreamDetails,
    StreamResponse,
    Token,
    Usage,
    api_error_from_validation,
    describe_validation_errors,
    openai_error_body,
    params_for_sample,
    sse_event,
    tgi_error_body,
    tgi_error_type,
    to_tgi_finish_reason,
)
from engine.sampling_params import SamplingParams

MESSAGES = [{"role": "user", "content": "hi"}]
IMAGE_PART = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}


def api_error(model, body: dict) -> ApiError:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    return api_error_from_validation(info.value, model)


# --- OpenAI requests ---------------------------------------------------------------------


def test_completion_defaults_convert_to_default_sampling_params():
    request = CompletionRequest.model_validate({"model": "m", "prompt": "def f():"})
    assert request.to_sampling_params(default_max_tokens=500) == SamplingParams(max_tokens=16)
    assert request.prompts == ["def f():"] and not request.stream and request.n == 1


def test_completion_fields_convert_to_sampling_params():
    request = CompletionRequest.model_validate(
        {
            "model": "m",
            "prompt": "x",
            "max_tokens": 40,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": -1,
            "repetition_penalty": 1.2,
            "seed": 7,
            "stop": "\n\n",
            "stop_token_ids": [5],
            "ignore_eos": True,
            "logprobs": 3,
            "presence_penalty": 0,
            "frequency_penalty": 0.0,
            "user": "me",
        }
    )
    assert request.to_sampling_params(default_max_tokens=1) == SamplingParams(
        max_tokens=40,
        temperature=0.5,
        top_k=0,
        top_p=0.9,
        repetition_penalty=1.2,
        seed=7,
        stop=["\n\n"],
        stop_token_ids=[5],
        ignore_eos=True,
        logprobs=3,
    )


def test_completion_null_max_tokens_uses_the_default_and_temperature_zero_is_greedy():
    request = CompletionRequest.model_validate(
        {"prompt": "x", "max_tokens": None, "temperature": 0}
    )
    params = request.to_sampling_params(default_max_tokens=300)
    assert params.max_tokens == 300 and params.is_greedy


@pytest.mark.parametrize(
    ("prompt", "prompts"),
    [
        ("a", ["a"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
        (list(range(1000)), [list(range(1000))]),  # one long token prompt
    ],
)
def test_completion_prompt_shapes(prompt, prompts):
    assert CompletionRequest.model_validate({"prompt": prompt}).prompts == prompts


@pytest.mark.parametrize(
    "prompt", [[], [1, "a"], [True], [-1], [[]], [[1], "a"], {"text": "a"}, 5, ["a"] * 257]
)
def test_completion_bad_prompt_names_the_accepted_shapes(prompt):
    error = api_error(CompletionRequest, {"prompt": prompt})
    assert error.status == 400 and error.param == "prompt"
    assert "prompt must be a string, a list of strings, a list of token ids" in error.message


@pytest.mark.parametrize(
    ("body", "param", "expected"),
    [
        ({"n": 17}, "n", "Input should be less than or equal to 16 (got 17)"),
        ({"temperature": 3}, "temperature", "Input should be less than or equal to 2"),
        ({"top_p": 0}, "top_p", "Input should be greater than 0 (got 0)"),
        ({"logprobs": 6}, "logprobs", "less than or equal to 5 (got 6)"),
        ({"seed": -1}, "seed", "greater than or equal to 0 (got -1)"),
        ({"top_k": -2}, "top_k", "greater than or equal to -1 (got -2)"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1 (got 0)"),
        ({"echo": True}, "echo", "echo=true is not supported: omit it or send false"),
        ({"best_of": 2}, "best_of", "best_of=2 is not supported: omit it or send null or 1"),
        ({"suffix": "x"}, "suffix", "suffix='x' is not supported"),
        (
            {"presence_penalty": 0.5},
            "presence_penalty",
            "presence_penalty=0.5 is not supported: omit it or send null or 0.0 "
            "(use repetition_penalty)",
        ),
        ({"frequency_penalty": -1}, "frequency_penalty", "frequency_penalty=-1.0 is not"),
        ({"logit_bias": {"5": 1}}, "logit_bias", "logit_bias={'5': 1.0} is not supported"),
        ({"stop": ["a", ""]}, "stop", "stop must be a non-empty string or a list of at most 16"),
        ({"stop": ["s"] * 17}, "stop", "a list of at most 16 non-empty strings"),
        (
            {"stream_options": {"include_usage": True}},
            "stream_options",
            "stream_options is allowed only when stream is true",
        ),
        ({"colour": "red"}, "colour", "colour: unknown key (allowed: model, temperature"),
    ],
)
def test_completion_bad_values_are_400s_naming_the_field(body, param, expected):
    error = api_error(CompletionRequest, {"prompt": "x", **body})
    assert error.status == 400 and error.param == param
    assert expected in error.message
    assert error.message.startswith(f"{param}: ")


def test_stream_options_and_usage():
    request = CompletionRequest.model_validate(
        {"prompt": "x", "stream": True, "stream_options": {"include_usage": True}}
    )
    assert request.include_usage
    assert not CompletionRequest.model_validate({"prompt": "x", "stream": True}).include_usage


def test_params_for_sample_gives_each_seeded_sample_its_own_seed():
    params = SamplingParams(seed=10, temperature=0.8)
    assert [params_for_sample(params, i).seed for i in range(3)] == [10, 11, 12]
    unseeded = SamplingParams()
    assert params_for_sample(unseeded, 2) is unseeded
    assert params_for_sample(SamplingParams(seed=2**63 - 1), 1).seed == 0


def test_chat_request_converts_messages_and_limits():
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": "ok", "refusal": None, "tool_calls": []},
                {"role": "user", "content": "go", "name": "bob"},
            ],
            "max_completion_tokens": 50,
            "logprobs": True,
            "top_logprobs": 4,
            "temperature": 0.7,
            "tool_choice": "none",
            "response_format": {"type": "text"},
        }
    )
    assert request.conversation() == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "go"},
    ]
    params = request.to_sampling_params(default_max_tokens=1000)
    assert params == SamplingParams(max_tokens=50, temperature=0.7, logprobs=4)
    assert request.image_urls() == []


def test_chat_image_parts_keep_their_order_and_name_their_fields():
    second = {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,AA", "detail": "low"},
    }
    request = ChatCompletionRequest.model_validate(
        {
            "messages": [
                {"role": "system", "content": "look"},
                {"role": "user", "content": [IMAGE_PART, {"type": "text", "text": "and"}, second]},
            ]
        }
    )
    assert request.conversation() == [
        {"role": "system", "content": "look"},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}],
        },
    ]
    assert request.image_urls() == [
        ("messages.1.content.0.image_url", "https://example.com/a.png"),
        ("messages.1.content.2.image_url", "data:image/png;base64,AA"),
    ]
    assert request.messages[1].text == "and"


def test_chat_token_limit_defaults_and_legacy_name():
    request = ChatCompletionRequest.model_validate({"messages": MESSAGES})
    params = request.to_sampling_params(default_max_tokens=900)
    assert params.max_tokens == 900 and params.logprobs is None
    legacy = ChatCompletionRequest.model_validate({"messages": MESSAGES, "max_tokens": 12})
    assert legacy.to_sampling_params(default_max_tokens=900).max_tokens == 12
    both = {"messages": MESSAGES, "max_tokens": 12, "max_completion_tokens": 12, "logprobs": True}
    params = ChatCompletionRequest.model_validate(both).to_sampling_params(default_max_tokens=1)
    assert params.max_tokens == 12 and params.logprobs == 0


@pytest.mark.parametrize(
    ("body", "param", "expected"),
    [
        ({"messages": []}, "messages", "List should have at least 1 item"),
        (
            {"messages": [{"role": "tool", "content": "x"}]},
            "messages.0.role",
            "Input should be 'system', 'developer', 'user' or 'assistant' (got 'tool')",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "data": "x"}]}]},
            "messages.0.content",
            "content part 0 has type 'input_audio'; only 'text' and 'image_url' are supported",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.0.content",
            "content part 0 must be {'type': 'image_url', 'image_url': {'url': <string>}}",
        ),
        (
            {"messages": [{"role": "system", "content": [IMAGE_PART]}]},
            "messages.0.content",
            "content part 0: only user messages hold images, not system",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages.0.content",
            "content part 0 must be {'type': 'text', 'text': <string>}",
        ),
        (
            {"messages": [{"role": "user", "content": 5}]},
            "messages.0.content",
            "content must be a string or a list of text and image_url parts, got 5",
        ),
        ({"messages": [{"role": "user"}]}, "messages.0.content", "required key is missing"),
        (
            {"messages": MESSAGES, "max_tokens": 5, "max_completion_tokens": 6},
            "max_completion_tokens",
            "max_completion_tokens (6) and max_tokens (5) disagree",
        ),
        (
            {"messages": MESSAGES, "top_logprobs": 2},
            "top_logprobs",
            "top_logprobs needs logprobs to be true",
        ),
        (
            {"messages": MESSAGES, "logprobs": True, "top_logprobs": 21},
            "top_logprobs",
            "less than or equal to 20 (got 21)",
        ),
        ({"messages": MESSAGES, "tools": [{"type": "function"}]}, "tools", "tools=[{"),
        (
            {"messages": MESSAGES, "response_format": {"type": "json_object"}},
            "response_format",
            "omit it or send null or {'type': 'text'}",
        ),
        ({"messages": MESSAGES, "n": 0}, "n", "greater than or equal to 1 (got 0)"),
        ({"messages": MESSAGES, "echo": True}, "echo", "echo: unknown key"),
    ],
)
def test_chat_bad_values_are_400s_naming_the_field(body, param, expected):
    error = api_error(ChatCompletionRequest, body)
    assert error.status == 400 and error.param == param
    assert expected in error.message


# --- OpenAI responses --------------------------------------------------------------------


def wire(model) -> dict:
    """What goes over the wire, parsed back as JSON."""
    return json.loads(model.to_json())


def test_completion_response_parses_as_openai_completion():
    logprobs = CompletionLogprobs(
        tokens=["he", "llo"],
        token_logprobs=[-0.1, -0.2],
        top_logprobs=[{"he": -0.1, "ha": -2.0}, {"llo": -0.2}],
        text_offset=[0, 2],
    )
    response = CompletionResponse(
        model="m",
        choices=[CompletionChoice(index=0, text="hello", logprobs=logprobs, finish_reason="stop")],
        usage=Usage.of(3, 2, num_cached_tokens=2),
    )
    parsed = Completion.model_validate(wire(response))
    assert parsed.id.startswith("cmpl-") and parsed.object == "text_completion"
    assert parsed.choices[0].text == "hello" and parsed.choices[0].finish_reason == "stop"
    assert parsed.choices[0].logprobs.top_logprobs[0]["ha"] == -2.0
    assert parsed.usage.total_tokens == 5
    assert parsed.usage.prompt_tokens_details.cached_tokens == 2


def test_completion_stream_chunks_parse_as_openai_completions():
    last = CompletionStreamChunk(
        id="cmpl-1",
        created=1,
        model="m",
        choices=[CompletionChoice(index=1, text="!", finish_reason="length")],
    )
    usage_only = CompletionStreamChunk(
        id="cmpl-1", created=1, model="m", choices=[], usage=Usage.of(1, 1)
    )
    assert Completion.model_validate(wire(last)).choices[0].finish_reason == "length"
    assert Completion.model_validate(wire(usage_only)).usage.completion_tokens == 1
    middle = CompletionStreamChunk(model="m", choices=[CompletionChoice(index=0, text="a")])
    assert "finish_reason" not in wire(middle)["choices"][0]


def test_chat_response_and_chunks_parse_as_openai_chat_types():
    logprobs = ChatChoiceLogprobs(
        content=[
            ChatTokenLogprob(
                token="hi",
                logprob=-0.5,
                bytes=[104, 105],
                top_logprobs=[ChatTopLogprob.of("hi", -0.5), ChatTopLogprob.of("hé", -1.5)],
            )
        ]
    )
    response = ChatCompletionResponse(
        model="m",
        choices=[
            ChatChoice(
                index=0,
                message=ChatResponseMessage(content="hi"),
                logprobs=logprobs,
                finish_reason="stop",
            )
        ],
        usage=Usage.of(5, 1),
    )
    parsed = ChatCompletion.model_validate(wire(response))
    assert parsed.id.startswith("chatcmpl-") and parsed.choices[0].message.content == "hi"
    assert parsed.choices[0].message.role == "assistant"
    assert parsed.choices[0].logprobs.content[0].top_logprobs[1].bytes == [104, 195, 169]

    first = ChatCompletionChunk(
        model="m", choices=[ChatChunkChoice(index=0, delta=ChatDelta(role="assistant", content=""))]
    )
    last = ChatCompletionChunk(
        model="m", choices=[ChatChunkChoice(index=0, delta=ChatDelta(), finish_reason="length")]
    )
    usage = ChatCompletionChunk(model="m", choices=[], usage=Usage.of(5, 9))
    assert OpenAIChatChunk.model_validate(wire(first)).choices[0].delta.role == "assistant"
    assert OpenAIChatChunk.model_validate(wire(last)).choices[0].finish_reason == "length"
    assert OpenAIChatChunk.model_validate(wire(usage)).usage.total_tokens == 14


def test_model_list_parses_as_openai_models():
    listing = ModelList(data=[ModelCard(id="pycoder", max_model_len=2048), ModelCard(id="b")])
    body = wire(listing)
    assert body["object"] == "list"
    models = [Model.model_validate(card) for card in body["data"]]
    assert [m.id for m in models] == ["pycoder", "b"] and models[0].owned_by == "gaudi-serve"


def test_openai_client_reads_our_stream_and_our_errors():
    """The official client, over an in-process HTTP transport, parses our SSE and errors."""

    def reply(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["temperature"] > 1:
            error = ApiError(400, "temperature: too hot", param="temperature")
            return httpx.Response(400, json=openai_error_body(error))
        chunks = [
            ChatCompletionChunk(
                id="c1",
                created=1,
                model="m",
                choices=[ChatChunkChoice(index=0, delta=ChatDelta(role="assistant", content="he"))],
            ),
            ChatCompletionChunk(
                id="c1",
                created=1,
                model="m",
                choices=[
                    ChatChunkChoice(index=0, delta=ChatDelta(content="y"), finish_reason="stop")
                ],
            ),
            ChatCompletionChunk(id="c1", created=1, model="m", choices=[], usage=Usage.of(2, 2)),
        ]
        text = "".join(sse_event(chunk) for chunk in chunks) + SSE_DONE
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})

    http_client = httpx.Client(transport=httpx.MockTransport(reply))
    client = openai.OpenAI(base_url="http://x/v1", api_key="-", http_client=http_client)
    stream = client.chat.completions.create(
        model="m",
        messages=MESSAGES,
        temperature=0.5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == "hey"
    assert chunks[-1].usage.total_tokens == 4
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=MESSAGES, temperature=1.5)
    assert info.value.param == "temperature" and info.value.type == "invalid_request_error"
    assert "too hot" in info.value.message


# --- errors ------------------------------------------------------------------------------


def test_openai_error_body_matches_the_openai_error_object():
    error = ApiError(404, "no model 'x'; served: pycoder", param="model", code="model_not_found")
    body = openai_error_body(error)
    assert set(body) == {"error"}
    parsed = ErrorObject.model_validate(body["error"])
    assert (parsed.type, parsed.param, parsed.code) == (
        "not_found_error",
        "model",
        "model_not_found",
    )


def test_error_types_and_retry_after():
    assert ApiError(400, "x").type == "invalid_request_error"
    assert ApiError(429, "x").type == "rate_limit_error"
    assert ApiError(500, "x").type == "server_error"
    assert ApiError(400, "x", type="custom").type == "custom"
    assert ApiError(503, "busy", retry_after_s=2.4).headers == {"Retry-After": "2"}
    assert ApiError(503, "busy", retry_after_s=0.1).headers == {"Retry-After": "1"}
    assert ApiError(400, "x").headers == {}
    assert [tgi_error_type(s) for s in (400, 422, 429, 503, 500)] == [
        "validation",
        "validation",
        "overloaded",
        "overloaded",
        "generation",
    ]


def test_tgi_error_body_is_parsed_by_the_tgi_client():
    validation = tgi_error_body(ApiError(400, "temperature: must be > 0"))
    assert validation == {"error": "temperature: must be > 0", "error_type": "validation"}
    parsed = text_generation.errors.parse_error(400, validation)
    assert isinstance(parsed, text_generation.errors.ValidationError)
    overloaded = text_generation.errors.parse_error(429, tgi_error_body(ApiError(429, "busy")))
    assert isinstance(overloaded, text_generation.errors.OverloadedError)


def test_fastapi_style_error_lists_drop_the_body_prefix():
    errors = [
        {"type": "missing", "loc": ("body", "prompt"), "msg": "Field required", "input": {}},
        {
            "type": "int_parsing",
            "loc": ("body", "n"),
            "msg": "Input should be a valid integer",
            "input": "x",
        },
    ]
    assert describe_validation_errors(errors) == [
        "prompt: required key is missing",
        "n: Input should be a valid integer (got 'x')",
    ]
    error = api_error_from_validation(errors)
    assert error.param == "prompt"
    assert (
        error.message
        == "prompt: required key is missing; n: Input should be a valid integer (got 'x')"
    )


def test_sse_framing():
    assert sse_event({"error": "x"}) == 'data: {"error":"x"}\n\n'
    assert sse_event("raw") == "data: raw\n\n"
    chunk = ModelList(data=[])
    assert sse_event(chunk) == f"data: {chunk.to_json()}\n\n"
    assert SSE_DONE == "data: [DONE]\n\n"


# --- TGI ---------------------------------------------------------------------------------


def client_request(**parameters) -> dict:
    """The body the `text_generation` client sends (every parameter, unset ones null)."""
    stream = parameters.pop("stream", False)
    request = tgi_types.Request(
        inputs="def f():", stream=stream, parameters=tgi_types.Parameters(**parameters)
    )
    return request.model_dump()


def test_tgi_client_requests_parse_and_default_to_greedy():
    request = GenerateRequest.model_validate(client_request(details=True, max_new_tokens=20))
    assert request.inputs == "def f():" and request.parameters.details
    assert request.to_sampling_params() == SamplingParams(
        max_tokens=20, temperature=0.0, logprobs=0
    )
    bare = GenerateRequest.model_validate({"inputs": "x"})
    assert bare.to_sampling_params() == SamplingParams(max_tokens=100, temperature=0.0)
    assert (
        GenerateRequest.model_validate(
            {"inputs": "x", "parameters": None}
        ).parameters.max_new_tokens
        == 100
    )


def test_tgi_sampling_follows_tgi_rules():
    sampled = GenerateRequest.model_validate(
        client_request(
            do_sample=True, seed=4, top_k=10, repetition_penalty=1.1, stop_sequences=None
        )
    ).to_sampling_params()
    assert sampled == SamplingParams(
        max_tokens=20, temperature=1.0, top_k=10, repetition_penalty=1.1, seed=4
    )
    # Like TGI, a warper (temperature != 1, top_k, top_p < 1) turns sampling on by itself.
    warped = GenerateRequest.model_validate(client_request(temperature=0.5))
    assert warped.parameters.is_sampling
    assert warped.to_sampling_params().temperature == 0.5
    top_p = GenerateRequest.model_validate({"inputs": "x", "parameters": {"top_p": 0.9}})
    assert top_p.to_sampling_params().top_p == 0.9 and not top_p.to_sampling_params().is_greedy
    # temperature 1 alone changes nothing: still greedy.
    neutral = {"inputs": "x", "parameters": {"temperature": 1.0, "repetition_penalty": 1.3}}
    params = GenerateRequest.model_validate(neutral).to_sampling_params()
    assert params.is_greedy and params.repetition_penalty == 1.3


def test_tgi_details_and_top_n_tokens_ask_for_logprobs():
    stop = {"inputs": "x", "parameters": {"stop": ["\n"], "top_n_tokens": 3, "details": True}}
    params = GenerateRequest.model_validate(stop).to_sampling_params()
    assert params.logprobs == 3 and params.stop == ["\n"]
    truncated = GenerateRequest.model_validate(
        {"inputs": "x", "parameters": {"truncate": 5, "return_full_text": True}}
    )
    assert truncated.parameters.truncate == 5 and truncated.parameters.return_full_text


@pytest.mark.parametrize(
    ("parameters", "param", "expected"),
    [
        ({"temperature": 0}, "parameters.temperature", "greater than 0 (got 0)"),
        ({"top_k": 0}, "parameters.top_k", "greater than 0 (got 0)"),
        ({"max_new_tokens": 0}, "parameters.max_new_tokens", "greater than or equal to 1"),
        ({"best_of": 2}, "parameters.best_of", "best_of=2 is not supported"),
        ({"watermark": True}, "parameters.watermark", "watermark=true is not supported"),
        ({"typical_p": 0.5}, "parameters.typical_p", "omit it or send null or 1.0"),
        ({"decoder_input_details": True}, "parameters.decoder_input_details", "not supported"),
        ({"grammar": {"type": "json", "value": {}}}, "parameters.grammar", "not supported"),
        ({"frequency_penalty": 0.3}, "parameters.frequency_penalty", "not supported"),
        ({"stop": "x"}, "parameters.stop", "stop must be a list of strings, got 'x'"),
        ({"top_n_tokens": 6}, "parameters.top_n_tokens", "less than or equal to 5"),
        ({"seed": -3}, "parameters.seed", "greater than or equal to 0"),
        ({"foo": 1}, "parameters.foo", "unknown key (allowed: max_new_tokens, do_sample"),
    ],
)
def test_tgi_bad_parameters_are_400s_naming_the_field(parameters, param, expected):
    error = api_error(GenerateRequest, {"inputs": "x", "parameters": parameters})
    assert error.param == param and expected in error.message


def test_tgi_empty_inputs_are_rejected():
    error = api_error(GenerateRequest, {"inputs": ""})
    assert error.param == "inputs" and "at least 1 character" in error.message


def test_tgi_responses_parse_with_the_tgi_client_types():
    tokens = [
        Token(id=5, text="he", logprob=-0.1, special=False),
        Token(id=2, text="</s>", logprob=-0.3, special=True),
    ]
    details = Details(
        finish_reason="eos_token",
        generated_tokens=2,
        seed=3,
        tokens=tokens,
        top_tokens=[[tokens[0]], [tokens[1]]],
    )
    response = GenerateResponse(generated_text="he", details=details)
    parsed = tgi_types.Response.model_validate(wire(response))
    assert parsed.generated_text == "he" and parsed.details.finish_reason.value == "eos_token"
    assert parsed.details.prefill == [] and parsed.details.tokens[1].special
    assert wire(GenerateResponse(generated_text="x")) == {"generated_text": "x"}

    middle = StreamResponse(token=tokens[0])
    last = StreamResponse(
        token=tokens[1],
        generated_text="he",
        details=StreamDetails(finish_reason="length", generated_tokens=2),
    )
    assert tgi_types.StreamResponse.model_validate(wire(middle)).generated_text is None
    parsed_last = tgi_types.StreamResponse.model_validate(wire(last))
    assert (
        parsed_last.details.finish_reason.value == "length" and parsed_last.generated_text == "he"
    )


def test_tgi_info_and_finish_reasons():
    info = Info(
        model_id="pycoder",
        model_dtype="float32",
        model_device_type="cpu",
        max_concurrent_requests=64,
        max_input_tokens=2047,
        max_total_tokens=2048,
        version="0.1.0",
    )
    body = wire(info)
    assert body["max_best_of"] == 1 and body["router"] == "gaudi-serve"
    assert body["max_stop_sequences"] == 16
    assert to_tgi_finish_reason("length", is_stop_sequence=False) == "length"
    assert to_tgi_finish_reason("stop", is_stop_sequence=False) == "eos_token"
    assert to_tgi_finish_reason("stop", is_stop_sequence=True) == "stop_sequence"
    with pytest.raises(ValueError, match="finish_reason must be 'stop' or 'length'"):
        to_tgi_finish_reason("abort", is_stop_sequence=False)
