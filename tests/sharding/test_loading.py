"""The tensor-parallel model is built as the single-device one is: its family's class and
`patch_model` hook (engine.families), on the meta device before AutoTP shards it."""

from __future__ import annotations

import pytest
import torch
import transformers

from engine.errors import UnsupportedModelError
from engine.families import FAMILIES, ModelFamily
from sharding.loading import build_meta_model
from tests.conftest import tiny_config


def test_meta_model_is_the_family_class_patched_on_meta(monkeypatch):
    patched = []

    def patch_model(model):
        patched.append((type(model).__name__, next(model.parameters()).device.type))
        return model

    family = ModelFamily("qwen2", "Qwen2", "Qwen2ForCausalLM", patch_model=patch_model)
    monkeypatch.setitem(FAMILIES, "qwen2", family)
    model = build_meta_model(tiny_config("qwen2"), torch.bfloat16)
    assert isinstance(model, transformers.Qwen2ForCausalLM) and not model.training
    assert patched == [("Qwen2ForCausalLM", "meta")]
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in model.parameters())


def test_an_unknown_family_is_refused():
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2)
    with pytest.raises(UnsupportedModelError, match="model_type 'gpt2' is not supported"):
        build_meta_model(config, torch.float32)
