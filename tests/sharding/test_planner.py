"""The TP planner on nine public models' config.json files (written from their published
dimensions), its refusals, and `gaudi-serve plan`.

Each expected TP degree is reasoned from arithmetic in a comment. Shorthands: budget =
0.9 x card memory (GiB = 2**30 bytes); bf16 weights = 2 bytes x params; the workspace is
under 1 GiB per card in every case here, so the margins below are wider than it.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
from published_configs import PUBLISHED_CONFIGS, PUBLISHED_NUM_PARAMS_B, write_configs

from cluster.commands.cli import main
from engine.config import DTYPE_NAMES, EngineConfig
from engine.families import FAMILIES
from sharding.hardware import CARDS, DTYPES, GiB, get_card
from sharding.planner import ModelSpec, Verdict, plan, valid_tp_sizes

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, pathlib.Path]:
    return write_configs(tmp_path_factory.mktemp("configs"))


@pytest.fixture(scope="module")
def specs(model_dirs) -> dict[str, ModelSpec]:
    return {name: ModelSpec.from_path(path) for name, path in model_dirs.items()}


@pytest.mark.parametrize("name", list(PUBLISHED_CONFIGS))
def test_parameter_count_is_within_2_percent_of_the_published_figure(specs, name):
    # Falcon-180B counts 178.6 B with its lm_head tied to the embedding (FalconConfig's
    # default); 179.5 B counts the 0.97 B embedding twice.
    published = PUBLISHED_NUM_PARAMS_B[name] * 1e9
    assert specs[name].num_params == pytest.approx(published, rel=0.02)


def test_config_quirks_are_read(specs, model_dirs):
    falcon = specs["Falcon-180B"]
    # new_decoder_architecture: num_kv_heads groups, not multi_query's single KV head.
    assert (falcon.num_kv_heads, falcon.head_dim, falcon.intermediate_size) == (8, 64, 4 * 14848)
    assert falcon.is_tied_embeddings and not falcon.is_gated_mlp
    mixtral = specs["Mixtral-8x7B"]
    assert (mixtral.num_experts, mixtral.ffn_per_token) == (8, 2 * 14336)
    # A directory, its config.json and the dict all read the same.
    llama = specs["Llama-3.1-8B"]
    assert ModelSpec.from_path(model_dirs["Llama-3.1-8B"] / "config.json") == llama
    from_dict = ModelSpec.from_config(PUBLISHED_CONFIGS["Llama-3.1-8B"], name="Llama-3.1-8B")
    assert from_dict == llama


def test_mixtral_total_and_active_parameters_match_the_published_figures(specs):
    """Mixtral-8x7B: 46.7 B parameters, 12.9 B used per token (2 of its 8 experts), the
    routers (one 8 x 4096 matrix per layer) counted in both; a dense model's are equal."""
    mixtral = specs["Mixtral-8x7B"]
    assert mixtral.num_router_params == 32 * 8 * 4096
    assert mixtral.num_params == pytest.approx(46.7e9, rel=0.001)
    assert mixtral.num_active_params == pytest.approx(12.9e9, rel=0.002)
    llama = specs["Llama-3.1-8B"]
    assert llama.num_router_params == 0 and llama.num_active_params == llama.num_params


def test_code_and_phi_family_quirks_are_read(specs):
    # StarCoder (gpt_bigcode): GPT-2 key names, multi-query (one KV head: tp 1 only), the
    # MLP width in n_inner, two MLP matrices, lm_head tied by the class default.
    sc = specs["StarCoder"]
    assert (sc.num_layers, sc.hidden_size, sc.num_attention_heads) == (40, 6144, 48)
    assert (sc.num_kv_heads, sc.head_dim, sc.intermediate_size) == (1, 128, 24576)
    assert sc.is_tied_embeddings and not sc.is_gated_mlp
    assert sc.max_position_embeddings == 8192
    assert valid_tp_sizes(sc) == [1]
    multi_head = ModelSpec.from_config({**PUBLISHED_CONFIGS["StarCoder"], "multi_query": False})
    assert multi_head.num_kv_heads == 48
    # StarCoder2 and Phi-2 count two MLP matrices (c_fc/c_proj, fc1/fc2), not three.
    starcoder2, phi2 = specs["StarCoder2-15B"], specs["Phi-2"]
    assert (starcoder2.num_kv_heads, starcoder2.is_gated_mlp) == (4, False)
    assert (phi2.num_kv_heads, phi2.head_dim, phi2.is_gated_mlp) == (32, 80, False)
    assert not starcoder2.is_tied_embeddings and not phi2.is_tied_embeddings


