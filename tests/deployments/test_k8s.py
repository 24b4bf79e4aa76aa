"""The Kubernetes rendering (deployments.k8s), `gaudi-serve config render`, and the checked-in
k8s/ tree. No cluster, no kubectl: manifests are checked as data, and kustomize overlays are
applied to the base with a small RFC 6902 applier written here."""

from __future__ import annotations

import ast
import copy
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.commands.cli import main
from deployments.config import ConfigError, ServeConfig, load_config, parse_config
from deployments.k8s import (
    ACCELERATORS,
    CONFIG_PATH,
    IMPORT_PATH,
    READY_TIMEOUT_ANNOTATION,
    K8sOptions,
    ModelVolume,
    plan_worker_groups,
    ready_timeout_s,
    relative_path_problems,
    render_manifests,
    to_yaml,
)
from deployments.k8s.kustomize import json_patch, render_kustomize_tree
from deployments.k8s.readiness import (
    BASE_READY_TIMEOUT_S,
    READY_TIMEOUT_S_PER_BILLION_PER_RANK,
    UNKNOWN_MODEL_READY_TIMEOUT_S,
)

REPO = Path(__file__).parents[2]
EXAMPLES = sorted((REPO / "deployments" / "examples").glob("*.yaml"))
DEFAULT_EXAMPLE = REPO / "deployments" / "examples" / "default.yaml"
K8S_DIR = REPO / "k8s"
REGENERATE = "gaudi-serve config render deployments/examples/default.yaml --kustomize k8s"
CARD_RESOURCES = {"habana.ai/gaudi", "nvidia.com/gpu"}
DSHM_NEED_PER_RANK_MIB = 66  # DeepSpeed's CPU all-reduce buffer (STACK-NOTES)
# deployments/k8s/ modules in dependency order: each imports only those before it.
K8S_MODULES = [
    "accelerators",
    "volumes",
    "options",
    "plan",
    "readiness",
    "pods",
    "render",
    "kustomize",
]
# Llama-3-70B's dimensions (config.json only, no weights).
LLAMA_70B = {
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}


def render(config: ServeConfig, **options) -> tuple[dict, dict]:
    config_map, ray_service = render_manifests(config, K8sOptions(**options))
    return config_map, ray_service


def pod_specs(ray_service: dict) -> dict[str, dict]:
    """group name ("head" for the head) -> pod spec."""
    cluster = ray_service["spec"]["rayClusterConfig"]
    specs = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    for group in cluster["workerGroupSpecs"]:
        specs[group["groupName"]] = group["template"]["spec"]
    return specs


