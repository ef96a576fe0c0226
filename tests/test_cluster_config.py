"""cluster.yaml, checked offline with the cluster launcher's own code: the steps `ray up` runs before it calls AWS.

`prepare_config` merges the file with Ray's AWS defaults and `validate_config` checks the result against Ray's
JSON schema. Ray checks neither `provider` keys nor `node_config` (the arguments to EC2 RunInstances), so
those are checked here too: provider keys against the schema's list, node_config against botocore's EC2
model. No cluster is started and no network is used (the `no_network` fixture makes sure).
"""

import copy
import json
import re
import socket
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
PINNED_RAY = "2.60.0"  # the image tag, this and the installed Ray move together
# x86 NVIDIA GPU instance families the CUDA image runs on (g5g is ARM, g4ad is AMD)
GPU_FAMILIES = {"g4dn", "g5", "g6", "g6e", "gr6", "p3", "p4d", "p4de", "p5", "p5e", "p5en"}
WORLD = {"0.0.0.0/0", "::/0"}
RAY_NODE_CONFIG_KEYS = {"SubnetIds"}  # Ray's own node_config key, turned into SubnetId before the EC2 call


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the cluster config check tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def launcher_check(config: dict) -> dict:
    """What `ray up` does before it talks to AWS: merge with the AWS defaults, then validate; returns the merge."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def rename_key(config: dict, path: tuple, new_name: str) -> dict:
    """A copy of config with the key at path (a tuple of keys) renamed, as a typo would."""
    broken = copy.deepcopy(config)
    parent = broken
    for key in path[:-1]:
        parent = parent[key]
    parent[new_name] = parent.pop(path[-1])
    return broken


def unknown_provider_keys(config: dict) -> set:
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    return set(config["provider"]) - set(schema["properties"]["provider"]["properties"])


def unknown_node_config_keys(node_config: dict) -> list:
    """Paths in node_config that EC2 RunInstances has no parameter for (botocore's EC2 model, read offline)."""
    botocore_session = pytest.importorskip("botocore.session")
    shape = botocore_session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape

    def walk(value, shape, path):
        if shape.type_name == "structure" and isinstance(value, dict):
            for key, item in value.items():
                if key not in shape.members:
                    if not (path == "" and key in RAY_NODE_CONFIG_KEYS):
                        yield f"{path}{key}"
                else:
                    yield from walk(item, shape.members[key], f"{path}{key}.")
        elif shape.type_name == "list" and isinstance(value, list):
            for index, item in enumerate(value):
                yield from walk(item, shape.member, f"{path}[{index}].")

    return list(walk(node_config, shape, ""))


def world_open_rules(config: dict) -> list:
    """The inbound rules open to any address that Ray puts on the cluster's security group it creates."""
    aws_config = pytest.importorskip("ray.autoscaler._private.aws.config")  # needs boto3; imports only
    extra = config["provider"].get("security_group", {}).get("IpPermissions", [])
    rules = aws_config._create_default_inbound_rules({"sg-cluster"}, extended_rules=extra)
    return [rule for rule in rules
            if {r.get("CidrIp") for r in rule.get("IpRanges", [])} & WORLD
            or {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])} & WORLD]


def family(instance_type: str) -> str:
    return instance_type.split(".")[0]


@pytest.fixture(scope="module")
def config() -> dict:
    return load()


@pytest.fixture(scope="module")
def prepared(config) -> dict:
    return launcher_check(config)


def worker_types(prepared: dict) -> dict:
    return {name: node for name, node in prepared["available_node_types"].items() if name != prepared["head_node_type"]}


# --- Ray's own checks -------------------------------------------------------------------------------------

def test_ray_accepts_the_shipped_config(config):
    prepared = launcher_check(config)
    assert prepared["provider"]["type"] == "aws"


@pytest.mark.parametrize("path, typo", [
    (("max_workers",), "max_worker"),
    (("idle_timeout_minutes",), "idle_timeout_minute"),
    (("available_node_types", "gpu_1x", "min_workers"), "min_worker"),
    (("docker", "pull_before_run"), "pull_before_runs"),
    (("auth", "ssh_user"), "ssh_usr"),
])
def test_ray_rejects_a_misspelt_key(config, path, typo):
    with pytest.raises(jsonschema.ValidationError, match=typo):
        launcher_check(rename_key(config, path, typo))


# --- what Ray's schema lets through -----------------------------------------------------------------------

def test_provider_keys_are_ones_ray_knows(config):
    assert unknown_provider_keys(config) == set()


