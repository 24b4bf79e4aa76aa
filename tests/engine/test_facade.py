"""The `engine` facade: every exported name resolves, and the light ones load no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

import engine

# What an ingress, a client and the serving config import: none of it may load torch.
LIGHT_NAMES = (
    "BlockEvent",
    "BlockEventBatch",
    "PromptEncoder",
    "StepKind",
    "StepRecord",
    "load_prompt_encoder",
    "truncate_prompt",
    "BLOCK_EVICTED",
    "BLOCK_SIZE_CHOICES",
    "BLOCK_STORED",
    "BUCKET_DIMS",
    "BUCKET_STRATEGIES",
    "DEFAULT_MODEL_NAME",
    "FALLBACK_MODEL_NAME",
    "MODEL_NAMES",
    "BucketConfig",
    "BucketRange",
    "DEVICE_CHOICES",
    "DTYPE_CHOICES",
    "EmptyPromptError",
    "EngineConfig",
    "EngineDeadError",
    "EngineStats",
    "MAX_SPECULATIVE_TOKENS",
    "METRIC_COUNTER",
    "METRIC_GAUGE",
    "PromptTooLongError",
    "SPECULATIVE_METHODS",
    "SamplingParams",
    "SpeculativeConfig",
    "default_draft_model_path",
    "default_model_path",
    "is_bucket_values",
    "prefix_block_hashes",
    "resolve_max_model_len",
)


@pytest.mark.parametrize("name", engine.__all__)
def test_every_exported_name_resolves(name):
    assert getattr(engine, name) is not None
    assert name in dir(engine)


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        engine.Nope  # noqa: B018


def test_sampling_params_and_errors_load_no_torch():
    code = (
        "import engine, sys\n"
        "from engine import EngineDeadError, SamplingParams\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_side_names_load_no_torch():
    code = (
        "import sys\n"
        f"from engine import {', '.join(LIGHT_NAMES)}\n"
        "from engine.devices import resolve_device_name\n"
        "assert resolve_device_name('cpu') == 'cpu'\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_renamed_exports_are_the_defining_modules_values():
    from engine.bucket_ranges import STRATEGIES
    from engine.speculative.config import METHODS
    from engine.stats import COUNTER, GAUGE

    assert engine.BUCKET_STRATEGIES is STRATEGIES
    assert engine.SPECULATIVE_METHODS is METHODS
    assert (engine.METRIC_COUNTER, engine.METRIC_GAUGE) == (COUNTER, GAUGE)