def workers(ray_service: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in ray_service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def env_of(container: dict) -> dict[str, str]:
    names = [item["name"] for item in container["env"]]
    assert len(names) == len(set(names)), f"repeated env names: {names}"
    return {item["name"]: item["value"] for item in container["env"]}


def gib(quantity: str) -> int:
    assert quantity.endswith("Gi"), quantity
    return int(quantity[:-2])


def config_of(*models: dict, port: int = 8000) -> ServeConfig:
    return parse_config({"http": {"port": port}, "models": list(models)}, check_paths=False)


def apply_json_patch(document: dict, ops: list[dict]) -> dict:
    """RFC 6902 add/remove/replace (enough for kustomize's JSON6902 patches used here)."""
    document = copy.deepcopy(document)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        *parents, last = parts
        target = document
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        key = int(last) if isinstance(target, list) else last
        if op["op"] == "remove":
            del target[key]
        elif op["op"] == "replace":
            assert isinstance(target, list) or key in target, f"replace of a missing {op['path']}"
            target[key] = op["value"]
        elif op["op"] == "add" and isinstance(target, list):
            target.insert(key, op["value"])
        elif op["op"] == "add":
            target[key] = op["value"]
        else:
            raise AssertionError(f"unexpected op {op}")
    return document


# -- the manifests -------------------------------------------------------------------------


@pytest.mark.parametrize("accelerator", list(ACCELERATORS))
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_renders_for_every_accelerator(example, accelerator):
    config = load_config(example, check_paths=False)
    docs = render_manifests(config, K8sOptions(accelerator=accelerator))
    assert list(yaml.safe_load_all(to_yaml(docs))) == docs  # the YAML text says the same
    config_map, ray_service = docs
    assert (config_map["apiVersion"], config_map["kind"]) == ("v1", "ConfigMap")
    assert (ray_service["apiVersion"], ray_service["kind"]) == ("ray.io/v1", "RayService")
    cluster = ray_service["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}  # KubeRay sets RAY_AUTH_* itself
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"

    for group, spec in pod_specs(ray_service).items():
        (container,) = spec["containers"]
        assert container["name"] == ("ray-head" if group == "head" else "ray-worker")
        assert container["image"] == f"gaudi-serve:{accelerator}"
        env = env_of(container)
        assert env["GAUDI_SERVE_CONFIG"] == CONFIG_PATH
        assert env["GAUDI_SERVE_DEVICE"] == ACCELERATORS[accelerator].device
        assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & set(env)
        assert {"name": "serve", "containerPort": config.http.port} in container["ports"]
        resources = container["resources"]
        assert resources["requests"] == resources["limits"], group
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        dshm = volumes[mounts["/dev/shm"]]["emptyDir"]
        assert dshm["medium"] == "Memory"
        assert gib(dshm["sizeLimit"]) == gib(resources["limits"]["memory"])
        config_volume = volumes[mounts[str(Path(CONFIG_PATH).parent)]]
        assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]
        if group == "head":
            assert not CARD_RESOURCES & set(resources["limits"])


@pytest.mark.parametrize("accelerator", list(ACCELERATORS))
def test_worker_pods_ask_for_their_accelerator_and_declare_it_to_ray(accelerator):
    config = config_of(
        {"name": "big", "tp_size": 4, "serve": {"num_replicas": 2}},
        {"name": "small", "serve": {"num_replicas": 3}},
    )
    _, ray_service = render(config, accelerator=accelerator)
    profile = ACCELERATORS[accelerator]
    (group,) = workers(ray_service).values()
    assert group["groupName"] == f"{accelerator}-workers"
    # 4 cards per pod (the largest TP group); 2*4 + 3*1 = 11 cards -> 3 pods
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 3
    (container,) = group["template"]["spec"]["containers"]
    limits = container["resources"]["limits"]
    assert limits["cpu"] == str(4 * profile.num_cpus_per_card)
    assert gib(limits["memory"]) * 1024 >= 4 * DSHM_NEED_PER_RANK_MIB
    params = group["rayStartParams"]
    tolerations = group["template"]["spec"].get("tolerations", [])
    if accelerator == "gaudi":
        assert limits["habana.ai/gaudi"] == "4" and "nvidia.com/gpu" not in limits
        assert params == {"resources": "'{\"HPU\": 4}'"}
        assert env_of(container)["PT_HPU_LAZY_MODE"] == "1"
        assert container["securityContext"] == {"capabilities": {"add": ["SYS_NICE"]}}
        assert tolerations == [
            {"key": "habana.ai/gaudi", "operator": "Exists", "effect": "NoSchedule"}
        ]
    elif accelerator == "nvidia":
        assert limits["nvidia.com/gpu"] == "4" and "habana.ai/gaudi" not in limits
        assert params == {"num-gpus": "4"}
        assert tolerations[0]["key"] == "nvidia.com/gpu"
    else:
        assert not CARD_RESOURCES & set(limits) and tolerations == []
        assert params == {"num-cpus": "4"}  # one Ray CPU per TP rank slot
        assert "PT_HPU_LAZY_MODE" not in env_of(container)


def test_cards_per_pod_fit_the_largest_tp_group_of_each_device():
    config = config_of(
        {"name": "a", "tp_size": 8},
        {"name": "b", "device": "cpu", "tp_size": 2, "serve": {"num_replicas": 3}},
        {"name": "c", "device": "cuda", "tp_size": 2},
    )
    plans = {plan.group_name: plan for plan in plan_worker_groups(config, "gaudi")}
    assert [p.profile.name for p in plans.values()] == ["gaudi", "nvidia", "cpu"]
    assert plans["gaudi-workers"].model_names == ("a",)
    assert plans["gaudi-workers"].num_cards_per_pod == 8
    assert plans["cpu-workers"].num_cards_per_pod == 2 and plans["cpu-workers"].num_pods == 3
    assert plans["nvidia-workers"].num_cards_per_pod == 2
    for model in config.models:
        plan = next(p for p in plans.values() if model.name in p.model_names)
        assert plan.num_cards_per_pod >= model.tp_size
    # on a CPU cluster "auto" joins the explicit cpu model's group
    (cpu,) = (p for p in plan_worker_groups(config, "cpu") if p.profile.name == "cpu")
    assert cpu.model_names == ("a", "b") and cpu.num_cards_per_pod == 8
    assert cpu.num_pods == math.ceil((8 + 3 * 2) / 8)


def test_autoscaling_sizes_the_group_between_min_and_max_and_enables_the_autoscaler():
    autoscaling = next(p for p in EXAMPLES if p.name == "autoscaling.yaml")
    _, ray_service = render(load_config(autoscaling, check_paths=False))
    assert ray_service["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    (group,) = workers(ray_service).values()
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (1, 1, 4)

    scaling = {"min_replicas": 0, "initial_replicas": 1, "max_replicas": 3}
    config = config_of(
        {"name": "scaled", "tp_size": 2, "serve": {"autoscaling": scaling}},
        {"name": "fixed", "serve": {"num_replicas": 2}},
    )
    (group,) = workers(render(config)[1]).values()
    # 2 cards per pod: min (0*2 + 2) / 2 = 1, initial (1*2 + 2) / 2 = 2, max (3*2 + 2) / 2 = 4
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (1, 2, 4)


def test_fixed_replicas_leave_the_autoscaler_off():
    _, ray_service = render(load_config(DEFAULT_EXAMPLE, check_paths=False))
    assert "enableInTreeAutoscaling" not in ray_service["spec"]["rayClusterConfig"]
    (group,) = workers(ray_service).values()
    assert group["minReplicas"] == group["replicas"] == group["maxReplicas"] == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own pydantic v1-isms
def test_serve_config_v2_runs_deployments_app_on_the_configs_port():
    from ray.serve.schema import ServeDeploySchema  # validation only; Ray is not started

    for example in EXAMPLES:
        config = load_config(example, check_paths=False)
        _, ray_service = render(config, accelerator="nvidia")
        serve_config = yaml.safe_load(ray_service["spec"]["serveConfigV2"])
        schema = ServeDeploySchema.model_validate(serve_config)
        (app,) = schema.applications
        assert (app.import_path, app.route_prefix) == (IMPORT_PATH, "/")
        assert app.runtime_env["env_vars"] == {
            "GAUDI_SERVE_CONFIG": CONFIG_PATH,
            "GAUDI_SERVE_DEVICE": "cuda",
        }
        # Serve listens on every interface in the pod, on the config's port
        assert (schema.http_options.host, schema.http_options.port) == ("0.0.0.0", config.http.port)
        assert "deployments" not in serve_config["applications"][0]  # the app reads the config


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_the_config_reaches_the_pods_unchanged(example):
    source = load_config(example, check_paths=False)
    config_map, _ = render(source)
    (key,) = config_map["data"]
    assert f"{Path(CONFIG_PATH).parent}/{key}" == CONFIG_PATH
    delivered = parse_config(yaml.safe_load(config_map["data"][key]), check_paths=False)
    assert delivered == source


def test_a_config_with_every_kind_of_option_round_trips(tmp_path):
    data = {
        "http": {"host": "0.0.0.0", "port": 9000},
        "models": [
            {
                "name": "llama/70b",
                "path": "/models/llama-70b",
                "device": "hpu",
                "dtype": "bfloat16",
                "tp_size": 8,
                "engine": {
                    "max_model_len": 8192,
                    "kv_cache_memory_fraction": 0.85,
                    "buckets": {
                        "decode_batch_sizes": [1, 8, 32],
                        "prefill_lengths": {"min": 128, "max": 4096},
                    },
                },
                "speculative": {"method": "draft", "draft_model": "/models/llama-1b"},
                "serve": {"autoscaling": {"min_replicas": 0, "max_replicas": 2}},
            }
        ],
    }
    source = parse_config(data, check_paths=False)
    config_map, ray_service = render(source, accelerator="cpu")
    delivered = parse_config(yaml.safe_load(config_map["data"]["serve.yaml"]), check_paths=False)
    assert delivered == source
    assert list(workers(ray_service)) == ["gaudi-workers"]  # explicit device wins


def test_the_configmap_name_follows_the_config_content():
    first = render(config_of({"name": "m"}))[0]["metadata"]["name"]
    assert first == render(config_of({"name": "m"}))[0]["metadata"]["name"]
    assert first != render(config_of({"name": "m", "tp_size": 2}))[0]["metadata"]["name"]
    assert first.startswith("gaudi-serve-config-")


def test_options_set_image_namespace_and_name_everywhere():
    options = {"image": "registry.example/gs:1.2", "namespace": "llm", "name": "coder"}
    config_map, ray_service = render(config_of({"name": "m"}), **options)
    for doc in (config_map, ray_service):
        assert doc["metadata"]["namespace"] == "llm"
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == "coder"
    assert ray_service["metadata"]["name"] == "coder"
    assert config_map["metadata"]["name"].startswith("coder-config-")
    for spec in pod_specs(ray_service).values():
        assert spec["containers"][0]["image"] == "registry.example/gs:1.2"


def test_bad_options_and_ports_are_refused_naming_what_is_wrong():
    with pytest.raises(ValueError, match=r"^name must be lowercase"):
        K8sOptions(name="Gaudi_Serve")
    with pytest.raises(ValueError, match=r"^namespace must be"):
        K8sOptions(namespace="-x")
    with pytest.raises(ValueError, match="accelerator must be one of gaudi, nvidia, cpu"):
        K8sOptions(accelerator="tpu")
    with pytest.raises(ConfigError) as info:
        render(config_of({"name": "m"}, port=8265))
    assert info.value.problems[0].startswith("http.port: 8265 is taken by Ray in the pods")


def test_relative_model_paths_are_reported_by_field():
    data = {
        "models": [
            {"name": "a", "path": "/models/a"},
            {
                "name": "b",
                "path": "models/b",
                "tokenizer": "tok",
                "speculative": {"method": "draft", "draft_model": "d"},
            },
        ]
    }
    problems = relative_path_problems(data)
    assert [p.split(":")[0] for p in problems] == [
        "models.1.path",
        "models.1.tokenizer",
        "models.1.speculative.draft_model",
    ]


def test_json_patch_turns_one_document_into_the_other():
    old = {"a": {"b": 1, "gone": 2}, "list": [{"x": 1}, {"x": 2}], "short": [1]}
    new = {"a": {"b": 3, "new/key": 4}, "list": [{"x": 1}, {"x": 5}], "short": [1, 2]}
    ops = json_patch(old, new)
    assert {"op": "add", "path": "/a/new~1key", "value": 4} in ops
    assert {"op": "replace", "path": "/list/1/x", "value": 5} in ops
    assert {"op": "replace", "path": "/short", "value": [1, 2]} in ops
    assert apply_json_patch(old, ops) == new
    assert json_patch(new, new) == []


# -- model volume, resources per card, readiness ------------------------------------------


@pytest.mark.parametrize(
    ("spec", "volume"),
    [
        (
            "pvc:llama-weights",
            {"persistentVolumeClaim": {"claimName": "llama-weights", "readOnly": True}},
        ),
        (
            "hostPath:/data/models:/weights",
            {"hostPath": {"path": "/data/models", "type": "Directory"}},
        ),
    ],
)
def test_a_model_volume_is_mounted_read_only_in_every_pod(spec, volume):
    model_volume = ModelVolume.parse(spec)
    config = config_of({"name": "m", "path": f"{model_volume.mount_path}/llama", "tp_size": 2})
    for accelerator in ACCELERATORS:
        _, ray_service = render(config, accelerator=accelerator, model_volume=model_volume)
        for spec_of_pod in pod_specs(ray_service).values():  # the head too: it builds the app
            assert {"name": "models", **volume} in spec_of_pod["volumes"]
            (container,) = spec_of_pod["containers"]
            mount = {"name": "models", "mountPath": model_volume.mount_path, "readOnly": True}
            assert mount in container["volumeMounts"]
    _, plain = render(config)
    for spec_of_pod in pod_specs(plain).values():
        assert "models" not in {v["name"] for v in spec_of_pod["volumes"]}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nfs:server", "kind must be one of pvc, hostPath, got 'nfs'"),
        ("pvc:", "model-volume must be pvc:CLAIM[:MOUNT] or hostPath:/NODE/PATH[:MOUNT]"),
        ("pvc:Bad_Claim", "claim must be lowercase letters"),
        ("hostPath:data/models", "hostPath must be an absolute path"),
        ("pvc:w:models", "mount path must be an absolute path"),
        ("pvc:w:/", "'/' overlaps ['/etc/gaudi-serve', '/dev/shm']"),
        ("pvc:w:/etc", "overlaps ['/etc/gaudi-serve']"),
        ("hostPath:/m:/dev/shm/models", "overlaps ['/dev/shm']"),
    ],
)
def test_bad_model_volumes_are_refused_naming_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=r"^model-volume") as info:
        ModelVolume.parse(spec)
    assert message in str(info.value)


