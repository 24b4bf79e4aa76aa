"""How LLMClient picks the Serve application (no Ray: `find_app` over a listing), and how
the ingress reads Serve's replica actor names."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deployments.client import APP_NAMES, INGRESS_DEPLOYMENT, AppNotFoundError, find_app
from deployments.replica_stats import parse_replica_name

OURS = [INGRESS_DEPLOYMENT, "pycoder"]


def test_ingress_deployment_name_is_the_ingress_class_name():
    from deployments.ingress import Ingress

    assert Ingress.name == INGRESS_DEPLOYMENT


@pytest.mark.parametrize("name", list(APP_NAMES.values()))
def test_the_one_gaudi_serve_app_is_found_whatever_the_command_named_it(name):
    assert find_app(None, {name: OURS, "other": ["Something"]}) == name


def test_a_named_app_must_be_running():
    assert find_app("default", {"default": OURS, "gaudi-serve": OURS}) == "default"
    with pytest.raises(AppNotFoundError, match=r"'gaudi-serve' is not running.*: 'default'$"):
        find_app("gaudi-serve", {"default": OURS})


def test_no_or_several_apps_are_errors_listing_what_runs():
    with pytest.raises(AppNotFoundError, match=r"usually 'gaudi-serve' \(gaudi-serve up\), "):
        find_app(None, {"other": ["Something"]})
    with pytest.raises(AppNotFoundError, match=r"running applications: none\."):
        find_app(None, {})
    with pytest.raises(AppNotFoundError, match=r"several .* \('gaudi-serve', 'default'\)"):
        find_app(None, {"gaudi-serve": OURS, "default": OURS})


def test_a_client_without_a_ray_connection_says_how_to_connect():
    code = (
        "import ray\n"
        "from deployments.client import LLMClient\n"
        "try:\n"
        "    LLMClient()\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
        "print(ray.is_initialized())\n"  # no new local cluster was started
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    message, initialized = result.stdout.splitlines()
    assert "call ray.init(address='auto') first" in message
    assert initialized == "False"


def test_replica_actor_names_are_parsed_per_application():
    name = "SERVE_REPLICA::gaudi-serve#tiny#abc123"
    assert parse_replica_name(name, "gaudi-serve") == ("tiny", "abc123")
    assert parse_replica_name(name, "default") == (None, None)
    assert parse_replica_name("SERVE_CONTROLLER_ACTOR", "gaudi-serve") == (None, None)
