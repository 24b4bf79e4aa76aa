"""The ingress's prompt tokenization without Serve: each API's request, parsed as the ingress
parses it, becomes the `generate` arguments `{"prompt": token ids}`, the very ids the
engine computes for it; where the tokenizer does not load, requests go out as before."""

from __future__ import annotations

import asyncio
import logging

import pytest

from deployments.generation import ModelInfo
from deployments.prompt_ids import MAX_INLINE_PROMPT_CHARS, PromptIds
from deployments.protocol import ApiError, ChatCompletionRequest, CompletionRequest, GenerateRequest
from engine import AsyncEngine, EngineConfig
from tests.deployments.serve_fixtures import with_chat_template

MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "def scheduler(requests):"},
]


def info_for(path, name: str = "chat", has_chat_template: bool = True) -> ModelInfo:
    return ModelInfo(name, str(path), "cpu", "float32", 1, 128, 4, 512, has_chat_template)


@pytest.fixture(scope="module")
def chat_dir(tiny_model_dir, tmp_path_factory):
    return with_chat_template(tiny_model_dir("llama"), tmp_path_factory.mktemp("c") / "chat")


@pytest.fixture(scope="module")
def replica_engine(chat_dir):
    """The engine a replica of the model runs (its encode/encode_chat are the reference)."""
    config = EngineConfig(
        model=str(chat_dir), device="cpu", dtype="float32", kv_cache_tokens=2048, max_model_len=128
    )
    engine = AsyncEngine(config)
    yield engine
    engine.shutdown()


def kwargs_of(info: ModelInfo, prompt=None, **inputs) -> dict:
    return asyncio.run(PromptIds().generate_kwargs(info, prompt, **inputs))


def test_every_api_sends_the_engines_own_ids(chat_dir, replica_engine):
    info = info_for(chat_dir)
    chat_ids = replica_engine.encode_chat(MESSAGES)
    text = replica_engine.engine.tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=False
    )
    # (a) /v1/completions, text prompt
    completion = CompletionRequest.model_validate({"model": "chat", "prompt": text})
    assert kwargs_of(info, completion.prompts[0]) == {"prompt": replica_engine.encode(text)}
    # (b) /v1/completions, token-id prompt: sent as given
    by_ids = CompletionRequest.model_validate({"model": "chat", "prompt": chat_ids})
    assert kwargs_of(info, by_ids.prompts[0]) == {"prompt": chat_ids}
    # (c) /v1/chat/completions
    chat = ChatCompletionRequest.model_validate({"model": "chat", "messages": MESSAGES})
    assert kwargs_of(info, messages=chat.conversation()) == {"prompt": chat_ids}
    # (d) TGI inputs, with and without truncate
    tgi = GenerateRequest.model_validate({"inputs": text, "parameters": {"truncate": 5}})
    assert kwargs_of(info, tgi.inputs) == {"prompt": replica_engine.encode(text)}
    truncated = kwargs_of(info, tgi.inputs, truncate=tgi.parameters.truncate)
    assert truncated == {"prompt": replica_engine.encode(text)[-5:]}
    # this tokenizer adds no special tokens to text: a chat and its text are one prompt
    assert replica_engine.encode(text) == chat_ids


def test_several_completion_prompts_each_become_ids(chat_dir, replica_engine):
    request = CompletionRequest.model_validate({"model": "chat", "prompt": ["a b", "import os"]})
    ids = PromptIds()
    got = [asyncio.run(ids.generate_kwargs(info_for(chat_dir), p)) for p in request.prompts]
    assert got == [{"prompt": replica_engine.encode(p)} for p in request.prompts]


def test_a_long_prompt_is_encoded_off_the_loop_to_the_same_ids(chat_dir, replica_engine):
    text = "def scheduler(requests): return sorted(requests)\n" * 200
    assert len(text) > MAX_INLINE_PROMPT_CHARS
    assert kwargs_of(info_for(chat_dir), text) == {"prompt": replica_engine.encode(text)}
    messages = [{"role": "user", "content": text}]
    expected = replica_engine.encode_chat(messages)
    assert kwargs_of(info_for(chat_dir), messages=messages) == {"prompt": expected}


def test_messages_without_a_chat_template_go_to_the_replica(tiny_model_dir):
    """The replica answers them with its 400 naming "messages", as it always did."""
    info = info_for(tiny_model_dir("llama"), "tiny", has_chat_template=False)
    assert kwargs_of(info, messages=MESSAGES) == {"prompt": None, "messages": MESSAGES}


def test_neither_or_both_prompt_and_messages_go_as_given(chat_dir):
    info = info_for(chat_dir)
    assert kwargs_of(info) == {"prompt": None}
    assert kwargs_of(info, "x", messages=MESSAGES) == {"prompt": "x", "messages": MESSAGES}


@pytest.mark.parametrize("truncate", [0, -2, "3"])
def test_a_bad_truncate_is_a_400_naming_it(chat_dir, truncate):
    with pytest.raises(ApiError) as info:
        kwargs_of(info_for(chat_dir), "def f(x):", truncate=truncate)
    assert (info.value.status, info.value.param) == (400, "truncate")
    assert "truncate must be an integer >= 1" in info.value.message


def test_without_the_tokenizer_here_requests_go_as_text_with_one_warning(tmp_path, caplog):
    """An ingress on a node without the model's folder (a Kubernetes ingress pod without
    the model volume) still serves: the replicas tokenize."""
    info = info_for(tmp_path / "on-another-node")
    ids = PromptIds()

    async def main():
        first = await ids.generate_kwargs(info, "def f(x):", truncate=3)
        chat = await ids.generate_kwargs(info, messages=MESSAGES)
        return first, chat

    with caplog.at_level(logging.WARNING, logger="deployments.prompt_ids"):
        first, chat = asyncio.run(main())
        asyncio.run(ids.generate_kwargs(info, "again"))  # another event loop, same cache
    assert first == {"prompt": "def f(x):", "truncate": 3}
    assert chat == {"prompt": None, "messages": MESSAGES}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'chat'" in warnings[0].getMessage() and "on-another-node" in warnings[0].getMessage()


def test_concurrent_first_requests_load_the_tokenizer_once(chat_dir, replica_engine):
    ids = PromptIds()
    prompts = [f"def f{i}(x):" for i in range(8)]

    async def main():
        calls = (ids.generate_kwargs(info_for(chat_dir), p) for p in prompts)
        return await asyncio.gather(*calls)

    assert asyncio.run(main()) == [{"prompt": replica_engine.encode(p)} for p in prompts]
    assert len(ids._encoders) == 1
