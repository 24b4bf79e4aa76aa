"""The checks that fail an impossible deployment before anything waits on it: from the
config alone, and against a cluster's node resources (given as data: no Ray here)."""

from __future__ import annotations

import doctest

import yaml

from cluster.commands import preflight
from cluster.commands.cli import main
from cluster.commands.preflight import (
    ReplicaDemand,
    cluster_problems,
    describe_nodes,
    replica_demand,
    static_problems,
)
from deployments.config import parse_config
from tests.deployments.serve_fixtures import model_entry

GIB = 1024**3
CPU_NODE = {"CPU": 4.0, "memory": 8.0 * GIB, "node:10.0.0.1": 1.0}
GAUDI_NODE = {"CPU": 64.0, "HPU": 8.0, "memory": 512.0 * GIB}


def config_of(*models: dict):
    return parse_config({"models": list(models)})


def test_a_tp_size_the_kv_heads_do_not_allow_is_a_static_problem(tiny_model_dir):
    model_dir = tiny_model_dir("llama")  # 2 KV heads
    ok = config_of(model_entry("a", model_dir) | {"tp_size": 2})
    assert static_problems(ok) == []
    bad = config_of(model_entry("a", model_dir) | {"tp_size": 4})
    (problem,) = static_problems(bad)
    assert problem.startswith("models.0.tp_size: model 'a' (")
    assert "has 2 KV heads, which tp_size 4 does not divide" in problem
    assert problem.endswith("valid tp_size values: [1, 2]")


def test_tp_for_a_family_tensor_parallelism_does_not_run_is_a_static_problem(tiny_model_dir):
    bad = config_of(model_entry("a", tiny_model_dir("phi3")) | {"tp_size": 2})
    (problem,) = static_problems(bad)
    assert problem.startswith("models.0.tp_size: model 'a' (")
    assert "is a phi3 model, which tensor parallelism does not run yet" in problem
    assert problem.endswith("valid tp_size values: [1]")


def test_a_model_folder_not_on_this_machine_is_skipped(tmp_path):
    data = {"models": [{"name": "far", "path": str(tmp_path / "elsewhere"), "tp_size": 8}]}
    assert static_problems(parse_config(data, check_paths=False)) == []


def test_config_check_reports_the_tp_problem(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "serve.yaml"
    entry = model_entry("a", tiny_model_dir("llama")) | {"tp_size": 4}
    path.write_text(yaml.safe_dump({"models": [entry]}))
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: 1 problem(s):" in err and "which tp_size 4 does not divide" in err


def test_replica_demand_is_what_serve_is_asked_for(tiny_model_dir):
    model_dir = tiny_model_dir("llama")
    hpu = config_of(model_entry("a", model_dir) | {"device": "hpu"}).models[0]
    assert replica_demand(hpu, "cpu") == ReplicaDemand("a", "hpu", 1, ({"CPU": 1, "HPU": 1},))
    auto_tp = config_of(model_entry("b", model_dir) | {"device": "auto", "tp_size": 2}).models[0]
    demand = replica_demand(auto_tp, "cuda")
    assert demand.bundles == ({"GPU": 1}, {"GPU": 1}) and demand.total == {"GPU": 2}
    assert demand.describe() == "2 x {'GPU': 1} on one node per replica"


def test_a_replica_no_node_can_hold_is_a_cluster_problem():
    hpu = ReplicaDemand("a", "hpu", 1, ({"CPU": 1, "HPU": 1},))
    (problem,) = cluster_problems([hpu], [CPU_NODE])
    assert problem == (
        "model 'a' (device hpu, tp_size 1) needs {'CPU': 1, 'HPU': 1} per replica, and the "
        "cluster has no HPU: 1 node(s): CPU 4, memory 8.0 GiB"
    )
    assert cluster_problems([hpu], [CPU_NODE, GAUDI_NODE]) == []

    wide = ReplicaDemand("b", "cpu", 8, tuple({"CPU": 1} for _ in range(8)))
    (problem,) = cluster_problems([wide], [CPU_NODE, CPU_NODE])  # 8 CPUs, not on one node
    assert "needs 8 x {'CPU': 1} on one node per replica, and no node is that big" in problem
    assert cluster_problems([wide], [GAUDI_NODE]) == []


def test_describe_nodes_names_the_accelerators():
    assert describe_nodes([CPU_NODE, GAUDI_NODE]) == (
        "2 node(s): CPU 4, memory 8.0 GiB | CPU 64, HPU 8, memory 512.0 GiB"
    )
    assert describe_nodes([]) == "no alive node"


def test_docstring_example_runs():
    result = doctest.testmod(preflight)
    assert result.attempted >= 1 and result.failed == 0