def test_cpus_and_memory_per_card_are_options_of_the_worker_pods():
    config = config_of({"name": "m", "tp_size": 4})
    for accelerator in ACCELERATORS:
        _, ray_service = render(
            config, accelerator=accelerator, cpus_per_card=12, memory_gib_per_card=96
        )
        (group,) = workers(ray_service).values()
        spec = group["template"]["spec"]
        (container,) = spec["containers"]
        assert container["resources"]["limits"]["cpu"] == str(4 * 12)
        assert container["resources"]["limits"]["memory"] == f"{4 * 96}Gi"
        assert container["resources"]["requests"] == container["resources"]["limits"]
        dshm = next(v for v in spec["volumes"] if v["name"] == "dshm")
        assert dshm["emptyDir"]["sizeLimit"] == f"{4 * 96}Gi"
        head = pod_specs(ray_service)["head"]["containers"][0]["resources"]["limits"]
        assert head["cpu"] == "2" and head["memory"] == "8Gi"  # the head holds no card
    _, default = render(config, accelerator="gaudi", memory_gib_per_card=32)
    limits = workers(default)["gaudi-workers"]["template"]["spec"]["containers"][0]["resources"]
    assert limits["limits"]["cpu"] == str(4 * ACCELERATORS["gaudi"].num_cpus_per_card)


