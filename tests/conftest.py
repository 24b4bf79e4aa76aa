"""Shared fixtures: tiny models of every supported family, built locally from configs
(random weights, no downloads), a small byte-level BPE tokenizer trained on the spot,
and engines whose invariants are checked at teardown."""

from __future__ import annotations

import os
import time

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_sessionstart(session) -> None:
    """DeepSpeed picks its accelerator on first use and announces it on stdout; with
    accelerate installed, `save_pretrained` (every tiny model) is such a first use. Pick it
    here, once, so no test's captured output starts with DeepSpeed's line and no test that
    fakes a Gaudi bridge decides it for the rest of the process."""
    from deepspeed.accelerator import get_accelerator

    get_accelerator()


SHM_SETTLE_S = 30  # a removal in flight (a Ray task, a rank exiting) gets this long


@pytest.fixture(scope="module", autouse=True)
def no_shm_buffers_left_by_the_module():
    """Invariant at each module's teardown (after its TP groups closed): no DeepSpeed
    all-reduce buffer the module created is left in /dev/shm unmapped by any process. One
    that a live process still maps (another run on this machine) is not this module's."""
    from cluster.commands.shm_cleanup import find_orphaned_shm_buffers

    before = set(find_orphaned_shm_buffers())
    yield
    deadline = time.monotonic() + SHM_SETTLE_S
    while (left := set(find_orphaned_shm_buffers()) - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"DeepSpeed buffers left in /dev/shm: {sorted(map(str, left))}"


TINY_VOCAB = 512

# family -> (config class name, extra kwargs); dims kept tiny so each model loads in ~1 s.
FAMILY_CONFIGS = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": 4096}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 16}),
    "gemma": ("GemmaConfig", {"head_dim": 16}),
    "phi3": ("Phi3Config", {"pad_token_id": 0}),
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    # the new decoder architecture (40B/180B): 2 KV groups, as tiny_config's shared
    # num_key_value_heads says (FalconConfig reads num_kv_heads; engine.models.falcon checks)
    "falcon": (
        "FalconConfig",
        {"new_decoder_architecture": True, "num_kv_heads": 2, "ffn_hidden_size": 128},
    ),
    # a window shorter than the longest test prompt, so the window mask is exercised
    "starcoder2": ("Starcoder2Config", {"sliding_window": 24}),
    # multi-query (1 KV head) as StarCoder ships; the MLP width is n_inner, not
    # intermediate_size, and num_key_value_heads must agree with multi_query
    "gpt_bigcode": (
        "GPTBigCodeConfig",
        {"multi_query": True, "num_key_value_heads": 1, "n_inner": 128},
    ),
    # Phi-2's shape: full multi-head attention, 40% of each head rotated
    "phi": ("PhiConfig", {"num_key_value_heads": 4, "partial_rotary_factor": 0.4}),
}
FAMILIES = list(FAMILY_CONFIGS)


def tiny_config(family: str, **overrides):
    import transformers

    cls_name, extra = FAMILY_CONFIGS[family]
    kwargs = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    kwargs.update(extra)
    kwargs.update(overrides)
    return getattr(transformers, cls_name)(**kwargs)


def train_tiny_tokenizer(out_dir) -> None:
    """A byte-level BPE (vocab 512) trained in well under a second on stdlib source."""
    import inspect
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    import engine.llm_engine as sample_module

    text = inspect.getsource(sample_module) + " héllo wörld 日本語 ✓ emoji 🙂\n" * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([text], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )
    fast.save_pretrained(out_dir)
    (out_dir / "README.txt").write_text(json.dumps({"vocab": TINY_VOCAB}))


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    train_tiny_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir):
    """Factory: family -> directory with a tiny random model and the tiny tokenizer."""
    import shutil

    made: dict[tuple, object] = {}

    def make(family: str = "llama", **overrides):
        key = (family, tuple(sorted(overrides.items())))
        if key not in made:
            from transformers import AutoModelForCausalLM

            torch.manual_seed(1234)
            model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides))
            out = tmp_path_factory.mktemp(f"tiny-{family}")
            model.save_pretrained(out)
            for f in tiny_tokenizer_dir.iterdir():
                shutil.copy(f, out / f.name)
            made[key] = out
        return made[key]

    return make


