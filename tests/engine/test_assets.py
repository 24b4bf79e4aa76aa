"""The models gaudi-serve provides: the bundled pycoder models load offline, match each other
and are really trained; the prepared default chat model is found only when complete, and
without it the default falls back to pycoder, saying how to prepare it (the converted model
itself: test_smollm2.py)."""

from __future__ import annotations

import json
import keyword
import logging
import math
import pathlib
import re
import sysconfig

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

import engine.assets as assets
from engine.assets import (
    DEFAULT_MODEL_NAME,
    PREPARED_MARKER,
    default_draft_model_path,
    default_model_path,
    default_models_dir,
    prepared_model_path,
)
from engine.assets.training.corpus import is_held_out
from tests.engine.fake_prepared import make_fake_prepared

MAX_TOTAL_BYTES = 40 * 1024 * 1024
UNIFORM_PERPLEXITY = 4096
# A held-out file (never trained on), mostly code, that every CPython has.
HELD_OUT_STDLIB_FILE = "stat.py"
NUM_SCORED_TOKENS = 512


@pytest.fixture(scope="module")
def target() -> LlamaForCausalLM:
    return AutoModelForCausalLM.from_pretrained(pycoder_path(), local_files_only=True).eval()


@pytest.fixture(scope="module")
def draft() -> LlamaForCausalLM:
    return AutoModelForCausalLM.from_pretrained(
        default_draft_model_path(), local_files_only=True
    ).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(pycoder_path(), local_files_only=True)


@pytest.fixture(scope="module")
def draft_tokenizer():
    return AutoTokenizer.from_pretrained(default_draft_model_path(), local_files_only=True)


def pycoder_path() -> pathlib.Path:
    return default_model_path("pycoder")


def test_paths_point_at_complete_model_dirs() -> None:
    for model_dir in (pycoder_path(), default_draft_model_path()):
        assert model_dir.is_absolute()
        for name in ("config.json", "model.safetensors", "generation_config.json"):
            assert (model_dir / name).is_file(), f"{model_dir / name} missing"