def test_bad_per_card_resources_are_refused_naming_the_option():
    with pytest.raises(ValueError, match=r"^cpus-per-card must be at least 1, got 0"):
        K8sOptions(cpus_per_card=0)
    with pytest.raises(ValueError, match=r"^memory-per-card must be a whole number, got 1.5"):
        K8sOptions(memory_gib_per_card=1.5)


def model_folder(path: Path, dims: dict) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(dims))
    return path


def test_ready_timeout_follows_the_parameters_each_tp_rank_holds(tmp_path):
    from sharding.model_spec import ModelSpec

    big = model_folder(tmp_path / "llama-70b", LLAMA_70B)
    num_params = ModelSpec.from_path(big).num_params
    expected = {
        tp_size: BASE_READY_TIMEOUT_S
        + READY_TIMEOUT_S_PER_BILLION_PER_RANK * math.ceil(num_params / tp_size / 1e9)
        for tp_size in (4, 8)
    }
    assert expected[8] == 1140  # the worked example of deployments.k8s.readiness
    for tp_size, timeout_s in expected.items():
        assert ready_timeout_s(config_of({"name": "m", "path": str(big), "tp_size": tp_size})) == (
            timeout_s
        )
    # the slowest model sets the deployment's timeout; the bundled model needs the least
    both = config_of({"name": "big", "path": str(big), "tp_size": 8}, {"name": "small"})
    assert ready_timeout_s(both) == 1140
    assert ready_timeout_s(config_of({"name": "small"})) == BASE_READY_TIMEOUT_S + 60
    # a folder that is not readable here (in the image, on the cluster's volume)
    elsewhere = config_of({"name": "m", "path": "/models/not-on-this-machine"})
    assert ready_timeout_s(elsewhere) == UNKNOWN_MODEL_READY_TIMEOUT_S