def test_a_family_tensor_parallelism_does_not_run_plans_tp_1_only():
    # Phi-3's 32 KV heads divide every degree, but the engine refuses tp_size > 1 for it
    # (engine.families: is_tp_supported), so the planner offers and explains only 1.
    phi3 = ModelSpec.from_config({**PUBLISHED_CONFIGS["Llama-3.1-8B"], "model_type": "phi3"})
    assert phi3.num_kv_heads == 8 and valid_tp_sizes(phi3) == [1]
    result = plan(phi3, "gaudi2")
    assert result.tp_size == 1
    (tp2,) = [c for c in result.candidates if c.tp_size == 2]
    assert tp2.verdict is Verdict.INVALID_HEADS
    assert tp2.reason == "tp_size=2: tensor parallelism does not run phi3 models yet"
    with pytest.raises(ValueError, match=r"does not run phi3 .*valid tp_size values .*: \[1\]"):
        plan(phi3, "gaudi2", tp_size=2)


def test_a_multimodal_model_is_sized_by_its_text_model_and_ruled_by_its_own_family():
    # Llava-NeXT: a Llama text model (8 KV heads, TP would divide them), but the engine
    # does not run the multimodal family with tensor parallelism.
    text = {**PUBLISHED_CONFIGS["Llama-3.1-8B"], "model_type": "llama"}
    llava = ModelSpec.from_config({"model_type": "llava_next", "text_config": text})
    assert (llava.model_type, llava.family_type, llava.num_kv_heads) == ("llama", "llava_next", 8)
    assert llava.num_layers == ModelSpec.from_config(text).num_layers
    assert valid_tp_sizes(llava) == [1]
    assert ModelSpec.from_config(text).family_type is None
    assert valid_tp_sizes(ModelSpec.from_config(text)) == [1, 2, 4, 8]


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_every_engine_family_is_sized_as_the_engine_builds_it(model_type):
    """The planner reads each registered family's config.json as the engine runs it: the
    same KV heads as the engine's cache, and the parameters of the model transformers
    builds (matrices only: norms and biases are not modelled, nor is StarCoder's learned
    position embedding)."""
    import torch
    from transformers import AutoModelForCausalLM

    from engine.loader import KVSpec
    from tests.conftest import tiny_config

    config = tiny_config(model_type)
    spec = ModelSpec.from_config(config.to_dict())
    assert spec.num_kv_heads == KVSpec.from_config(config, torch.float32).num_kv_heads
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    num_matrix_params = sum(
        p.numel() for name, p in model.named_parameters() if p.dim() >= 2 and "wpe" not in name
    )
    assert spec.num_params == pytest.approx(num_matrix_params, rel=0.01)


def test_the_planner_sizes_every_dtype_the_engine_runs():
    assert set(DTYPE_NAMES) <= set(DTYPES)


def test_untied_default_of_every_engine_family_is_read():
    # Qwen3 and Phi-3 configs that omit tie_word_embeddings are untied (transformers'
    # per-class default), as are Llama's; Gemma's default ties lm_head to the embedding.
    dims = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4)
    dims |= dict(intermediate_size=128, vocab_size=100)
    for model_type, family in FAMILIES.items():
        spec = ModelSpec.from_config({"model_type": model_type, **dims})
        assert spec.is_tied_embeddings == family.is_tied_by_default, model_type
    assert not ModelSpec.from_config({"model_type": "qwen3", **dims}).is_tied_embeddings


def test_default_prefill_budget_is_the_engines(specs):
    default = EngineConfig().max_num_batched_tokens
    assert plan(specs["Llama-3.1-8B"], "gaudi2").max_num_batched_tokens == default


def test_old_falcon_is_multi_query():
    # Falcon-7B: multi_query without the new decoder architecture means one KV head, so
    # only tp 1 is valid; without multi_query every head has its own K and V.
    falcon_7b = {
        "model_type": "falcon",
        "hidden_size": 4544,
        "num_attention_heads": 71,
        "num_hidden_layers": 32,
        "multi_query": True,
        "new_decoder_architecture": False,
        "vocab_size": 65024,
    }
    spec = ModelSpec.from_config(falcon_7b)
    assert spec.num_kv_heads == 1
    assert spec.num_params == pytest.approx(6.92e9, rel=0.02)
    assert valid_tp_sizes(spec) == [1]
    assert ModelSpec.from_config({**falcon_7b, "multi_query": False}).num_kv_heads == 71


