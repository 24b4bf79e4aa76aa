"""SmolLM2's draft (engine.assets.smollm2_draft): the build is deterministic given its seed,
the assembled folder is a complete model speaking the target's vocabulary, and the engine's
greedy speculative output with it equals plain greedy output. The build and the assembly
run on a tiny random Llama with pycoder's tokenizer; only the last test needs the prepared
SmolLM2 and its draft (`gaudi-serve models prepare`) and skips without them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from cluster.env import models_dir
from engine.assets import (
    DEFAULT_MODEL_NAME,
    DRAFT_MODEL_NAME,
    default_model_path,
    prepared_model_path,
)
from engine.assets.smollm2_draft import LAYERS_FILE, assemble
from engine.assets.smollm2_draft.build import DraftRecipe, build

TEXTS = [f"def f{i}(x):\n    return x * {i} + {i * i}\n" * 4 for i in range(24)]
HELD_OUT = ["class A:\n    def g(self):\n        return 1\n" * 3]
TINY_RECIPE = DraftRecipe(
    init_layers=(2, 0),
    seq_len=16,
    num_train_windows=8,
    num_epochs=2,
    num_seqs_per_batch=2,
    eval_tokens=32,
)


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory) -> Path:
    """A 3-layer random Llama with pycoder's tokenizer, saved as a model folder."""
    folder = tmp_path_factory.mktemp("tiny-target")
    tokenizer_dir = default_model_path("pycoder")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / name, folder / name)
    return folder


def _build(target: Path, out: Path, seed: int) -> dict:
    torch.set_num_threads(1)
    return build(target, out, TINY_RECIPE, seed, TEXTS, HELD_OUT, log=lambda _: None)


def test_the_build_is_deterministic_given_its_seed(tiny_target, tmp_path) -> None:
    first, second, other = (tmp_path / name for name in ("a", "b", "c"))
    facts = _build(tiny_target, first, seed=0)
    _build(tiny_target, second, seed=0)
    _build(tiny_target, other, seed=1)
    a, b, c = (load_file(str(d / LAYERS_FILE)) for d in (first, second, other))
    # only the trained layers and the final norm ship, bf16
    assert all(n.startswith(("model.layers.0.", "model.layers.1.", "model.norm.")) for n in a)
    assert all(t.dtype == torch.bfloat16 for t in a.values())
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)  # the seed matters
    assert facts["num_layers"] == 2
    assert facts["num_shipped_parameters"] == sum(t.numel() for t in a.values())


def test_the_assembled_draft_is_a_complete_model_with_the_targets_vocab(
    tiny_target, tmp_path
) -> None:
    from engine.loader import load_config, load_tokenizer
    from engine.speculative.vocab import check_same_vocab

    layers = tmp_path / "layers"
    _build(tiny_target, layers, seed=0)
    cache = tmp_path / "models"
    folder = assemble(tiny_target, cache, layers_dir=layers, log=lambda _: None)
    assert folder == prepared_model_path(DRAFT_MODEL_NAME, cache)
    assert assemble(tiny_target, cache, layers_dir=layers, log=lambda _: None) == folder

    draft = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    target = AutoModelForCausalLM.from_pretrained(tiny_target, dtype=torch.float32)
    assert draft.config.num_hidden_layers == 2
    assert draft.config.vocab_size == target.config.vocab_size
    assert torch.equal(draft.get_input_embeddings().weight, target.get_input_embeddings().weight)
    assert torch.equal(draft.lm_head.weight, target.lm_head.weight)  # tied, as the target's
    shipped = load_file(str(layers / LAYERS_FILE))
    state = draft.state_dict()
    assert all(torch.equal(state[n], t.float()) for n, t in shipped.items())
    check_same_vocab(  # raises ValueError when the vocabularies differ
        tiny_target,
        load_config(tiny_target),
        load_tokenizer(tiny_target),
        folder,
        load_config(folder),
    )


def test_speculative_greedy_output_with_the_draft_equals_plain_greedy(make_llm) -> None:
    from engine import SamplingParams, SpeculativeConfig

    target = prepared_model_path(DEFAULT_MODEL_NAME, models_dir())
    draft = prepared_model_path(DRAFT_MODEL_NAME, models_dir())
    if target is None or draft is None:
        pytest.skip(
            f"{DEFAULT_MODEL_NAME} and its draft are not prepared in {models_dir()}: "
            "run `gaudi-serve models prepare`"
        )
    tokenizer = AutoTokenizer.from_pretrained(target)
    prompts = [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], add_generation_prompt=True, return_dict=False
            )
        )
        for q in ("Name three colors.", "Write a Python function that adds two numbers.")
    ]
    prompts.append(tokenizer("import os\n\ndef list_files(path):\n").input_ids)
    greedy = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    plain = make_llm(target, max_model_len=256, kv_cache_tokens=1024)
    speculative = make_llm(
        target,
        max_model_len=256,
        kv_cache_tokens=1024,
        speculative=SpeculativeConfig(
            method="draft", draft_model=str(draft), num_speculative_tokens=3, adaptive=False
        ),
    )
    expected = [out.token_ids for out in plain.generate(prompts, greedy)]
    assert [out.token_ids for out in speculative.generate(prompts, greedy)] == expected
    assert speculative.engine.stats().num_draft_tokens > 0