def test_a_provided_model_not_prepared_here_gets_the_unknown_timeout(monkeypatch, tmp_path):
    monkeypatch.setenv("GAUDI_SERVE_MODELS_DIR", str(tmp_path / "nothing-prepared"))
    config = config_of({"name": "smollm2-135m-instruct"})
    assert ready_timeout_s(config) == UNKNOWN_MODEL_READY_TIMEOUT_S


def test_a_draft_model_counts_with_its_target(tmp_path):
    big = model_folder(tmp_path / "target", LLAMA_70B)
    draft = model_folder(tmp_path / "draft", {**LLAMA_70B, "num_hidden_layers": 8})
    target_only = ready_timeout_s(config_of({"name": "m", "path": str(big), "tp_size": 8}))
    with_draft = config_of(
        {
            "name": "m",
            "path": str(big),
            "tp_size": 8,
            "speculative": {"method": "draft", "draft_model": str(draft)},
        }
    )
    assert ready_timeout_s(with_draft) == target_only + READY_TIMEOUT_S_PER_BILLION_PER_RANK


def test_the_ready_timeout_is_written_on_the_rayservice():
    config = load_config(DEFAULT_EXAMPLE, check_paths=False)
    config_map, ray_service = render(config)
    annotations = ray_service["metadata"]["annotations"]
    assert annotations == {READY_TIMEOUT_ANNOTATION: f"{ready_timeout_s(config)}s"}
    assert "annotations" not in config_map["metadata"]


