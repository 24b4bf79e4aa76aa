"""The model-family registry: one entry per family the engine runs, consistent with
transformers, with the tests' tiny models, and with what loading does."""

from __future__ import annotations

import doctest
import pathlib
import re

import pytest
import torch
import transformers

import engine.families
import engine.family_features
from engine.errors import UnsupportedModelError
from engine.families import (
    FAMILIES,
    MULTIMODAL_FAMILIES,
    ModelFamily,
    all_families,
    check_tp_size,
    get_family,
    supported_families_table,
)
from engine.family_features import check_config
from engine.loader import KVSpec, load_config, load_model
from tests.conftest import FAMILIES as TESTED_FAMILIES
from tests.conftest import MULTIMODAL_FAMILY_CONFIGS, tiny_config

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("module", [engine.families, engine.family_features])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted >= 1 and result.failed == 0


def test_every_registered_family_has_a_tiny_test_model_and_back():
    assert set(FAMILIES) == set(TESTED_FAMILIES)
    assert set(MULTIMODAL_FAMILIES) == set(MULTIMODAL_FAMILY_CONFIGS)
    assert all_families() == {**FAMILIES, **MULTIMODAL_FAMILIES}
    assert all(f.is_multimodal for f in MULTIMODAL_FAMILIES.values())
    assert not any(f.is_multimodal for f in FAMILIES.values())


@pytest.mark.parametrize("model_type", list(MULTIMODAL_FAMILIES))
def test_multimodal_family_class_matches_transformers(model_type):
    """A family that takes images builds transformers' image-text-to-text class."""
    family = MULTIMODAL_FAMILIES[model_type]
    mapping = transformers.models.auto.modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    assert family.class_name == mapping[model_type]
    assert family.model_class() is getattr(transformers, family.class_name)
    config = MULTIMODAL_FAMILY_CONFIGS[model_type]()
    default = type(config)()
    tied = getattr(default, "tie_word_embeddings", default.get_text_config().tie_word_embeddings)
    assert family.is_tied_by_default == tied
    assert family.unsupported_features(config) == []
    check_config(config)
    with pytest.raises(UnsupportedModelError, match=rf"tp_size 2: .* does not run {family.name}"):
        check_tp_size(model_type, 2)


def test_mllama_reads_images_through_cross_attention():
    family = get_family("mllama")
    assert family.name == "Llama 3.2 Vision" and family.cross_attention is not None
    assert family.is_multimodal and family.encode_image is None


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


def test_readme_lists_exactly_the_registered_families():
    """One home: README.md's family table is the registry's, rendered."""
    text = README.read_text()
    match = re.search(r"<!-- families:begin -->\n(.*?)\n<!-- families:end -->", text, re.S)
    assert match, "README.md lacks the <!-- families:begin/end --> markers"
    expected = supported_families_table()
    assert match.group(1) == expected, (
        "README.md's family table is out of step with engine.families; put this between "
        f"its markers:\n{expected}"
    )
    assert len(expected.splitlines()) == 2 + len(all_families())


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_every_family_tiny_config_passes_the_feature_check(model_type):
    assert FAMILIES[model_type].unsupported_features(tiny_config(model_type)) == []
    check_config(tiny_config(model_type))


def test_alibi_is_refused_by_name_before_the_model_is_built(tiny_model_dir):
    model_dir = tiny_model_dir("llama", position_embedding_type="alibi")
    message = r"Llama \(llama\) model of .* is refused .*: ALiBi position biases"
    with pytest.raises(UnsupportedModelError, match=message):
        load_config(model_dir)
    from engine import LLM

    with pytest.raises(UnsupportedModelError, match="ALiBi"):
        LLM(str(model_dir), skip_tokenizer_init=True, device="cpu")


def test_a_family_hook_adds_its_own_reasons(monkeypatch, tiny_model_dir):
    def unsupported_features(config):
        return ["feature X (x=1) is not implemented", "feature Y too"]

    family = ModelFamily(
        "qwen2", "Qwen2", "Qwen2ForCausalLM", unsupported_features=unsupported_features
    )
    monkeypatch.setitem(FAMILIES, "qwen2", family)
    with pytest.raises(UnsupportedModelError, match=r"refused .*: feature X \(x=1\) .*; feature Y"):
        load_config(tiny_model_dir("qwen2"))


@pytest.mark.parametrize(("multi_query", "kv_heads"), [(True, 1), (False, 4)])
def test_starcoder_kv_heads_follow_multi_query(multi_query, kv_heads, tmp_path):
    """GPTBigCode's attention takes its KV heads from multi_query (and n_head, which
    config.json names through the num_attention_heads alias); the KV cache agrees."""
    tiny_config(
        "gpt_bigcode", multi_query=multi_query, num_key_value_heads=kv_heads
    ).save_pretrained(tmp_path)
    config = load_config(tmp_path)
    spec = KVSpec.from_config(config, torch.float32)
    assert (spec.num_kv_heads, spec.head_dim, spec.num_layers) == (kv_heads, 16, 2)
    with pytest.raises(UnsupportedModelError, match=r"tp_size 2: .* does not run StarCoder"):
        KVSpec.from_config(config, torch.float32, tp_size=2)


def test_starcoder_config_whose_kv_heads_disagree_is_refused(tmp_path):
    # Built through the alias, GPTBigCodeConfig derives num_key_value_heads from the
    # default n_head (12) before num_attention_heads=4 is applied.
    transformers.GPTBigCodeConfig(
        multi_query=False, hidden_size=64, num_attention_heads=4, num_hidden_layers=2
    ).save_pretrained(tmp_path)
    message = r"num_key_value_heads=12 disagrees with multi_query=False and n_head=4"
    with pytest.raises(UnsupportedModelError, match=message):
        load_config(tmp_path)