def test_missing_assets_raise_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setattr(assets, "_ASSETS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"pycoder.*engine\.assets\.train"):
        pycoder_path()
    with pytest.raises(FileNotFoundError, match="pycoder-draft"):
        default_draft_model_path()


def test_models_are_llama_with_shardable_kv_heads(target, draft) -> None:
    for model in (target, draft):
        assert isinstance(model, LlamaForCausalLM)
        assert model.config.model_type == "llama"
        assert model.dtype == torch.float32
        assert model.config.tie_word_embeddings
    # Tensor-parallel tests shard the target's KV heads over 2 ranks.
    assert target.config.num_key_value_heads % 2 == 0
    assert target.config.num_attention_heads % target.config.num_key_value_heads == 0


def test_models_fit_the_size_budget(target, draft) -> None:
    assert 4_500_000 <= target.num_parameters() <= 6_500_000
    assert 500_000 <= draft.num_parameters() <= 1_500_000
    total_bytes = sum(
        f.stat().st_size
        for model_dir in (pycoder_path(), default_draft_model_path())
        for f in model_dir.iterdir()
    )
    assert total_bytes <= MAX_TOTAL_BYTES


def test_target_and_draft_share_one_vocabulary(target, draft, tokenizer, draft_tokenizer) -> None:
    target_files = pycoder_path()
    draft_files = default_draft_model_path()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (target_files / name).read_bytes() == (draft_files / name).read_bytes()
    assert tokenizer.get_vocab() == draft_tokenizer.get_vocab()
    assert len(tokenizer) == target.config.vocab_size == draft.config.vocab_size == 4096


def test_special_tokens_are_set_everywhere(target, draft, tokenizer) -> None:
    assert tokenizer.bos_token == tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.pad_token_id is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    for model in (target, draft):
        for config in (model.config, model.generation_config):
            assert config.bos_token_id == tokenizer.bos_token_id
            assert config.eos_token_id == tokenizer.eos_token_id
            assert config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer("x = 1").input_ids[0] == tokenizer.bos_token_id


def test_chat_template_renders(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": "Sum a list."},
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|endoftext|><|system|>\nYou write Python.\n<|user|>\nSum a list.\n<|assistant|>\n"
    )
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("prompt", ["def fibonacci(n):", "import os\n"])
def test_greedy_continuation_looks_like_python(target, tokenizer, prompt: str) -> None:
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        output = target.generate(input_ids, max_new_tokens=40, do_sample=False)
    new_ids = output[0, input_ids.shape[1] :].tolist()
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    # A model this small may loop a line under greedy decoding, but it must not get stuck
    # on one or two tokens or emit bytes that are not source text.
    assert len(set(new_ids)) >= 3, text
    assert max(new_ids.count(i) for i in set(new_ids)) <= len(new_ids) // 2, text
    # Python-ish: printable ASCII laid out in lines, with Python keywords among the words.
    assert all(c.isascii() and (c.isprintable() or c in "\n\t") for c in text), text
    assert "\n" in text, text
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    assert words & set(keyword.kwlist), text


def test_held_out_perplexity_is_far_below_uniform(target, draft, tokenizer) -> None:
    assert is_held_out(HELD_OUT_STDLIB_FILE)
    source = pathlib.Path(sysconfig.get_paths()["stdlib"], HELD_OUT_STDLIB_FILE).read_text()
    input_ids = tokenizer(source.strip(), return_tensors="pt").input_ids[:, :NUM_SCORED_TOKENS]
    target_ppl = _perplexity(target, input_ids)
    draft_ppl = _perplexity(draft, input_ids)
    # Bundled weights: target ~85, draft ~108 on this snippet; uniform guessing is 4096.
    assert target_ppl < 300, target_ppl
    assert target_ppl < draft_ppl < UNIFORM_PERPLEXITY / 4, (target_ppl, draft_ppl)


def _perplexity(model: LlamaForCausalLM, input_ids: torch.Tensor) -> float:
    with torch.inference_mode():
        logits = model(input_ids=input_ids).logits[0, :-1]
    return math.exp(F.cross_entropy(logits, input_ids[0, 1:]).item())


def test_the_default_is_smollm2_once_prepared(tmp_path: pathlib.Path, caplog) -> None:
    assert default_models_dir() == pathlib.Path.home() / ".cache" / "gaudi-serve" / "models"
    with caplog.at_level(logging.WARNING, logger="engine.assets"):
        assert default_model_path(models_dir=tmp_path) == pycoder_path()
    (record,) = caplog.records
    assert DEFAULT_MODEL_NAME in record.getMessage()
    assert "gaudi-serve models prepare" in record.getMessage()
    with pytest.raises(FileNotFoundError, match=r"not prepared.*gaudi-serve models prepare"):
        default_model_path(DEFAULT_MODEL_NAME, tmp_path)

    folder = make_fake_prepared(tmp_path)
    caplog.clear()
    assert default_model_path(models_dir=tmp_path) == folder
    assert default_model_path(DEFAULT_MODEL_NAME, tmp_path) == folder
    assert not caplog.records
    assert default_model_path("pycoder", tmp_path) == pycoder_path()


@pytest.mark.parametrize(
    "damage", ["no marker", "old format", "not json", "no weights"], ids=lambda d: d
)
def test_an_incomplete_prepared_folder_is_not_found(tmp_path: pathlib.Path, damage) -> None:
    folder = make_fake_prepared(tmp_path)
    assert prepared_model_path(DEFAULT_MODEL_NAME, tmp_path) == folder
    marker = folder / PREPARED_MARKER
    if damage == "no marker":
        marker.unlink()
    elif damage == "old format":
        marker.write_text(json.dumps({"format": 0}))
    elif damage == "not json":
        marker.write_text("{")
    else:
        (folder / "model.safetensors").unlink()
    assert prepared_model_path(DEFAULT_MODEL_NAME, tmp_path) is None


def test_unknown_names_are_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"smollm2-135m-instruct.*pycoder.*got 'llama'"):
        default_model_path("llama")
    with pytest.raises(ValueError, match="got 'pycoder'"):
        prepared_model_path("pycoder")