@pytest.mark.parametrize(
    ("name", "kv_bytes_per_token"),
    [
        ("Llama-3.1-8B", 2 * 32 * 8 * 128 * 2),  # K and V x layers x KV heads x head_dim x bf16
        ("Llama-3.1-70B", 2 * 80 * 8 * 128 * 2),
        ("Llama-3.1-405B", 2 * 126 * 8 * 128 * 2),
        ("Mixtral-8x7B", 2 * 32 * 8 * 128 * 2),
        ("Qwen2-72B", 2 * 80 * 8 * 128 * 2),
        ("Falcon-180B", 2 * 80 * 8 * 64 * 2),
    ],
)
def test_kv_bytes_per_token_split_across_ranks(specs, name, kv_bytes_per_token):
    result = plan(specs[name], "gaudi3")
    per_card = {c.tp_size: c.kv_bytes_per_token_per_card for c in result.candidates}
    assert per_card == {tp: kv_bytes_per_token // tp for tp in (1, 2, 4, 8)}


@pytest.mark.parametrize("card", sorted(CARDS))
def test_8b_fits_one_card_of_every_type(specs, card):
    # 8.03e9 x 2 B = 15.0 GiB, well under the smallest budget (0.9 x 80 = 72 GiB).
    result = plan(specs["Llama-3.1-8B"], card)
    assert result.tp_size == 1 and result.is_fit
    assert result.num_replicas_per_node == 8
    assert result.rejected == ()
    assert result.chosen.weight_bytes_per_card == pytest.approx(15.0 * GiB, rel=0.01)


@pytest.mark.parametrize(
    ("name", "card", "dtype", "expected_tp"),
    [
        # 70.55e9 x 2 B = 131.4 GiB > 72 (h100) or 86.4 (gaudi2) budget; half is 65.7 GiB.
        ("Llama-3.1-70B", "h100", "bfloat16", 2),
        ("Llama-3.1-70B", "gaudi2", "bfloat16", 2),
        # fp8: 68.4e9 linears x 1 B + 2.1e9 embeddings x 2 B = 67.7 GiB < 72 GiB.
        ("Llama-3.1-70B", "h100", "fp8", 1),
        # 405.85e9 x 2 B = 756 GiB: 94.5 GiB at tp 8 fits 126.9 (h200) and 115.2 (gaudi3).
        ("Llama-3.1-405B", "h200", "bfloat16", 8),
        ("Llama-3.1-405B", "gaudi3", "bfloat16", 8),
        # fp8: (401.6e9 x 1 B + 4.2e9 x 2 B) / 8 = 47.7 GiB per card < 72; tp 4 = 95 > 72.
        ("Llama-3.1-405B", "h100", "fp8", 8),
        # 46.70e9 x 2 B = 87.0 GiB: just over gaudi2's 86.4 GiB budget, under gaudi3's 115.2.
        ("Mixtral-8x7B", "gaudi2", "bfloat16", 2),
        ("Mixtral-8x7B", "gaudi3", "bfloat16", 1),
        ("Mixtral-8x7B", "h200", "bfloat16", 1),
        # 72.70e9 x 2 B = 135.4 GiB: over one h200 (126.9 budget), half fits an h100.
        ("Qwen2-72B", "h200", "bfloat16", 2),
        ("Qwen2-72B", "h100", "bfloat16", 2),
        # 178.55e9 x 2 B = 332.6 GiB: tp 4 = 83.1 GiB fits gaudi2 (86.4), not h100 (72).
        ("Falcon-180B", "gaudi2", "bfloat16", 4),
        ("Falcon-180B", "h100", "bfloat16", 8),
    ],
)
def test_smallest_degree_that_fits(specs, name, card, dtype, expected_tp):
    result = plan(specs[name], card, dtype=dtype, max_model_len=8192)
    assert result.tp_size == expected_tp and result.is_fit
    assert result.num_replicas_per_node == 8 // expected_tp
    assert result.chosen.kv_capacity_tokens >= 8192
    # Every smaller degree was rejected because its weights do not fit, with the numbers.
    assert [c.tp_size for c in result.rejected] == [tp for tp in (1, 2, 4) if tp < expected_tp]
    for rejected in result.rejected:
        assert rejected.verdict is Verdict.WEIGHTS_DO_NOT_FIT
        assert "exceed the" in rejected.reason and "GiB budget" in rejected.reason


def test_405b_bf16_does_not_fit_one_node_of_h100(specs):
    # 756 GiB of weights / 8 = 94.5 GiB per card > 72 GiB budget; 756 / 72 -> 11 cards.
    result = plan(specs["Llama-3.1-405B"], "h100", dtype="bfloat16")
    assert result.tp_size is None and not result.is_fit
    assert result.num_replicas_per_node == 0
    assert [c.verdict for c in result.rejected] == [Verdict.WEIGHTS_DO_NOT_FIT] * 4
    assert "does not fit on one node of 8 x h100" in result.summary
    assert "at least 11 cards" in result.summary


def test_target_concurrency_raises_the_degree(specs):
    # 70B on h100 at tp 2: 72 - 65.7 - 0.3 GiB ~ 6 GiB of KV at 160 KiB/token ~ 39,000
    # tokens, short of 32 x 8192 = 262,144; tp 4 holds ~ 39 GiB / 80 KiB ~ 510,000.
    result = plan(specs["Llama-3.1-70B"], "h100", max_model_len=8192, concurrency=32)
    assert result.tp_size == 4
    tp2 = result.rejected[-1]
    assert tp2.tp_size == 2 and tp2.verdict is Verdict.KV_DOES_NOT_FIT
    assert 35_000 < tp2.kv_capacity_tokens < 45_000
    assert "262,144" in tp2.reason
    assert result.max_full_length_seqs >= 32


def test_kv_that_fits_no_degree_says_so(specs):
    # tp 8 holds ~1.45 M tokens of 70B KV on h100; 200 x 8192 = 1.64 M does not fit.
    result = plan(specs["Llama-3.1-70B"], "h100", concurrency=200)
    assert result.tp_size is None
    assert result.rejected[-1].verdict is Verdict.KV_DOES_NOT_FIT
    assert "lower concurrency or max_model_len" in result.summary


def test_fp8_weights_keep_a_bf16_kv_cache_unless_asked(specs):
    default = plan(specs["Llama-3.1-70B"], "h100", dtype="fp8")
    assert default.kv_cache_dtype == "bfloat16"
    fp8_kv = plan(specs["Llama-3.1-70B"], "h100", dtype="fp8", kv_cache_dtype="fp8")
    assert fp8_kv.chosen.kv_bytes_per_token_per_card * 2 == (
        default.chosen.kv_bytes_per_token_per_card
    )
    assert fp8_kv.chosen.kv_capacity_tokens > 1.9 * default.chosen.kv_capacity_tokens


@pytest.mark.parametrize("tp_size", [3, 6, 16])
def test_refuses_a_degree_that_does_not_divide_the_kv_heads(specs, tp_size):
    with pytest.raises(ValueError) as error:
        plan(specs["Llama-3.1-70B"], "gaudi2", tp_size=tp_size)
    message = str(error.value)
    assert f"tp_size={tp_size} does not divide num_key_value_heads=8" in message
    assert "valid tp_size values with cards_per_node=8: [1, 2, 4, 8]" in message


def test_refuses_multi_query_falcon_beyond_one_card():
    # Falcon-7B has a single KV head (multi_query), which DeepSpeed AutoTP cannot split.
    config = {"model_type": "falcon", "hidden_size": 4544, "num_attention_heads": 71}
    config |= {"num_hidden_layers": 32, "multi_query": True, "vocab_size": 65024}
    with pytest.raises(ValueError, match=r"num_key_value_heads=1.*: \[1\]"):
        plan(config, "gaudi2", tp_size=2)
    result = plan(config, "gaudi2")
    assert result.tp_size == 1
    assert [c.verdict for c in result.candidates[1:]] == [Verdict.INVALID_HEADS] * 3


def test_config_with_heads_not_a_multiple_of_kv_heads_is_refused():
    config = {**PUBLISHED_CONFIGS["Llama-3.1-8B"], "num_key_value_heads": 12}
    with pytest.raises(ValueError, match="num_attention_heads=32 must be a multiple"):
        ModelSpec.from_config(config)


def test_an_explicit_degree_is_evaluated_not_chosen(specs):
    result = plan(specs["Llama-3.1-8B"], "gaudi2", tp_size=4)
    assert result.tp_size == 4 and result.is_tp_explicit and result.is_fit
    assert result.num_replicas_per_node == 2
    too_small = plan(specs["Llama-3.1-70B"], "h100", tp_size=1)
    assert not too_small.is_fit and "(requested) does not fit" in too_small.summary


def test_cpu_ranks_share_host_memory(specs):
    # 15 GiB of 8B weights fit 64 GB of host memory (57.6 GB budget) once; TP adds none.
    small = plan(specs["Llama-3.1-8B"], get_card("cpu", cpu_memory_gb=64))
    assert small.tp_size == 1 and small.num_replicas_per_node == 1
    # 131.4 GiB of 70B weights > 0.9 x 100 GB = 83.8 GiB at every degree.
    big = plan(specs["Llama-3.1-70B"], get_card("cpu", cpu_memory_gb=100))
    assert big.tp_size is None
    assert all(c.verdict is Verdict.WEIGHTS_DO_NOT_FIT for c in big.candidates)
    assert "/ 8 ranks" in big.candidates[-1].reason


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"card": "tpu"}, "card must be one of"),
        ({"card": "cpu"}, "cpu_memory_gb"),
        ({"dtype": "int4"}, "dtype must be one of"),
        ({"kv_cache_dtype": "int8"}, "kv_cache_dtype must be one of"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"concurrency": 0}, "concurrency"),
        ({"memory_utilization": 1.5}, "memory_utilization"),
    ],
)
def test_bad_input_names_the_field(specs, kwargs, field):
    arguments = {"card": "gaudi2", **kwargs}
    with pytest.raises(ValueError, match=field):
        plan(specs["Llama-3.1-8B"], **arguments)


