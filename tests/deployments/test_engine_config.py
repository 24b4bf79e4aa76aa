"""Every engine option a user may set is reachable from the YAML config and reaches the
engine unchanged; allowed values and defaults come from the engine's own config classes."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING
from pathlib import Path

import pytest

from deployments.config import ConfigError, EngineOptions, ModelConfig, parse_config
from deployments.config_options import BucketOptions, SpeculativeOptions
from deployments.engine_config import MODEL_KEYS, NOT_IN_SERVING_CONFIG, engine_config_for
from engine.buckets import BUCKET_DIMS, STRATEGIES, BucketConfig
from engine.config import BLOCK_SIZE_CHOICES, DTYPE_CHOICES, EngineConfig
from engine.speculative.config import METHODS, SpeculativeConfig


def fields_of(config_class: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(config_class)}


def test_every_engine_config_field_is_set_from_the_yaml_or_listed_as_not_settable():
    engine_options = set(EngineOptions.model_fields)
    model_keys = set(ModelConfig.model_fields)
    for name in fields_of(EngineConfig):
        reachable = name in engine_options or MODEL_KEYS.get(name) in model_keys
        assert reachable or name in NOT_IN_SERVING_CONFIG, f"EngineConfig.{name} is unreachable"
    # and nothing in `engine:` that the engine does not take
    assert engine_options <= set(fields_of(EngineConfig))


def test_every_speculative_config_field_is_a_yaml_option_and_back():
    assert set(SpeculativeOptions.model_fields) == set(fields_of(SpeculativeConfig))


def test_allowed_values_and_defaults_come_from_the_engine():
    def choices(model, name):
        return typing.get_args(model.model_fields[name].annotation)

    assert choices(ModelConfig, "dtype") == DTYPE_CHOICES
    assert choices(EngineOptions, "block_size") == BLOCK_SIZE_CHOICES
    assert choices(BucketOptions, "strategy") == STRATEGIES
    assert choices(SpeculativeOptions, "method") == METHODS
    assert set(BUCKET_DIMS) <= set(BucketOptions.model_fields)
    for model, config_class in (
        (EngineOptions, EngineConfig),
        (SpeculativeOptions, SpeculativeConfig),
        (BucketOptions, BucketConfig),
    ):
        defaults = fields_of(config_class)
        for name, field in model.model_fields.items():
            # required keys (speculative.method) and nested models have no plain default
            is_plain_default = not field.is_required() and field.default_factory is None
            if is_plain_default and name in defaults and defaults[name].default is not MISSING:
                assert field.default == defaults[name].default, f"{model.__name__}.{name}"


def test_every_option_reaches_the_engine(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("llama")
    engine = {
        "max_num_seqs": 4,
        "max_model_len": 256,
        "block_size": 8,
        "kv_cache_tokens": 512,
        "kv_cache_memory_fraction": 0.5,
        "max_num_batched_tokens": 128,
        "enable_prefix_caching": False,
        "strict_shapes": True,
        "warmup": False,
        "enable_graphs": False,
        "seed": 7,
    }
    speculative = {
        "method": "hybrid",
        "num_speculative_tokens": 3,
        "draft_model": str(model_dir),
        "prompt_lookup_min": 2,
        "prompt_lookup_max": 5,
        "adaptive": False,
    }
    entry = {
        "name": "m",
        "path": str(model_dir),
        "tokenizer": str(model_dir),
        "dtype": "bfloat16",
        "tp_size": 2,
        "engine": engine,
        "speculative": speculative,
    }
    config = engine_config_for(parse_config({"models": [entry]}).models[0], "cpu")
    assert {name: getattr(config, name) for name in engine} == engine
    assert dataclasses.asdict(config.speculative) == speculative
    assert (config.model, config.tokenizer) == (str(model_dir), str(model_dir))
    assert (config.device, config.dtype, config.tp_size) == ("cpu", "bfloat16", 2)


def test_a_speculative_setting_the_engine_cannot_honour_is_an_error_naming_the_field():
    lookup = {"method": "ngram", "prompt_lookup_min": 4, "prompt_lookup_max": 2}
    with pytest.raises(ConfigError) as info:
        parse_config({"models": [{"name": "m", "speculative": lookup}]})
    assert info.value.problems == [
        "models.0.speculative: prompt_lookup_max must be an integer in [4, 64], got 2"
    ]


def test_hybrid_takes_a_draft_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    hybrid = {"method": "hybrid", "draft_model": str(tmp_path)}
    spec = parse_config({"models": [{"name": "m", "speculative": hybrid}]}).models[0].speculative
    assert spec.resolved_draft_model() == Path(tmp_path)
    assert spec.to_engine().draft_model == str(tmp_path)


def test_a_draft_named_by_a_provided_model_runs_from_its_folder(monkeypatch, tmp_path):
    from engine.assets import default_model_path
    from engine.loader import resolve_model_path

    monkeypatch.chdir(tmp_path)  # no folder of that name here: the name is meant
    draft = {"method": "draft", "draft_model": "pycoder-draft"}
    model = parse_config({"models": [{"name": "pycoder", "speculative": draft}]}).models[0]
    bundled = default_model_path("pycoder-draft")
    assert model.speculative.resolved_draft_model() == bundled
    assert engine_config_for(model, "cpu").speculative.draft_model == str(bundled)
    assert resolve_model_path("pycoder-draft") == bundled  # the offline engine's way in

    unknown = {"method": "draft", "draft_model": "no-such-draft"}
    with pytest.raises(ConfigError) as info:
        parse_config({"models": [{"name": "m", "speculative": unknown}]})
    (problem,) = info.value.problems
    assert problem.startswith("models.0.speculative.draft_model: ")
    assert "no-such-draft is not a directory" in problem
    with pytest.raises(
        FileNotFoundError, match=r"nor a model gaudi-serve provides .*pycoder-draft"
    ):
        resolve_model_path("no-such-draft")