# Llava-NeXT: a tiny CLIP vision tower (28 px tiles of 14 px patches, anyres grids up to 2x2
# tiles) and a tiny Llama text model over the tiny tokenizer plus an `<image>` token. An
# image becomes 10-24 placeholder tokens, depending on its size and aspect ratio.
TINY_LLAVA_PINPOINTS = [[28, 56], [56, 28], [56, 56]]
# multimodal family -> the config of its tiny model (engine.families.MULTIMODAL_FAMILIES)
MULTIMODAL_FAMILY_CONFIGS = {
    "llava_next": lambda: tiny_llava_next_config(),
    "mllama": lambda: tiny_mllama_config(),
}
TINY_LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for p in m['content'] %}{% if p['type'] == 'image' %}<image>\n"
    "{% else %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def tiny_llava_next_config(image_token_id: int = TINY_VOCAB):
    """The tiny Llava-NeXT's config: a 2-layer CLIP tower, the tiny Llama as text model."""
    from transformers import LlavaNextConfig

    vision = dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
        projection_dim=32,
    )
    return LlavaNextConfig(
        vision_config=vision,
        text_config=tiny_config("llama", vocab_size=TINY_VOCAB + 8).to_dict(),
        image_grid_pinpoints=TINY_LLAVA_PINPOINTS,
        image_token_id=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


def build_tiny_llava_next(out_dir, tokenizer_dir) -> None:
    """A tiny random LlavaNextForConditionalGeneration, its tokenizer (with `<image>`),
    its processor (LlavaNextImageProcessorPil: pillow only) and a chat template."""
    from transformers import (
        AutoTokenizer,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.chat_template = TINY_LLAVA_CHAT_TEMPLATE
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 28},
        crop_size={"height": 28, "width": 28},
        image_grid_pinpoints=TINY_LLAVA_PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=TINY_LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    config = tiny_llava_next_config(tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(1234)
    LlavaNextForConditionalGeneration(config).save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


@pytest.fixture(scope="session")
def tiny_llava_next_dir(tmp_path_factory, tiny_tokenizer_dir):
    """Directory of a tiny random Llava-NeXT (`llava_next`) model with its processor."""
    out = tmp_path_factory.mktemp("tiny-llava_next")
    build_tiny_llava_next(out, tiny_tokenizer_dir)
    return out


# Llama 3.2 Vision: a tiny vision model (28 px tiles of 14 px patches, up to 2 tiles: 10
# image tokens) and a tiny 4-layer text model whose layers 1 and 3 cross-attend, over the
# tiny tokenizer plus an `<|image|>` token (one per image, no placeholders to expand).
TINY_MLLAMA_CROSS_LAYERS = [1, 3]


def tiny_mllama_config(image_token_id: int = TINY_VOCAB):
    """The tiny Llama 3.2 Vision's config."""
    from transformers import MllamaConfig

    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_global_layers=1,
        attention_heads=2,
        image_size=28,
        patch_size=14,
        max_num_tiles=2,
        intermediate_layers_indices=[0],
        vision_output_dim=64,  # hidden_size x (1 + intermediate layers)
        supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
    )
    text = dict(
        vocab_size=TINY_VOCAB + 8,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        cross_attention_layers=TINY_MLLAMA_CROSS_LAYERS,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return MllamaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id)


def build_tiny_mllama(out_dir, tokenizer_dir) -> None:
    """A tiny random MllamaForConditionalGeneration (its cross-attention gates, zero at
    initialization, set nonzero so the image changes the output), its tokenizer (with
    `<|image|>`) and its processor (MllamaImageProcessorPil: pillow only)."""
    from transformers import (
        AutoTokenizer,
        MllamaForConditionalGeneration,
        MllamaImageProcessorPil,
        MllamaProcessor,
    )

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|image|>"]})
    tokenizer.chat_template = TINY_LLAVA_CHAT_TEMPLATE.replace("<image>", "<|image|>")
    image_processor = MllamaImageProcessorPil(size={"height": 28, "width": 28}, max_image_tiles=2)
    processor = MllamaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )
    config = tiny_mllama_config(tokenizer.convert_tokens_to_ids("<|image|>"))
    torch.manual_seed(1234)
    model = MllamaForConditionalGeneration(config)
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            if hasattr(layer, "cross_attn_attn_gate"):
                layer.cross_attn_attn_gate.fill_(0.8)
                layer.cross_attn_mlp_gate.fill_(-0.6)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