def test_missing_config_and_unsupported_moe(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        ModelSpec.from_path(tmp_path)
    with pytest.raises(ValueError, match="moe_intermediate_size"):
        ModelSpec.from_config({**PUBLISHED_CONFIGS["Mixtral-8x7B"], "moe_intermediate_size": 8})


def test_max_model_len_past_the_models_context_is_noted(specs):
    result = plan(specs["Mixtral-8x7B"], "gaudi3", max_model_len=65536)
    assert result.notes == (
        "max_model_len 65536 exceeds the model's max_position_embeddings 32768",
    )


def test_cli_report(model_dirs, capsys):
    assert main(["plan", "--model", str(model_dirs["Llama-3.1-70B"]), "--card", "h100"]) == 0
    out = capsys.readouterr().out
    assert "fits  <- chosen" in out
    assert "plan: tp 2: 4 replica(s) per 8-card node" in out
    assert "tp 1: weights 131.4 GiB" in out


def test_cli_quantization_sizes_the_weights_with_the_quantized_bytes(model_dirs, capsys):
    model = str(model_dirs["Llama-3.1-70B"])
    assert main(["plan", "--model", model, "--card", "gaudi2", "--tp", "2", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    args = ["plan", "--model", model, "--card", "gaudi2", "--tp", "2", "--quantization", "int4"]
    assert main([*args, "--json"]) == 0
    int4 = json.loads(capsys.readouterr().out)
    assert int4["quantization"] == "int4"
    weights = [c["weight_bytes_per_card"] for c in (plain["candidates"][1], int4["candidates"][1])]
    assert weights[1] < 0.35 * weights[0]  # 4 bits + a float32 scale per 32 vs 16 bits
    assert main(args) == 0
    assert "weights bfloat16 (int4 quantized)" in capsys.readouterr().out


def test_cli_exit_codes(model_dirs, capsys):
    model_405b = str(model_dirs["Llama-3.1-405B"])
    assert main(["plan", "--model", model_405b, "--card", "h100"]) == 1
    assert "does not fit on one node" in capsys.readouterr().out
    assert main(["plan", "--model", model_405b, "--card", "h100", "--tp", "3"]) == 2
    assert "does not divide num_key_value_heads=8" in capsys.readouterr().err
    assert main(["plan", "--model", model_405b, "--card", "mi300x"]) == 2
    assert "'gaudi2', 'gaudi3', 'h100', 'h200', 'a100-80', 'cpu'" in capsys.readouterr().err


def test_cli_table_for_several_models_and_cards(model_dirs, capsys):
    models = [str(model_dirs["Llama-3.1-8B"]), str(model_dirs["Llama-3.1-405B"])]
    assert main(["plan", "--model", *models, "--card", "gaudi2", "h100"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| model | params | gaudi2 | h100 |"
    assert lines[2].startswith("| Llama-3.1-8B | 8.0 B | tp 1: 15.0 GiB, ")
    assert lines[3].endswith("| does not fit on 8 cards | does not fit on 8 cards |")


def test_cli_default_model_is_the_bundled_one(capsys):
    from engine.assets import default_model_path

    try:
        expected_name = default_model_path().name
    except FileNotFoundError:
        assert main(["plan"]) == 2
        assert "bundled model" in capsys.readouterr().err
        return
    assert main(["plan", "--card", "cpu", "--cpu-memory-gb", "8"]) == 0
    assert f"model  {expected_name}:" in capsys.readouterr().out


def test_cli_json_in_a_subprocess(model_dirs):
    command = [sys.executable, "-m", "cluster.commands.cli", "plan", "--json"]
    command += ["--model", str(model_dirs["Mixtral-8x7B"]), "--card", "gaudi2"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    assert (result["tp_size"], result["is_fit"], result["num_replicas_per_node"]) == (2, True, 4)
    assert [c["verdict"] for c in result["candidates"]][:2] == ["weights do not fit", "fits"]
    assert result["num_params"] == pytest.approx(46.7e9, rel=0.01)


# -- weight quantization and the FP8 KV cache (engine.quant) ------------------------------
def test_quantized_weights_are_the_bytes_the_engine_loads():
    """int8/int4 size every matrix at 1.125/0.625 bytes a weight (a float32 scale per 32),
    as the engine stores them; the bundled model, measured loaded in the engine: fp32
    21,902,592 B, int8 6,169,856 B, int4 3,433,728 B (the gap: 13,312 B of norms)."""
    from engine.assets import default_model_path

    path = default_model_path("pycoder")
    sizes = {
        q: plan(path, "h100", dtype="float32", quantization=q).candidates[0].weight_bytes_per_card
        for q in (None, "int8", "int4")
    }
    assert sizes == {None: 21_889_024, "int8": 6_156_288, "int4": 3_420_160}
    assert sizes["int8"] <= 0.3 * sizes[None]


def test_fp8_weights_quantize_the_block_linears_only(specs):
    llama = specs["Llama-3.1-70B"]
    as_dtype = plan(llama, "h100", dtype="fp8")
    as_quantization = plan(llama, "h100", dtype="bfloat16", quantization="fp8")
    assert as_quantization.candidates[1].weight_bytes_per_card == pytest.approx(
        as_dtype.candidates[1].weight_bytes_per_card
    )
    assert as_quantization.kv_cache_dtype == "bfloat16"  # the engine's auto: the dtype


def test_int4_weights_fit_llama_70b_on_one_h100(specs):
    # 70.55e9 params * 0.625 B = 41.1 GiB of weights < 72 GiB budget: tp 1 (bf16 needs tp 2)
    llama = specs["Llama-3.1-70B"]
    assert plan(llama, "h100", dtype="bfloat16", max_model_len=8192).tp_size == 2
    int4 = plan(llama, "h100", dtype="bfloat16", quantization="int4", max_model_len=8192)
    assert int4.tp_size == 1 and int4.quantization == "int4"


def test_fp8_kv_cache_halves_the_bytes_per_token(specs):
    llama = specs["Llama-3.1-8B"]
    auto = plan(llama, "h100", dtype="bfloat16", kv_cache_dtype="auto")
    fp8 = plan(llama, "h100", dtype="bfloat16", kv_cache_dtype="fp8")
    assert auto.kv_cache_dtype == "bfloat16"
    per_token = [p.candidates[0].kv_bytes_per_token_per_card for p in (auto, fp8)]
    assert per_token[0] == 2 * per_token[1]


def test_an_unknown_quantization_names_the_field(specs):
    with pytest.raises(ValueError, match=r"quantization must be one of \[None, 'fp8', 'int8'"):
        plan(specs["Llama-3.1-8B"], "h100", quantization="int3")
