"""The SLO policy's settings: errors name the field and the allowed values."""

from __future__ import annotations

import pytest

from autoscale.slo_config import SloPolicyConfig


def test_defaults_are_valid():
    config = SloPolicyConfig()
    assert config.scale_down_utilization < config.target_utilization


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"min_replicas": -1}, "min_replicas"),
        ({"min_replicas": 3, "max_replicas": 2}, "max_replicas"),
        ({"ttft_s": 0.0}, "ttft_s"),
        ({"tpot_s": float("nan")}, "tpot_s"),
        ({"downscale_delay_s": -1.0}, "downscale_delay_s"),
        ({"scale_down_utilization": 0.8}, "scale_down_utilization"),
        ({"kv_low": 0.9}, "kv_low"),
        ({"stuck_startup_factor": 1.0}, "stuck_startup_factor"),
        ({"max_scale_up_step": 0}, "max_scale_up_step"),
        ({"max_num_seqs": 0}, "max_num_seqs"),
    ],
)
def test_a_bad_setting_names_its_field(settings, field):
    with pytest.raises(ValueError, match=field):
        SloPolicyConfig(**settings)
