"""build_app: the application of a config, `serve run deployments.app:app` from
GAUDI_SERVE_CONFIG, and a tensor-parallel (tp_size=2) model served over HTTP."""

from __future__ import annotations

import httpx
import pytest
import yaml
from ray.serve import Application

import deployments.app as app_module
from deployments.app import build_app, cluster_device
from deployments.config import parse_config
from engine import SamplingParams
from tests.deployments.serve_fixtures import model_entry, offline_llm, running_app


def test_build_app_binds_one_deployment_per_model(tiny_model_dir):
    config = parse_config(
        {
            "models": [
                model_entry("a", tiny_model_dir("llama")),
                model_entry("b/c", tiny_model_dir("llama")),
            ]
        }
    )
    application = build_app(config, device="cpu")
    assert isinstance(application, Application)
    ingress = application._bound_deployment  # the graph's root: the Ingress
    servers, default_model, *_ = ingress.init_args
    assert default_model == "a"
    assert {name: bound._bound_deployment.name for name, bound in servers.items()} == {
        "a": "a",
        "b/c": "b/c",
    }
    options = servers["a"]._bound_deployment.ray_actor_options
    assert options["num_cpus"] == 1  # a tp_size 1 CPU replica runs its engine itself


def test_module_level_app_reads_gaudi_serve_config(tiny_model_dir, tmp_path, monkeypatch):
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"models": [model_entry("m", tiny_model_dir("llama"))]}))
    monkeypatch.setenv("GAUDI_SERVE_CONFIG", str(path))
    monkeypatch.delitem(vars(app_module), "app", raising=False)
    application = app_module.app  # built on first access
    assert isinstance(application, Application)
    assert list(application._bound_deployment.init_args[0]) == ["m"]
    monkeypatch.delitem(vars(app_module), "app")


@pytest.mark.parametrize(("env", "device"), [("hpu", "hpu"), ("CUDA", "cuda"), ("auto", "cpu")])
def test_module_level_app_reads_gaudi_serve_device(
    env, device, tiny_model_dir, tmp_path, monkeypatch
):
    # The Kubernetes manifests set GAUDI_SERVE_DEVICE: the head may build the app before
    # any accelerator pod joins, so `device: auto` must not be probed there.
    entry = {**model_entry("m", tiny_model_dir("llama")), "device": "auto"}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"models": [entry]}))
    monkeypatch.setenv("GAUDI_SERVE_CONFIG", str(path))
    monkeypatch.setenv("GAUDI_SERVE_DEVICE", env)
    monkeypatch.delitem(vars(app_module), "app", raising=False)
    servers = app_module.app._bound_deployment.init_args[0]
    assert servers["m"]._bound_deployment.init_args[1] == device
    monkeypatch.delitem(vars(app_module), "app")


def test_bad_gaudi_serve_device_names_the_variable_and_the_devices(monkeypatch):
    from cluster.env import serve_device

    monkeypatch.setenv("GAUDI_SERVE_DEVICE", "tpu")
    with pytest.raises(ValueError, match=r"GAUDI_SERVE_DEVICE must be one of \['auto', 'cpu'"):
        serve_device()


def test_bad_gaudi_serve_config_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("GAUDI_SERVE_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="GAUDI_SERVE_CONFIG"):
        app_module.config_from_env()


def test_cluster_device_without_ray_is_this_machines():
    assert cluster_device() == "cpu"


def test_tp2_model_serves_the_same_tokens_as_one_card(tiny_model_dir):
    model_dir = tiny_model_dir("llama")
    entry = {**model_entry("tp2", model_dir), "tp_size": 2}
    llm = offline_llm(model_dir)
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    expected = llm.generate(["def f(x):"], params)[0].text
    llm.shutdown()
    with running_app([entry], num_cpus=4) as url:
        body = {"model": "tp2", "prompt": "def f(x):", "max_tokens": 8, "temperature": 0}
        r = httpx.post(f"{url}/v1/completions", json={**body, "ignore_eos": True}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == expected
        info = httpx.get(f"{url}/info", timeout=30).json()
        assert info["model_id"] == "tp2"
