"""`gaudi-serve config render` options for the pods: a model volume, CPU and memory per card.
(They need cluster/commands/config.py to pass them on to deployments.k8s.K8sOptions.)"""

from __future__ import annotations

from pathlib import Path

from cluster.commands.cli import main
from deployments.config import load_config
from deployments.k8s import K8sOptions, ModelVolume, render_manifests, to_yaml

REPO = Path(__file__).parents[2]
DEFAULT_EXAMPLE = REPO / "deployments" / "examples" / "default.yaml"


def test_render_mounts_a_model_volume_and_sizes_cards(capsys):
    args = ["--model-volume", "pvc:llama-weights", "--cpus-per-card", "12"]
    args += ["--memory-per-card", "96", "--namespace", "llm"]
    assert main(["config", "render", str(DEFAULT_EXAMPLE), *args]) == 0
    options = K8sOptions(
        namespace="llm",
        model_volume=ModelVolume("pvc", "llama-weights"),
        cpus_per_card=12,
        memory_gib_per_card=96,
    )
    config = load_config(DEFAULT_EXAMPLE, check_paths=False)
    assert capsys.readouterr().out == to_yaml(render_manifests(config, options))


def test_render_refuses_bad_pod_options_naming_them(capsys):
    cases = {
        ("--model-volume", "nfs:x"): "--model-volume kind must be one of pvc, hostPath",
        ("--model-volume", "hostPath:data"): "--model-volume hostPath must be an absolute path",
        ("--cpus-per-card", "0"): "--cpus-per-card must be at least 1",
        ("--memory-per-card", "-1"): "--memory-per-card must be at least 1",
    }
    for args, message in cases.items():
        assert main(["config", "render", str(DEFAULT_EXAMPLE), *args]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and message in captured.err


def test_check_refuses_render_only_options(capsys):
    assert main(["config", "check", str(DEFAULT_EXAMPLE), "--model-volume", "pvc:w"]) == 2
    assert "--model-volume only apply to render" in capsys.readouterr().err