def test_the_k8s_package_has_no_import_circle():
    folder = REPO / "deployments" / "k8s"
    assert {p.stem for p in folder.glob("*.py")} == {"__init__", *K8S_MODULES}
    for index, name in enumerate(K8S_MODULES):
        tree = ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))
        imported = {
            node.module.removeprefix("deployments.k8s.")
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and node.module is not None
            and node.module.startswith("deployments.k8s")
        }
        assert imported <= set(K8S_MODULES[:index]), f"{name} imports {imported}"


# -- the docs --------------------------------------------------------------------------------


def command_lines(text: str) -> list[str]:
    """Shell lines of a Markdown text (backslash continuations joined) that start with
    `gaudi-serve` or `kubectl`: commands in code blocks, not mentions in prose."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = (line.strip() for line in joined.splitlines())
    return [line for line in lines if line.startswith(("gaudi-serve ", "kubectl "))]


@pytest.mark.parametrize("doc", [REPO / "README.md", K8S_DIR / "README.md"], ids=lambda p: str(p))
def test_kubectl_commands_use_the_namespace_of_the_render_command(doc):
    namespace = None
    lines = command_lines(doc.read_text(encoding="utf-8"))
    assert any(line.startswith("kubectl ") for line in lines)
    for line in lines:
        if line.startswith("gaudi-serve config render"):
            match = re.search(r"--namespace (\S+)", line)
            namespace = match.group(1) if match else None
        for kubectl in re.findall(r"kubectl [^|]*", line):
            if namespace is not None:
                assert f" -n {namespace} " in f"{kubectl} ", f"{doc.name}: {kubectl!r}"


# -- the checked-in k8s/ tree --------------------------------------------------------------


def checked_in_tree() -> dict[str, str]:
    return {
        str(path.relative_to(K8S_DIR)): path.read_text(encoding="utf-8")
        for path in sorted(K8S_DIR.rglob("*"))
        if path.is_file() and path.name != "README.md"
    }


def test_checked_in_k8s_tree_equals_a_fresh_render():
    config = load_config(DEFAULT_EXAMPLE, check_paths=False)
    fresh = render_kustomize_tree(config, K8sOptions())
    on_disk = checked_in_tree()
    stale = sorted(set(fresh) ^ set(on_disk) | {p for p in fresh if fresh[p] != on_disk.get(p)})
    assert not stale, f"k8s/ differs from a fresh render in {stale}; regenerate with: {REGENERATE}"
    assert (K8S_DIR / "README.md").is_file()


def test_base_is_the_cpu_rendering_of_the_default_config():
    docs = list(yaml.safe_load_all((K8S_DIR / "base" / "rayservice.yaml").read_text()))
    config = load_config(DEFAULT_EXAMPLE, check_paths=False)
    assert docs == render_manifests(config, K8sOptions(accelerator="cpu"))
    kustomization = yaml.safe_load((K8S_DIR / "base" / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == ["rayservice.yaml"]


@pytest.mark.parametrize("accelerator", list(ACCELERATORS))
def test_each_overlay_patches_the_base_into_that_accelerators_rendering(accelerator):
    base_docs = list(yaml.safe_load_all((K8S_DIR / "base" / "rayservice.yaml").read_text()))
    base_service = next(d for d in base_docs if d["kind"] == "RayService")
    overlay = K8S_DIR / "overlays" / accelerator
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == ["../../base"]
    patched = base_service
    for patch in kustomization.get("patches", []):
        assert patch["target"] == {
            "group": "ray.io",
            "version": "v1",
            "kind": "RayService",
            "name": base_service["metadata"]["name"],
        }
        ops = yaml.safe_load((overlay / patch["path"]).read_text())
        assert ops and all(op["op"] in {"add", "remove", "replace"} for op in ops)
        assert all(op["path"].startswith("/spec/") for op in ops)
        patched = apply_json_patch(patched, ops)
    config = load_config(DEFAULT_EXAMPLE, check_paths=False)
    expected = render_manifests(config, K8sOptions(accelerator=accelerator))
    assert [base_docs[0], patched] == expected
    if accelerator != "cpu":
        limits = workers(patched)[f"{accelerator}-workers"]["template"]["spec"]["containers"][0]
        assert CARD_RESOURCES & set(limits["resources"]["limits"])


# -- the command line ----------------------------------------------------------------------


def test_cli_render_prints_the_manifests_for_gaudi_by_default(capsys):
    assert main(["config", "render", str(DEFAULT_EXAMPLE)]) == 0
    out = capsys.readouterr().out
    config = load_config(DEFAULT_EXAMPLE, check_paths=False)
    assert out == to_yaml(render_manifests(config, K8sOptions(accelerator="gaudi")))
    assert "habana.ai/gaudi" in out


def test_cli_render_writes_out_with_options(tmp_path, capsys):
    out = tmp_path / "svc.yaml"
    args = ["--accelerator", "nvidia", "--namespace", "llm", "--image", "img:1", "-o", str(out)]
    assert main(["config", "render", str(DEFAULT_EXAMPLE), *args]) == 0
    assert str(out) in capsys.readouterr().out
    config = load_config(DEFAULT_EXAMPLE, check_paths=False)
    options = K8sOptions(accelerator="nvidia", namespace="llm", image="img:1")
    assert out.read_text() == to_yaml(render_manifests(config, options))


def test_cli_render_does_not_need_the_model_folders_here(tmp_path, capsys):
    path = tmp_path / "serve.yaml"
    path.write_text("models:\n  - name: m\n    path: /models/not-on-this-machine\n")
    assert main(["config", "render", str(path)]) == 0
    assert "path: /models/not-on-this-machine" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (
            "models:\n  - name: m\n    tp_size: 3\n",
            "models.0.tp_size: Input should be 1, 2, 4 or 8",
        ),
        ("models:\n  - name: m\n    path: ./weights\n", "models.0.path: './weights' is relative"),
        ("http: {port: 6379}\nmodels:\n  - name: m\n", "http.port: 6379 is taken by Ray"),
    ],
    ids=["schema", "relative-path", "ray-port"],
)
def test_cli_render_bad_config_exits_2_naming_the_field(tmp_path, capsys, text, field):
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    assert main(["config", "render", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and field in captured.err


def test_cli_render_bad_options_exit_2(capsys):
    assert main(["config", "render", str(DEFAULT_EXAMPLE), "--name", "Bad_Name"]) == 2
    assert "--name must be lowercase" in capsys.readouterr().err
    kustomize_and_accelerator = ["--kustomize", "x", "--accelerator", "cpu"]
    assert main(["config", "render", str(DEFAULT_EXAMPLE), *kustomize_and_accelerator]) == 2
    assert "--accelerator does not apply with --kustomize" in capsys.readouterr().err
    assert main(["config", "check", str(DEFAULT_EXAMPLE), "--image", "x"]) == 2
    assert "--image only apply to render" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["config", "render", str(DEFAULT_EXAMPLE), "--accelerator", "tpu"])
    assert info.value.code == 2


def test_cli_render_kustomize_writes_the_tree(tmp_path, capsys):
    assert main(["config", "render", str(DEFAULT_EXAMPLE), "--kustomize", str(tmp_path)]) == 0
    written = {
        str(p.relative_to(tmp_path)): p.read_text() for p in tmp_path.rglob("*") if p.is_file()
    }
    assert written == checked_in_tree()
    assert "overlays/gaudi/rayservice-patch.yaml" in capsys.readouterr().out


def test_importing_the_renderer_imports_neither_ray_nor_torch():
    code = (
        "import sys, deployments.k8s; "
        "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert out.strip() == "[]"
