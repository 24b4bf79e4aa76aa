"""FP8 on Gaudi through Intel Neural Compressor: the contract. Without a Gaudi, INC's three
hardware-bound calls (prepare, finalize_calibration, convert) are replaced by a recorder,
as the fake bridge stands in for habana_frameworks; the FP8Config objects they receive are
INC's real ones, built by engine.quant.inc_fp8, and checked field by field against Intel's
documented Gaudi recipe (measure with the maxabs observer, then quantize with maxabs_hw
scales from the same dump_stats_path)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cluster.commands.cli import main
from engine.quant import inc_fp8
from engine.quant.calibration import CALIBRATION_PROMPTS


class FakeInc:
    """Records the calls INC would receive, in order; like the real finalize_calibration
    it writes the statistics file named after dump_stats_path."""

    def __init__(self):
        self.calls: list[tuple[str, object]] = []

    def prepare(self, model, config):
        self.calls.append(("prepare", config))
        # the real prepare wraps every Linear with observers: count the forwards instead
        model.register_forward_pre_hook(
            lambda m, args, kwargs: self._forward(kwargs), with_kwargs=True
        )
        return model

    def _forward(self, kwargs):
        self.calls.append(("forward", tuple(kwargs["input_ids"].shape)))

    def finalize_calibration(self, model):
        config = next(c for name, c in self.calls if name == "prepare")
        Path(config.dump_stats_path + "_hooks_maxabs.json").write_text("{}")
        self.calls.append(("finalize_calibration", None))

    def convert(self, model, config):
        self.calls.append(("convert", config))
        return model

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
def fake_inc(monkeypatch):
    import neural_compressor.torch.quantization as inc

    fake = FakeInc()
    for name in ("prepare", "finalize_calibration", "convert"):
        monkeypatch.setattr(inc, name, getattr(fake, name))
    return fake


def test_measurement_runs_every_prompt_between_prepare_and_finalize(
    fake_inc, tiny_model_dir, tmp_path
):
    out = tmp_path / "stats"
    prompts = ["def f(x):", "import os", "hello world, hello"]
    assert inc_fp8.measure_model(tiny_model_dir("llama"), out, prompts, device_name="cpu") == 3
    assert fake_inc.names() == ["prepare", "forward", "forward", "forward", "finalize_calibration"]
    config = fake_inc.calls[0][1]
    assert (config.mode, config.observer) == ("MEASURE", "maxabs")
    assert config.measure and not config.quantize
    assert config.dump_stats_path == str(out / "measure")
    assert config.blocklist == {"names": ["lm_head"], "types": []}
    assert config.fp8_config == "E4M3" and config.hp_dtype == "bf16"
    assert all(shape[0] == 1 for name, shape in fake_inc.calls if name == "forward")


def test_serving_converts_with_the_measured_statistics(fake_inc, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "stats"
    inc_fp8.measure_model(tiny_model_dir("llama"), out, ["a prompt"], device_name="cpu")
    fake_inc.calls.clear()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    assert inc_fp8.quantize_fp8_inc(model, out) is model
    ((name, config),) = fake_inc.calls
    assert name == "convert"
    assert (config.mode, config.observer, config.scale_method) == (
        "QUANTIZE",
        "maxabs",
        "maxabs_hw",
    )
    assert config.quantize and not config.measure
    assert config.dump_stats_path == str(out / "measure")  # the statistics just written
    assert config.blocklist == {"names": ["lm_head"], "types": []}


def test_serving_without_statistics_says_how_to_make_them(fake_inc, tmp_path):
    model = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match="needs quantization_stats"):
        inc_fp8.quantize_fp8_inc(model, None)
    with pytest.raises(FileNotFoundError, match="gaudi-serve quantize --model PATH --out DIR"):
        inc_fp8.quantize_fp8_inc(model, tmp_path)
    assert fake_inc.calls == []


def test_an_empty_measurement_is_refused(fake_inc, tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="at least one calibration prompt"):
        inc_fp8.measure_model(tiny_model_dir("llama"), tmp_path, [], device_name="cpu")
    assert "finalize_calibration" not in fake_inc.names()


def test_the_command_refuses_a_device_other_than_hpu(tiny_model_dir, tmp_path, capsys):
    model = str(tiny_model_dir("llama"))
    assert main(["quantize", "--model", model, "--out", str(tmp_path), "--device", "cpu"]) == 2
    assert "--device must be 'hpu'" in capsys.readouterr().err


def test_the_command_measures_the_default_prompts(fake_inc, monkeypatch, tiny_model_dir, tmp_path):
    """On a Gaudi the command runs measure_model on hpu; here on the CPU's torch device."""
    real = inc_fp8.measure_model
    monkeypatch.setattr(
        inc_fp8,
        "measure_model",
        lambda model, out, prompts, device, max_tokens: real(
            model, out, prompts, "cpu", max_tokens
        ),
    )
    out = tmp_path / "stats"
    assert main(["quantize", "--model", str(tiny_model_dir("llama")), "--out", str(out)]) == 0
    assert fake_inc.names().count("forward") == len(CALIBRATION_PROMPTS)
    assert list(out.glob("measure*"))
