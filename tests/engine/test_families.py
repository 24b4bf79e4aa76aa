"""The model-family registry: one entry per family the engine runs, consistent with
transformers, with the tests' tiny models, and with what loading does."""

from __future__ import annotations

import doctest
import re

import pytest
import torch
import transformers

import engine.families
from engine.errors import UnsupportedModelError
from engine.families import FAMILIES, ModelFamily, check_tp_size, get_family
from engine.loader import KVSpec, load_config, load_model
from tests.conftest import FAMILIES as TESTED_FAMILIES


def test_docstring_examples_run():
    result = doctest.testmod(engine.families)
    assert result.attempted >= 2 and result.failed == 0


def test_every_registered_family_has_a_tiny_test_model_and_back():
    assert set(FAMILIES) == set(TESTED_FAMILIES)


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_family_class_and_tied_default_match_transformers(model_type):
    family = FAMILIES[model_type]
    assert family.model_type == model_type
    causal_lm_classes = transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    assert family.class_name == causal_lm_classes[model_type]
    assert family.model_class() is getattr(transformers, family.class_name)
    config_class = transformers.AutoConfig.for_model(model_type).__class__
    assert family.is_tied_by_default == config_class().tie_word_embeddings


def test_unknown_family_names_the_supported_ones():
    with pytest.raises(UnsupportedModelError, match=r"'gpt2' of /m is not supported; supported: "):
        get_family("gpt2", where="/m")
    message = "Llama (llama), Mistral (mistral), Qwen2 (qwen2), Qwen3 (qwen3), Gemma (gemma)"
    with pytest.raises(UnsupportedModelError, match=re.escape(message)):
        get_family("gpt2")


def test_phi3_is_refused_tensor_parallelism_before_anything_starts(tiny_model_dir):
    config = load_config(tiny_model_dir("phi3"))
    assert KVSpec.from_config(config, torch.float32, tp_size=1).num_kv_heads == 2
    with pytest.raises(UnsupportedModelError, match=r"tp_size 2: .* does not run Phi-3"):
        KVSpec.from_config(config, torch.float32, tp_size=2)


def test_tp_is_refused_for_a_family_without_it(monkeypatch, tiny_model_dir):
    no_tp = ModelFamily("llama", "Llama", "LlamaForCausalLM", is_tp_supported=False)
    check_tp_size("llama", 2)
    monkeypatch.setitem(FAMILIES, "llama", no_tp)
    check_tp_size("llama", 1)
    with pytest.raises(UnsupportedModelError, match=r"tp_size 2: .* does not run Llama"):
        check_tp_size("llama", 2)
    config = load_config(tiny_model_dir("llama"))
    with pytest.raises(UnsupportedModelError, match="families with tensor parallelism: Mistral"):
        KVSpec.from_config(config, torch.float32, tp_size=2)


def test_load_model_builds_the_family_class_and_applies_its_patch(monkeypatch, tiny_model_dir):
    patched = []

    def patch_model(model):
        patched.append(type(model).__name__)
        return model

    family = ModelFamily("qwen2", "Qwen2", "Qwen2ForCausalLM", patch_model=patch_model)
    monkeypatch.setitem(FAMILIES, "qwen2", family)
    model = load_model(tiny_model_dir("qwen2"), torch.float32, torch.device("cpu"))
    assert isinstance(model, transformers.Qwen2ForCausalLM) and not model.training
    assert patched == ["Qwen2ForCausalLM"]
