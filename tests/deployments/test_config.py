"""The serving config schema, its loader and `gaudi-serve config check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from cluster.commands.cli import main
from deployments.config import (
    DEFAULT_MODEL_TOKEN_BUDGET,
    ConfigError,
    ModelConfig,
    ServeConfig,
    load_config,
    parse_config,
)

EXAMPLES = sorted((Path(__file__).parents[2] / "deployments" / "examples").glob("*.yaml"))


def problems_of(data, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, **kwargs)
    return info.value.problems


def one_model(**fields) -> dict:
    return {"models": [{"name": "m", **fields}]}


@pytest.fixture
def model_dir(tmp_path) -> Path:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def test_all_four_examples_exist_and_validate():
    assert {p.name for p in EXAMPLES} >= {
        "default.yaml",
        "two-models.yaml",
        "tp2.yaml",
        "autoscaling.yaml",
    }
    for path in EXAMPLES:
        config = load_config(path)
        for model in config.models:
            model.serve_deployment_options("cpu")


def test_default_config_is_one_bundled_model_with_defaults(monkeypatch, tmp_path):
    # Nothing prepared in GAUDI_SERVE_MODELS_DIR: the bundled pycoder.
    monkeypatch.setenv("GAUDI_SERVE_MODELS_DIR", str(tmp_path))
    config = ServeConfig.default()
    (model,) = config.models
    assert model.name == "pycoder" and model.path is None and model.tp_size == 1
    assert config.http.host == "127.0.0.1" and config.http.port == 8000
    assert model.engine.max_num_seqs == 32 and model.engine.block_size == 16
    assert model.engine.enable_prefix_caching and model.speculative is None
    assert config == load_config(EXAMPLES[[p.name for p in EXAMPLES].index("default.yaml")])


def test_default_config_serves_smollm2_once_prepared(monkeypatch, tmp_path):
    from tests.engine.fake_prepared import make_fake_prepared

    monkeypatch.setenv("GAUDI_SERVE_MODELS_DIR", str(tmp_path))
    folder = make_fake_prepared(tmp_path)
    (model,) = ServeConfig.default().models
    assert model.name == "smollm2-135m-instruct" and model.path is None
    assert model.resolved_path() == folder
    # A smaller prefill budget: fewer, lighter buckets to warm on a CPU.
    assert model.engine.max_num_batched_tokens == DEFAULT_MODEL_TOKEN_BUDGET
    # Other path-less names: pycoder by its name, anything else the bundled pycoder.
    assert ModelConfig(name="pycoder").resolved_path().name == "pycoder"
    assert ModelConfig(name="m").resolved_path().name == "pycoder"
    (folder / ".prepared.json").unlink()
    with pytest.raises(FileNotFoundError, match="gaudi-serve models prepare"):
        model.resolved_path()


def test_every_field_of_every_config_model_has_a_description():
    seen: set[type[BaseModel]] = set()
    pending: list[type[BaseModel]] = [ServeConfig]
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
        pending += [cls for cls in _nested_models(model) if cls not in seen]
    assert len(seen) >= 8


def _nested_models(model: type[BaseModel]) -> list[type[BaseModel]]:
    from typing import get_args

    found = []

    def walk(annotation):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.append(annotation)
        for arg in get_args(annotation):
            walk(arg)

    for field in model.model_fields.values():
        walk(field.annotation)
    return found


def test_device_choices_are_the_engines():
    from typing import get_args

    from engine import DEVICE_CHOICES

    assert get_args(ModelConfig.model_fields["device"].annotation) == DEVICE_CHOICES


def test_reading_a_config_loads_no_torch():
    code = (
        "import sys\n"
        "from deployments.config import ServeConfig\n"
        "import deployments.metrics\n"
        "ServeConfig.default().models[0].resolved_path()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tokenizer_folder_is_taken_from_the_config_files_folder(model_dir, tmp_path):
    config_file = tmp_path / "serve.yaml"
    config_file.write_text("models:\n  - name: m\n    tokenizer: my-model\n")
    assert load_config(config_file).models[0].tokenizer == model_dir
    missing = tmp_path / "nope"
    assert problems_of(one_model(tokenizer=str(missing))) == [
        f"models.0.tokenizer: {missing} is not a directory (expected a Hugging Face "
        "tokenizer folder)"
    ]


def test_config_is_frozen():
    config = ServeConfig.default()
    with pytest.raises(ValidationError):
        config.models[0].tp_size = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({**one_model(), "extra": 1}, "extra"),
        ({**one_model(), "http": {"port": 8000, "extra": 1}}, "http.extra"),
        (one_model(extra=1), "models.0.extra"),
        (one_model(engine={"extra": 1}), "models.0.engine.extra"),
        (one_model(engine={"buckets": {"extra": 1}}), "models.0.engine.buckets.extra"),
        (
            one_model(engine={"buckets": {"prefill_lengths": {"min": 1, "max": 4, "extra": 1}}}),
            "models.0.engine.buckets.prefill_lengths: extra",
        ),
        (one_model(speculative={"method": "ngram", "extra": 1}), "models.0.speculative.extra"),
        (one_model(serve={"extra": 1}), "models.0.serve.extra"),
        (
            one_model(serve={"autoscaling": {"max_replicas": 2, "extra": 1}}),
            "models.0.serve.autoscaling.extra",
        ),
    ],
)
def test_unknown_key_is_rejected_at_every_level_listing_the_allowed_keys(data, where):
    (problem,) = problems_of(data)
    assert problem.startswith(f"{where}: unknown key (allowed: ")


def test_unknown_model_key_lists_the_model_keys():
    (problem,) = problems_of(one_model(max_num_seqs=8))
    assert problem == (
        "models.0.max_num_seqs: unknown key (allowed: name, path, tokenizer, device, dtype, "
        "tp_size, quantization, quantization_stats, kv_cache_dtype, engine, speculative, serve)"
    )


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"engine": {"block_size": 7}},
            "models.0.engine.block_size: Input should be 8, 16, 32, 64 or 128 (got 7)",
        ),
        (
            {"device": "tpu"},
            "models.0.device: Input should be 'auto', 'cpu', 'cuda' or 'hpu' (got 'tpu')",
        ),
        (
            {"dtype": "int8"},
            "models.0.dtype: Input should be 'auto', 'float32', 'bfloat16' or 'float16' "
            "(got 'int8')",
        ),
        ({"tp_size": 3}, "models.0.tp_size: Input should be 1, 2, 4 or 8 (got 3)"),
        (
            {"engine": {"buckets": {"strategy": "cubic"}}},
            "models.0.engine.buckets.strategy: Input should be 'exponential' or 'linear' "
            "(got 'cubic')",
        ),
        (
            {"speculative": {"method": "medusa"}},
            "models.0.speculative.method: Input should be 'draft', 'ngram' or 'hybrid' "
            "(got 'medusa')",
        ),
        (
            {"serve": {"stream_interval_ms": -5}},
            "models.0.serve.stream_interval_ms: Input should be greater than or equal to 0 "
            "(got -5)",
        ),
        (
            {"engine": {"max_num_seqs": 2000}},
            "models.0.engine.max_num_seqs: Input should be less than or equal to 1024 (got 2000)",
        ),
    ],
)
def test_bad_values_name_the_key_path_and_the_allowed_values(fields, expected):
    assert problems_of(one_model(**fields)) == [expected]


def test_every_problem_is_reported_at_once():
    problems = problems_of(
        {
            "http": {"port": 0},
            "models": [{"name": "a b", "tp_size": 3, "engine": {"block_size": 7}}],
        }
    )
    assert [p.split(":")[0] for p in problems] == [
        "http.port",
        "models.0.name",
        "models.0.tp_size",
        "models.0.engine.block_size",
    ]


def test_min_replicas_above_max_replicas_is_rejected():
    autoscaling = {"min_replicas": 3, "max_replicas": 2}
    assert problems_of(one_model(serve={"autoscaling": autoscaling})) == [
        "models.0.serve.autoscaling: min_replicas (3) must be <= max_replicas (2)"
    ]


@pytest.mark.parametrize("initial", [0, 5])
def test_initial_replicas_outside_min_max_is_rejected(initial):
    autoscaling = {"min_replicas": 1, "max_replicas": 4, "initial_replicas": initial}
    (problem,) = problems_of(one_model(serve={"autoscaling": autoscaling}))
    assert f"initial_replicas ({initial}) must be within min_replicas (1)" in problem


def test_num_replicas_and_autoscaling_together_are_rejected():
    serve = {"num_replicas": 2, "autoscaling": {"max_replicas": 4}}
    assert problems_of(one_model(serve=serve)) == [
        "models.0.serve: set either num_replicas (2) or autoscaling, not both"
    ]


def test_max_replicas_is_required_for_autoscaling():
    assert problems_of(one_model(serve={"autoscaling": {"min_replicas": 1}})) == [
        "models.0.serve.autoscaling.max_replicas: required key is missing"
    ]


def test_missing_model_path_is_rejected(tmp_path):
    missing = tmp_path / "nope"
    assert problems_of(one_model(path=str(missing))) == [
        f"models.0.path: {missing} is not a directory (expected a Hugging Face model folder)"
    ]


def test_model_path_without_config_json_is_rejected(tmp_path):
    (problem,) = problems_of(one_model(path=str(tmp_path)))
    assert problem == (
        f"models.0.path: {tmp_path} has no config.json (expected a Hugging Face model folder)"
    )


def test_relative_model_path_is_taken_from_the_config_files_folder(model_dir):
    config_file = model_dir.parent / "serve.yaml"
    config_file.write_text("models:\n  - name: mine\n    path: my-model\n")
    assert load_config(config_file).models[0].path == model_dir


def test_check_paths_off_accepts_a_path_that_exists_elsewhere():
    config = parse_config(one_model(path="/models/llama-70b"), check_paths=False)
    assert config.models[0].path == Path("/models/llama-70b")


def test_model_names_must_be_unique_and_at_least_one_model_is_required():
    data = {"models": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}
    assert problems_of(data) == ["models: model names must be unique; repeated: a"]
    assert problems_of({"models": []}) == ["models: at least one model is required"]
    assert problems_of({"http": {}}) == ["models: required key is missing"]
    assert problems_of({"models": [{}]}) == ["models.0.name: required key is missing"]


def test_model_name_allows_only_safe_characters():
    assert parse_config(one_model(name="org/model-1.5_b")).models[0].name == "org/model-1.5_b"
    (problem,) = problems_of({"models": [{"name": "bad name!"}]})
    assert problem.startswith("models.0.name: String should match pattern")


def test_cross_field_engine_and_speculative_rules(model_dir):
    assert problems_of(one_model(engine={"kv_cache_tokens": 8})) == [
        "models.0.engine: kv_cache_tokens (8) must be >= block_size (16)"
    ]
    assert problems_of(one_model(engine={"max_num_batched_tokens": 8})) == [
        "models.0.engine: max_num_batched_tokens (8) must be >= block_size (16)"
    ]
    linear = {"strategy": "linear", "prefill_lengths": {"min": 16, "max": 256}}
    assert problems_of(one_model(engine={"buckets": linear})) == [
        "models.0.engine.buckets: prefill_lengths.step is required with strategy 'linear'"
    ]
    assert problems_of(
        one_model(engine={"buckets": {"decode_num_blocks": {"min": 8, "max": 4}}})
    ) == ["models.0.engine.buckets.decode_num_blocks: min (8) must be <= max (4)"]
    ngram = {"method": "ngram", "draft_model": str(model_dir)}
    assert problems_of(one_model(speculative=ngram)) == [
        "models.0.speculative: draft_model is only used with methods 'draft' and 'hybrid', "
        f"got draft_model={str(model_dir)!r} with method 'ngram'"
    ]
    draft = {"method": "draft", "draft_model": str(model_dir), "num_speculative_tokens": 8}
    spec = parse_config(one_model(speculative=draft)).models[0].speculative
    assert spec.resolved_draft_model() == model_dir and spec.adaptive
    assert (
        parse_config(one_model(speculative={"method": "ngram"}))
        .models[0]
        .speculative.resolved_draft_model()
        is None
    )


def test_bucket_dimensions_are_ranges_or_explicit_lists():
    buckets = {
        "strategy": "linear",
        "prefill_batch_sizes": [1, 2, 4],
        "prefill_lengths": {"min": 16, "max": 512, "step": 64},
    }
    parsed = parse_config(one_model(engine={"buckets": buckets})).models[0].engine.buckets
    assert parsed.prefill_batch_sizes == (1, 2, 4)
    assert (parsed.prefill_lengths.min, parsed.prefill_lengths.step) == (16, 64)
    assert parsed.decode_batch_sizes is None and parsed.decode_num_blocks is None
    for bad in ([4, 2], [], [0, 1], [True], "big"):
        (problem,) = problems_of(one_model(engine={"buckets": {"decode_batch_sizes": bad}}))
        assert problem.startswith(
            "models.0.engine.buckets.decode_batch_sizes: decode_batch_sizes must be a range "
            "{min, max, step} or a non-empty, strictly increasing list of integers >= 1"
        )
    (problem,) = problems_of(one_model(engine={"buckets": {"decode_num_blocks": {"min": 0}}}))
    assert problem == (
        "models.0.engine.buckets.decode_num_blocks: min: Input should be greater than or "
        "equal to 1 (got 0); max: required key is missing"
    )


def test_max_queued_requests_uses_none_for_no_limit_and_rejects_zero():
    assert problems_of(one_model(serve={"max_queued_requests": 0})) == [
        "models.0.serve.max_queued_requests: Input should be greater than or equal to 1 (got 0)"
    ]
    unlimited = parse_config(one_model(device="cpu")).models[0]
    assert unlimited.serve_deployment_options()["max_queued_requests"] == -1
    limited = parse_config(one_model(device="cpu", serve={"max_queued_requests": 5})).models[0]
    assert limited.serve_deployment_options()["max_queued_requests"] == 5


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("kv_aware", "KvAwareRequestRouter"),
        ("power_of_two", "PowerOfTwoRequestRouter"),
        ("prefix_affinity", "PrefixAffinityRequestRouter"),
        ("round_robin", "RoundRobinRequestRouter"),
    ],
)
def test_request_router_option_picks_a_serve_router_class(name, cls):
    from ray.serve.config import RequestRouterConfig

    model = parse_config(
        one_model(engine={"block_size": 32}, serve={"request_router": name})
    ).models[0]
    config = RequestRouterConfig(**model.serve_deployment_options("cpu")["request_router_config"])
    assert config.get_request_router_class().__name__ == cls
    kwargs = config.request_router_kwargs
    assert kwargs == ({"block_size": 32, "max_num_seqs": 32} if name == "kv_aware" else {})


def test_max_queue_wait_turns_on_admission_with_the_models_replica_bound():
    from ray.serve.config import RequestRouterConfig

    fixed = one_model(serve={"max_queue_wait_s": 5, "num_replicas": 3})
    options = parse_config(fixed).models[0].serve_deployment_options("cpu")
    kwargs = RequestRouterConfig(**options["request_router_config"]).request_router_kwargs
    assert kwargs["max_queue_wait_s"] == 5.0 and kwargs["max_replicas"] == 3
    scaled = one_model(serve={"max_queue_wait_s": 2, "autoscaling": {"max_replicas": 4}})
    options = parse_config(scaled).models[0].serve_deployment_options("cpu")
    assert options["request_router_config"]["request_router_kwargs"]["max_replicas"] == 4
    (problem,) = problems_of(
        one_model(serve={"max_queue_wait_s": 5, "request_router": "round_robin"})
    )
    assert problem.startswith("models.0.serve: ")
    assert "max_queue_wait_s needs request_router 'kv_aware'" in problem
    assert "round_robin" in problem
    (problem,) = problems_of(one_model(serve={"max_queue_wait_s": 0}))
    assert problem.startswith("models.0.serve.max_queue_wait_s: ")


def test_drain_and_cold_start_timeouts_are_validated_and_passed_on():
    model = parse_config(
        one_model(serve={"drain_timeout_s": 300, "cold_start_timeout_s": 900})
    ).models[0]
    assert model.serve_deployment_options("cpu")["graceful_shutdown_timeout_s"] == 300.0
    assert model.serve.cold_start_timeout_s == 900.0
    for field in ("drain_timeout_s", "cold_start_timeout_s"):
        (problem,) = problems_of(one_model(serve={field: -1}))
        assert problem.startswith(f"models.0.serve.{field}: ")


def test_request_router_option_names_the_allowed_values():
    (problem,) = problems_of(one_model(serve={"request_router": "random"}))
    assert problem.startswith("models.0.serve.request_router: ")
    for name in ("kv_aware", "power_of_two", "prefix_affinity", "round_robin"):
        assert name in problem
    (problem,) = problems_of(one_model(serve={"routing_stats_period_s": 0}))
    assert problem.startswith("models.0.serve.routing_stats_period_s: ")


def test_serve_options_for_one_card_replicas():
    model = parse_config(one_model(serve={"num_replicas": 3, "health_check_timeout_s": 60}))
    options = model.models[0].serve_deployment_options("cuda")
    assert options == {
        "num_replicas": 3,
        "max_ongoing_requests": 64,
        "max_queued_requests": -1,
        "health_check_period_s": 10.0,
        "health_check_timeout_s": 60.0,
        "ray_actor_options": {"num_cpus": 1, "num_gpus": 1},
        "request_router_config": {
            "request_router_class": "autoscale.serve_router:KvAwareRequestRouter",
            "request_router_kwargs": {"block_size": 16, "max_num_seqs": 32},
            "request_routing_stats_period_s": 2.0,
        },
        "graceful_shutdown_timeout_s": 60.0,  # serve.drain_timeout_s
    }
    hpu = parse_config(one_model(device="hpu")).models[0].serve_deployment_options("cuda")
    assert hpu["ray_actor_options"] == {"num_cpus": 1, "resources": {"HPU": 1}}
    cpu = parse_config(one_model()).models[0].serve_deployment_options("cpu")
    assert cpu["ray_actor_options"] == {"num_cpus": 1} and "placement_group_bundles" not in cpu


@pytest.mark.parametrize(("device", "resource"), [("cpu", "CPU"), ("cuda", "GPU"), ("hpu", "HPU")])
def test_serve_options_for_tensor_parallel_replicas(device, resource):
    model = parse_config(one_model(tp_size=4, device=device)).models[0]
    options = model.serve_deployment_options()
    assert options["placement_group_bundles"] == [{resource: 1}] * 4
    assert options["placement_group_strategy"] == "STRICT_PACK"
    # The replica lives in bundle 0 next to rank 0 and must take nothing from it.
    assert options["ray_actor_options"] == {"num_cpus": 0}


def test_serve_options_for_autoscaling():
    # Ray Serve's default policy, selected: its options pass through as they were.
    autoscaling = {
        "policy": "ongoing_requests",
        "min_replicas": 0,
        "max_replicas": 4,
        "initial_replicas": 1,
    }
    model = parse_config(one_model(serve={"autoscaling": autoscaling})).models[0]
    options = model.serve_deployment_options("cpu")
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 4,
        "initial_replicas": 1,
        "target_ongoing_requests": 16.0,
    }


def test_slo_is_the_default_policy_and_serve_gets_its_class_and_kwargs():
    from ray.serve.config import AutoscalingConfig

    from autoscale.serve_autoscaling import POLICY_FUNCTION, SloAutoscalingPolicy

    serve = {
        "slo": {"ttft_s": 1.5, "tpot_s": 0.05},
        "autoscaling": {"max_replicas": 3, "downscale_delay_s": 30, "target_utilization": 0.8},
    }
    model = parse_config(one_model(engine={"max_num_seqs": 8}, serve=serve)).models[0]
    scaling = model.serve_deployment_options("cpu")["autoscaling_config"]
    # Serve's own delay logic stays out of the policy's way; reports come every second.
    assert scaling["downscale_delay_s"] == 0.0 and scaling["upscale_delay_s"] == 0.0
    assert scaling["metrics_interval_s"] == 1.0
    assert scaling["policy"]["policy_function"] == POLICY_FUNCTION
    with pytest.warns(DeprecationWarning, match="metrics_interval_s"):
        policy = AutoscalingConfig(**scaling).policy  # Serve accepts it (JSON kwargs)
    config = SloAutoscalingPolicy(**policy.policy_kwargs).config
    assert (config.min_replicas, config.max_replicas) == (1, 3)
    assert (config.ttft_s, config.tpot_s) == (1.5, 0.05)
    assert (config.downscale_delay_s, config.target_utilization) == (30, 0.8)
    assert (config.max_num_seqs, config.prefill_chunk_tokens) == (8, 2048)


def test_slo_knobs_are_validated_naming_the_field():
    bad_pair = {"max_replicas": 2, "target_utilization": 0.4, "scale_down_utilization": 0.6}
    (problem,) = problems_of(one_model(serve={"autoscaling": bad_pair}))
    assert problem.startswith("models.0.serve.autoscaling: ")
    assert "scale_down_utilization and target_utilization must satisfy" in problem
    assert problems_of(one_model(serve={"slo": {"ttft_s": 0}})) == [
        "models.0.serve.slo.ttft_s: Input should be greater than 0 (got 0)"
    ]
    ray_default = {"policy": "ongoing_requests", "max_replicas": 2, "demand_window_s": 60}
    (problem,) = problems_of(one_model(serve={"autoscaling": ray_default}))
    assert "demand_window_s: only for policy 'slo'" in problem
    (problem,) = problems_of(one_model(serve={"autoscaling": {"max_replicas": 2, "policy": "x"}}))
    assert problem.startswith("models.0.serve.autoscaling.policy: ")
    assert "'slo'" in problem and "'ongoing_requests'" in problem


def test_auto_device_needs_the_resolved_device():
    model = ModelConfig(name="m")
    with pytest.raises(ValueError, match="pass the resolved device, one of cpu, cuda, hpu"):
        model.serve_deployment_options()
    explicit = ModelConfig(name="m", device="cpu")
    assert explicit.serve_deployment_options("cuda")["ray_actor_options"] == {"num_cpus": 1}


def test_yaml_problems_become_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - name: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.problems[0].startswith("not valid YAML:")
    assert "line 2" in info.value.problems[0]

    duplicate = tmp_path / "dup.yaml"
    duplicate.write_text("models:\n  - name: a\n    name: b\n")
    with pytest.raises(ConfigError, match="found duplicate key 'name'"):
        load_config(duplicate)

    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="the config is empty"):
        load_config(empty)

    listing = tmp_path / "list.yaml"
    listing.write_text("- name: a\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listing)

    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "missing.yaml")


def test_config_error_message_lists_every_problem():
    with pytest.raises(ConfigError) as info:
        parse_config(one_model(tp_size=3, device="tpu"), source="x.yaml")
    message = str(info.value)
    assert message.startswith("invalid config x.yaml:\n")
    assert "models.0.tp_size: Input should be 1, 2, 4 or 8 (got 3)" in message
    assert "models.0.device: Input should be" in message
    assert isinstance(info.value, ValueError)


def test_importing_the_config_imports_neither_ray_nor_torch():
    code = (
        "import sys, deployments.config, cluster.commands.config; "
        "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_cli_config_check_valid_file_exits_0_with_a_summary(capsys):
    path = next(p for p in EXAMPLES if p.name == "two-models.yaml")
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "models (2):" in out
    assert "pycoder: path=bundled default" in out and "tp=1 replicas=1" in out
    assert "speculative=draft(k=4)" in out


def test_cli_config_check_summarises_tp_and_autoscaling(capsys):
    for name in ("tp2.yaml", "autoscaling.yaml"):
        assert main(["config", "check", str(next(p for p in EXAMPLES if p.name == name))]) == 0
    out = capsys.readouterr().out
    assert "tp=2 replicas=1" in out
    assert "replicas=autoscaling 1..4 (initial 1)" in out
    # The effective policy, defaults included (the example sets the SLO and one delay).
    assert "policy=slo(ttft_s=2, tpot_s=0.1, target_utilization=0.7," in out
    assert "downscale_delay_s=120," in out and "upscale_delay_s=0)" in out
    assert "admission=max_queue_wait_s=10 at 4 replica(s)" in out
    assert "drain_timeout_s=120 cold_start_timeout_s=600" in out
    assert "admission=off" in out  # tp2.yaml sets no limit


def test_cli_config_check_invalid_file_exits_2_listing_every_problem(tmp_path, capsys):
    path = tmp_path / "serve.yaml"
    path.write_text(
        "models:\n  - name: m\n    tp_size: 3\n    engine: {block_size: 7, colour: red}\n"
    )
    assert main(["config", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "3 problem(s)" in captured.err
    assert "models.0.tp_size: Input should be 1, 2, 4 or 8 (got 3)" in captured.err
    assert (
        "models.0.engine.block_size: Input should be 8, 16, 32, 64 or 128 (got 7)" in captured.err
    )
    assert "models.0.engine.colour: unknown key" in captured.err


def test_cli_config_check_missing_file_exits_2(tmp_path, capsys):
    assert main(["config", "check", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read the file" in capsys.readouterr().err


def test_cli_config_rejects_an_unknown_action(capsys):
    with pytest.raises(SystemExit) as info:
        main(["config", "lint", "x.yaml"])
    assert info.value.code == 2
    assert "invalid choice: 'lint'" in capsys.readouterr().err


def test_chosen_model_is_the_named_or_the_only_one():
    one = parse_config(one_model())
    assert one.chosen_model(None, "serve.yaml") is one.models[0]
    two = parse_config({"models": [{"name": "m"}, {"name": "b"}]})
    assert two.chosen_model("b", "serve.yaml").name == "b"
    with pytest.raises(ValueError, match=r"--model is needed: serve.yaml serves several \(m, b\)"):
        two.chosen_model(None, "serve.yaml")
    with pytest.raises(ValueError, match=r"--model: no model 'x'; served: m, b"):
        two.chosen_model("x", "serve.yaml")
