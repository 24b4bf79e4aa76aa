"""PromptEncoder: a tokenizer folder's prompt ids, exactly the ones the engine computes for
the same text or chat (what the ingress sends to a replica instead of text), truncation,
and an import that loads no torch."""

from __future__ import annotations

import asyncio
import doctest
import subprocess
import sys

import pytest

import engine.prompt_encoder
from engine import (
    AsyncEngine,
    EngineConfig,
    PromptEncoder,
    SamplingParams,
    load_prompt_encoder,
    truncate_prompt,
)
from tests.conftest import assert_engine_idle
from tests.deployments.serve_fixtures import with_chat_template

TEXTS = ["def f(x):", " héllo wörld 日本語 ✓ emoji 🙂\n", "x " * 50]
CHATS = [
    [{"role": "user", "content": "hello"}],
    [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "def f(x):"},
        {"role": "assistant", "content": "return x"},
        {"role": "user", "content": "héllo 🙂"},
    ],
]


@pytest.fixture(scope="module")
def chat_model_dir(tiny_model_dir, tmp_path_factory):
    return with_chat_template(tiny_model_dir("llama"), tmp_path_factory.mktemp("c") / "chat")


@pytest.fixture(scope="module")
def async_engine(chat_model_dir):
    config = EngineConfig(
        model=str(chat_model_dir),
        device="cpu",
        dtype="float32",
        kv_cache_tokens=2048,
        max_model_len=256,
    )
    engine = AsyncEngine(config)
    yield engine
    assert_engine_idle(engine.engine)
    engine.shutdown()


def test_the_encoder_computes_the_engines_prompt_ids(async_engine, chat_model_dir):
    encoder = load_prompt_encoder(chat_model_dir)
    assert encoder.has_chat_template
    for text in TEXTS:
        assert encoder.encode(text) == async_engine.encode(text)
    for messages in CHATS:
        assert encoder.encode_chat(messages) == async_engine.encode_chat(messages)

    async def prompt_ids_of(prompt, request_id: str) -> tuple[int, ...]:
        params = SamplingParams(max_tokens=1)
        deltas = [d async for d in async_engine.generate(prompt, params, request_id)]
        return tuple(deltas[0].prompt_token_ids)

    # what a replica tokenizes from text itself equals what it now receives as ids
    for index, text in enumerate(TEXTS):
        ids = asyncio.run(prompt_ids_of(text, f"text-{index}"))
        assert list(ids) == encoder.encode(text)


def test_chat_ids_are_the_template_text_encoded_without_added_special_tokens(chat_model_dir):
    encoder = load_prompt_encoder(chat_model_dir)
    tokenizer = encoder.tokenizer
    for messages in CHATS:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert text.endswith("<|assistant|>")
        assert encoder.encode_chat(messages) == tokenizer.encode(text, add_special_tokens=False)


def test_a_tokenizer_without_a_chat_template_refuses_messages(tiny_model_dir):
    encoder = load_prompt_encoder(tiny_model_dir("llama"))
    assert not encoder.has_chat_template
    assert encoder.encode("def f(x):") == encoder.tokenizer.encode("def f(x):")
    with pytest.raises(ValueError, match="chat template"):
        encoder.encode_chat(CHATS[0])


def test_truncate_keeps_the_last_tokens_and_names_a_bad_value():
    assert truncate_prompt([1, 2, 3, 4], 2) == [3, 4]
    assert truncate_prompt([1, 2], 5) == [1, 2]
    assert truncate_prompt((7, 8, 9), 1) == [9]
    for bad in (0, -1, "3", 2.0, None):
        with pytest.raises(ValueError, match=r"truncate must be an integer >= 1, got "):
            truncate_prompt([1, 2, 3], bad)
    result = doctest.testmod(engine.prompt_encoder)
    assert result.attempted >= 1 and result.failed == 0


def test_a_folder_without_a_tokenizer_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_prompt_encoder(tmp_path / "not-there")
    with pytest.raises(FileNotFoundError):
        load_prompt_encoder(tmp_path)  # exists, holds no tokenizer


def test_the_default_models_text_and_chat_prompts_are_the_same_ids():
    """SmolLM2's template writes every special token itself and its tokenizer adds none to
    text: a chat and its rendered text are one prompt (a router hashes them the same)."""
    from cluster.env import models_dir
    from engine.assets import DEFAULT_MODEL_NAME, prepared_model_path

    path = prepared_model_path(DEFAULT_MODEL_NAME, models_dir())
    if path is None:
        pytest.fail(f"{DEFAULT_MODEL_NAME} is not prepared: run `gaudi-serve models prepare`")
    encoder = load_prompt_encoder(path)
    assert encoder.has_chat_template
    for messages in CHATS:
        text = encoder.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        assert encoder.encode_chat(messages) == encoder.encode(text)


def test_the_names_load_no_torch():
    code = (
        "import sys\n"
        "from engine import PromptEncoder, load_prompt_encoder, truncate_prompt\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_encoder_wraps_any_loaded_tokenizer(chat_model_dir):
    loaded = load_prompt_encoder(chat_model_dir)
    again = PromptEncoder(loaded.tokenizer)
    assert again.encode_chat(CHATS[1]) == loaded.encode_chat(CHATS[1])