def test_a_misspelt_provider_key_is_caught_here_though_ray_lets_it_through(config):
    broken = rename_key(config, ("provider", "cache_stopped_nodes"), "cache_stopped_node")
    launcher_check(broken)  # Ray: fine
    assert unknown_provider_keys(broken) == {"cache_stopped_node"}


def test_node_configs_are_ec2_run_instances_arguments(config):
    for name, node in config["available_node_types"].items():
        assert unknown_node_config_keys(node["node_config"]) == [], name


def test_a_misspelt_node_config_key_is_caught(config):
    broken = rename_key(config, ("available_node_types", "gpu_1x", "node_config", "InstanceType"), "InstanceTyp")
    assert unknown_node_config_keys(broken["available_node_types"]["gpu_1x"]["node_config"]) == ["InstanceTyp"]


# --- the shape of the cluster -----------------------------------------------------------------------------

def test_head_runs_no_trials(prepared):
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "trials need CPUs; CPU 0 keeps them off the head"
    assert head["resources"].get("GPU", 0) == 0
    assert family(head["node_config"]["InstanceType"]) not in GPU_FAMILIES
    assert head["max_workers"] == 0


def test_gpu_workers_scale_from_zero(prepared):
    workers = worker_types(prepared)
    gpu = {name: node for name, node in workers.items() if family(node["node_config"]["InstanceType"]) in GPU_FAMILIES}
    assert gpu, f"no worker type with a GPU instance among {sorted(workers)}"
    assert all(node["min_workers"] == 0 for node in workers.values()), "idle workers would bill around the clock"
    assert all(0 < node["max_workers"] <= prepared["max_workers"] for node in workers.values())
    assert 0 < prepared["idle_timeout_minutes"] <= 30


def test_docker_image_matches_the_installed_ray(prepared):
    repository, tag = prepared["docker"]["image"].split(":")
    assert repository == "rayproject/ray"
    assert tag.split("-")[0] == ray.__version__ == PINNED_RAY, f"image {tag} vs installed Ray {ray.__version__}"
    assert "gpu" in tag.split("-")
    assert prepared["docker"]["container_name"] and prepared["docker"]["pull_before_run"] is True


def test_only_ssh_is_open_to_the_world(config):
    for name, node in config["available_node_types"].items():
        assert "SecurityGroupIds" not in node["node_config"], f"{name}: own groups bypass Ray's SSH-only group"
    for rule in world_open_rules(config):
        assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22), rule


def test_a_rule_opening_the_dashboard_to_the_world_is_caught(config):
    broken = copy.deepcopy(config)
    broken["provider"]["security_group"] = {"IpPermissions": [
        {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}
    launcher_check(broken)  # Ray accepts it: the check below is what stops it
    assert {rule["FromPort"] for rule in world_open_rules(broken)} == {22, 8265}


def test_dashboard_listens_on_localhost_only(prepared):
    start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start
    assert "0.0.0.0" not in start


def test_every_node_installs_the_project(prepared):
    assert prepared["file_mounts"]["/home/ray/tuner"] == "."
    for commands in (prepared["head_setup_commands"], prepared["worker_setup_commands"]):
        assert any(re.search(r"pip install .*-e /home/ray/tuner\b", command) for command in commands), commands


def test_token_auth_is_on_everywhere(prepared):
    assert prepared["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    for commands in (prepared["head_start_ray_commands"], prepared["worker_start_ray_commands"]):
        starts = [command for command in commands if "ray start" in command]
        assert starts and all("RAY_AUTH_MODE=token ray start" in command for command in starts), commands
    assert set(re.findall(r"RAY_AUTH_MODE=(\w+)", json.dumps(prepared))) == {"token"}  # comments aside


def test_edit_values_are_the_ones_used(config):
    """The EDIT block at the top feeds the real fields (YAML aliases), so editing it is enough."""
    first_key = next(line for line in CLUSTER_YAML.read_text().splitlines() if re.match(r"\w", line))
    assert first_key == "metadata:"
    edit = config["metadata"]["edit"]
    assert config["provider"]["region"] == edit["region"]
    assert config["auth"]["ssh_private_key"] == edit["ssh_private_key"]
    for name, node in config["available_node_types"].items():
        # Ray refuses to launch a node without KeyName once ssh_private_key is given
        assert node["node_config"]["KeyName"] == edit["key_name"], name
    for name, node in worker_types(config).items():
        assert node["node_config"]["IamInstanceProfile"] == {"Name": edit["worker_instance_profile"]}, name
    assert edit["bucket"]