@pytest.fixture(scope="session")
def tiny_mllama_dir(tmp_path_factory, tiny_tokenizer_dir):
    """Directory of a tiny random Llama 3.2 Vision (`mllama`) model with its processor."""
    out = tmp_path_factory.mktemp("tiny-mllama")
    build_tiny_mllama(out, tiny_tokenizer_dir)
    return out


def tiny_images(sizes, seed=0) -> list:
    """Random RGB PIL images of the given (height, width) sizes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def assert_engine_idle(engine) -> None:
    """Teardown invariants: no request left, every KV block free."""
    assert not engine.requests, f"requests left in flight: {list(engine.requests)}"
    assert not engine.scheduler.has_unfinished
    bm = engine.block_manager
    assert bm.num_free_blocks == bm.num_usable_blocks, "KV blocks leaked"
    assert all(rc == 0 for rc in bm.ref_counts), "non-zero block reference counts"


@pytest.fixture
def make_llm():
    """Factory for LLMs on CPU/fp32; checks each one is idle at teardown."""
    from engine import LLM

    made = []

    def make(model_dir, **kwargs):
        kwargs.setdefault("device", "cpu")
        kwargs.setdefault("dtype", "float32")
        kwargs.setdefault("kv_cache_tokens", 8192)
        # Warmup runs every bucket (~100 shapes at the default limits): only the tests of
        # static shapes need it; steps are padded to buckets either way.
        kwargs.setdefault("warmup", False)
        llm = LLM(str(model_dir), **kwargs)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        assert_engine_idle(llm.engine)
        llm.shutdown()


def hf_greedy(model_dir, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own generate (fp32, greedy, no EOS stop): the reference."""
    from transformers import AutoModelForCausalLM

    model = _hf_models.get(str(model_dir))
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        _hf_models[str(model_dir)] = model
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt_ids) :].tolist()


_hf_models: dict[str, object] = {}


def random_prompts(lengths, vocab=TINY_VOCAB, seed=0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


# Staggered arrivals: requests join a running batch at different steps and leave it at
# different steps (different max_tokens). step -> indexes of the prompts arriving then.
STAGGERED_MAX_TOKENS = (14, 6, 10, 3, 8)
STAGGERED_ARRIVALS = {0: [0, 1], 2: [2], 3: [3], 7: [4]}


def run_staggered(engine, prompts, max_tokens=STAGGERED_MAX_TOKENS, arrivals=None):
    """Step `engine` (an engine.LLMEngine) with prompt i added at its arrival step, greedy
    and ignoring EOS, until nothing is left; {"r<i>": generated token ids}."""
    from engine import SamplingParams

    arrivals = STAGGERED_ARRIVALS if arrivals is None else arrivals
    results, step = {}, 0
    while step <= max(arrivals) or engine.has_unfinished:
        for i in arrivals.get(step, []):
            params = SamplingParams(max_tokens=max_tokens[i], temperature=0.0, ignore_eos=True)
            engine.add_request(f"r{i}", prompts[i], params)
        for out in engine.step(stream=False):
            results[out.request_id] = out.token_ids
        step += 1
    return results
