"""cluster/ checked by the tools its files are for: the image by hadolint (no Docker engine here to
build it), the KubeRay manifests against KubeRay's own CRD schemas (cluster/kuberay/crds/, v1.7.0),
the Ray launcher YAMLs by Ray's own prepare_config/validate_config, the shell scripts by shellcheck;
and every `craft` command line in them and in cluster/README.md composes."""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from craftsman_platform.cli import SUBCOMMANDS
from craftsman_platform.paths import CONF_DIR
from craftsman_platform.pipelines.preprocess.config import PreprocessConfig
from craftsman_platform.pipelines.slots import node_slots
from craftsman_platform.schemas import register

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
GiB = 2**30
TASK_MEMORY = int(PreprocessConfig.memory_per_task_gb * GiB)  # the default the recipes keep


def tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    assert Path(found).exists(), f"{name} (the dev extra) is not installed"
    return found


def versions() -> dict[str, str]:
    lines = (CLUSTER / "versions.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


# ---------------------------------------------------------------------------------------------
# The image
# ---------------------------------------------------------------------------------------------
def test_the_image_is_linted_and_installs_the_runtime_with_the_pinned_versions():
    dockerfile = CLUSTER / "docker" / "Dockerfile"
    lint = subprocess.run([tool("hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    text = dockerfile.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    pinned = versions()
    assert args["RAY_VERSION"] == pinned["RAY_VERSION"] == ray.__version__  # what the tests run
    assert args["TORCH_VERSION"] == pinned["TORCH_VERSION"] == torch.__version__.split("+")[0]
    install = re.search(r'pip install "/src\[([\w,]+)\]"', text)
    assert install and set(install.group(1).split(",")) == {"cloud", "cluster"}, "runtime extras only"
    assert not re.search(r"chromium|playwright|pytest|\[dev\]|setup\.sh", text, re.I)
    assert "craft --help" in text and "ray --version" in text  # both on PATH, checked at build time
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1 :][:3] == ["!pyproject.toml", "!README.md", "!craftsman_platform/"]


# ---------------------------------------------------------------------------------------------
# KubeRay
# ---------------------------------------------------------------------------------------------
def strict(schema):
    """A CRD's structural schema as the API server applies it: unknown fields are not kept (and
    `kubectl apply` refuses them), so objects with properties admit no others."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    keeps_unknown = out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and "additionalProperties" not in out and not keeps_unknown:
        out["additionalProperties"] = False
    return out


def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    doc = json.loads((CLUSTER / "kuberay" / "crds" / f"{kind.lower()}s.json").read_text())
    assert doc["kuberay"] == "v1.7.0" and doc["kind"] == kind
    return jsonschema.Draft7Validator(strict(doc["schemas"]["v1"]))


def kuberay_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted((CLUSTER / "kuberay").glob("*.yaml")):
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def of_kind(kind: str) -> dict:
    (doc,) = [doc for _, doc in kuberay_docs() if doc["kind"] == kind]
    return doc


def ray_cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def test_kuberay_manifests_validate_against_kuberays_crd_schemas():
    kinds = []
    for name, doc in kuberay_docs():
        kinds.append(doc["kind"])
        if doc["kind"] == "ServiceAccount":
            assert doc["apiVersion"] == "v1" and set(doc) == {"apiVersion", "kind", "metadata"}
            continue
        assert doc["apiVersion"] == "ray.io/v1"
        errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in crd_validator(doc["kind"]).iter_errors(doc)]
        assert not errors, (name, errors)
    assert sorted(kinds) == ["RayCluster", "RayJob", "ServiceAccount"]
    # the check bites: a misspelt field and a mistyped value are both refused
    bad = copy.deepcopy(of_kind("RayCluster"))
    bad["spec"]["workerGroupSpecs"][0]["maxReplica"] = 18
    bad["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    messages = [e.message for e in crd_validator("RayCluster").iter_errors(bad)]
    assert any("maxReplica" in m for m in messages) and any("is not of type 'string'" in m for m in messages), messages


# EKS allocatable (kube-reserved CPU 6%/1%/0.5%/0.25% of cores 1/2/3-4/rest; memory 255 MiB + 11 MiB
# per pod (max pods 58 for 2xlarge, 250 for 16xlarge) + 100 MiB eviction; ~3% of nominal memory not
# visible to the OS), less room for the DaemonSets (VPC CNI, kube-proxy, CSI: 0.5 CPU, 1 GiB)
NODES = {  # instance type: (vCPU, nominal GiB, max pods)
    "m7i.2xlarge": (8, 32, 58),
    "m7i.16xlarge": (64, 256, 250),
}


def allocatable(instance: str) -> tuple[float, float]:
    cores, gib, pods = NODES[instance]
    reserved = 0.06 + 0.01 + 0.005 * min(2, cores - 2) + 0.0025 * max(0, cores - 4)
    memory = gib * 0.97 - (255 + 11 * pods + 100) / 1024
    return cores - reserved - 0.5, memory - 1.0


def quantity(value: str) -> float:
    """A Kubernetes quantity as a number (CPUs, or GiB for memory)."""
    units = {"Gi": 1.0, "Mi": 1 / 1024, "Ti": 1024.0}
    for unit, scale in units.items():
        if value.endswith(unit):
            return float(value[: -len(unit)]) * scale
    return float(value)


def test_kuberay_dashboard_has_token_auth_pods_fit_their_nodes_and_slots_follow_task_memory():
    pinned = versions()["RAY_VERSION"]
    texts = {p.name: p.read_text() for p in (CLUSTER / "kuberay").glob("*.yaml")}
    for name, doc in kuberay_docs():
        if doc["kind"] == "ServiceAccount":
            continue
        spec = ray_cluster_spec(doc)
        # KubeRay's submitter pod and the operator reach the dashboard on the head service: no
        # loopback override (KubeRay binds 0.0.0.0), Ray's token auth on instead (Ray >= 2.52)
        assert spec["rayVersion"] == pinned and spec["authOptions"] == {"mode": "token"}, name
        assert "dashboard-host" not in spec["headGroupSpec"]["rayStartParams"], name
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for group in groups:
            pod = group["template"]["spec"]
            (container,) = pod["containers"]
            assert re.fullmatch(r"craftsman-platform:0\.1\.0-(cpu|cu128)", container["image"]), container["image"]
            res = container["resources"]
            assert res["requests"] == res["limits"], "Guaranteed pods: Ray's resources are the limits"
            cpus, gib = allocatable(pod["nodeSelector"]["node.kubernetes.io/instance-type"])
            assert quantity(res["limits"]["cpu"]) <= cpus and quantity(res["limits"]["memory"]) <= gib, (name, res)
        worker = spec["workerGroupSpecs"][0]
        res = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
        slots = node_slots(quantity(res["cpu"]), quantity(res["memory"]) * GiB, TASK_MEMORY)
        nodes = worker["maxReplicas"]
        assert slots == 60 and nodes * slots >= 1024, (slots, nodes)
        assert f"{nodes} workers x {slots} task slots = {nodes * slots:,} slots" in texts["rayjob.yaml"]
        assert f"= {slots} task slots per node" in texts["raycluster.yaml"]
    job = of_kind("RayJob")
    assert job["spec"]["backoffLimit"] >= 1 and job["spec"]["shutdownAfterJobFinishes"]
    assert "KubeRay never re-runs a finished RayJob" in texts["rayjob.yaml"]
    assert "kubectl delete rayjob craft-preprocess-objaverse" in texts["rayjob.yaml"]


# ---------------------------------------------------------------------------------------------
# Ray cluster launcher
# ---------------------------------------------------------------------------------------------
def launcher_config(path: Path) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load(path.read_text()))  # what `ray up` does before AWS calls
    validate_config(config)
    return config


def test_ray_launcher_configs_pass_rays_validator_with_nothing_left_to_fill_in():
    from ray.autoscaler._private.util import validate_config

    setup = (CLUSTER / "ray" / "node-setup.sh").read_text()
    env_keys = {**versions(), **dict(re.findall(r"^(\w+)=(.*)$", (CLUSTER / "ray" / "cluster.env").read_text(), re.M))}
    read = set(re.findall(r"\$\{?(RAY_VERSION|TORCH_\w+|SHARED_FS_\w+|FSX_\w+)", setup))
    assert read and read <= set(env_keys), read - set(env_keys)  # every value it reads has its documented place
    for path in sorted((CLUSTER / "ray").glob("*.yaml")):
        config = launcher_config(path)
        text = json.dumps(config)
        for placeholder in ("${", "REGISTRY", "REPO_URL", "EFS_DNS", "|| true", "CHANGE"):
            assert placeholder not in text, (path.name, placeholder)
        for node_type in config["available_node_types"].values():
            assert node_type["node_config"]["ImageId"].startswith("resolve:ssm:/aws/service/deeplearning/")
        # no merged default (`pip install boto3` into whatever pip is first): boto3 comes with the
        # cluster extra, installed by node-setup.sh into the venv the head's ray runs from
        assert not any("boto3" in c for c in config["head_setup_commands"]), config["head_setup_commands"]
        assert config["setup_commands"][0].startswith("bash ~/craftsman-platform/cluster/ray/node-setup.sh")
        assert config["file_mounts"] == {"~/craftsman-platform": "."} and config["rsync_filter"] == [".gitignore"]
    assert '"${repo}[cloud,cluster]"' in setup and "boto3" in (REPO / "pyproject.toml").read_text()
    train = (CLUSTER / "ray" / "train-4x8gpu.yaml").read_text()
    assert "--shared-fs" in train and "model.conditioner.pretrained=/mnt/shared/hf/" in train
    # slots per worker as the launcher gives them: Ray's memory resource is 70% of the node's
    cores, gib, _ = NODES["m7i.16xlarge"]
    slots = node_slots(cores, 0.7 * gib * GiB, TASK_MEMORY)
    text = (CLUSTER / "ray" / "preprocess-aws.yaml").read_text()
    assert slots == 59 and f"= {slots} tasks" in text and f"18 ({18 * slots:,} slots)" in text
    # the validator bites: a misspelt top-level key is refused
    with pytest.raises(Exception, match="setup_command"):
        validate_config({**launcher_config(CLUSTER / "ray" / "preprocess-aws.yaml"), "setup_command": []})


def test_cluster_shell_scripts_pass_shellcheck():
    scripts = [*sorted((CLUSTER / "slurm").glob("*")), CLUSTER / "ray" / "node-setup.sh"]
    check = subprocess.run([tool("shellcheck"), "-x", *map(str, scripts)], capture_output=True, text=True, cwd=REPO)
    assert check.returncode == 0, check.stdout


# ---------------------------------------------------------------------------------------------
# Every command line composes
# ---------------------------------------------------------------------------------------------
COMMAND = re.compile(r"(?:^|[\s`'>-])(craft|sbatch)\s+(\S.*)$")


def command_lines(text: str) -> list[list[str]]:
    """`craft SUB ARGS` and `sbatch cluster/slurm/X.sbatch ARGS` lines (continuations joined,
    comment markers dropped), as the `craft` arguments they amount to."""
    text = re.sub(r"\\\n[ \t]*#?[ \t]*", " ", text)
    text = re.sub(r">-\n\s+(.*)\n\s+(.*)\n", r"\1 \2\n", text)  # a folded YAML entrypoint
    found = []
    for line in text.splitlines():
        match = COMMAND.search(line)
        if not match:
            continue
        words = shlex.split(match.group(2).split(" # ")[0].split("`")[0])  # to a comment or inline code's end
        if match.group(1) == "sbatch":
            if not words[0].startswith("cluster/slurm/"):
                continue
            words = ["train", "launcher=torchrun", *words[1:]]
        if len(words) > 1 and words[0] in SUBCOMMANDS:  # (a bare `craft pack` names it in prose)
            found.append(words)
    return found


def test_every_craft_command_in_the_recipes_composes():
    register()
    files = [CLUSTER / "README.md", CLUSTER / "kuberay" / "rayjob.yaml", *CLUSTER.glob("ray/*.yaml")]
    files += CLUSTER.glob("slurm/*.sbatch")  # raycluster.yaml runs no command of its own
    commands = {(path.name, tuple(words)) for path in files for words in command_lines(path.read_text())}
    missing = {p.name for p in files} - {name for name, _ in commands}
    assert not missing, missing  # each of them shows its commands
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for name, (sub, *overrides) in sorted(commands):
            try:
                OmegaConf.to_object(compose(config_name=SUBCOMMANDS[sub].config, overrides=overrides))
            except Exception as err:  # noqa: BLE001  (the message says which command)
                raise AssertionError(f"{name}: craft {sub} {' '.join(overrides)}: {err}") from err
    print("\n".join(f"{name}: craft {' '.join(words)}" for name, words in sorted(commands)))
    assert len(commands) >= 8, commands


def test_the_sbatch_scripts_refuse_a_run_without_run_dir_and_a_missing_environment(tmp_path):
    """Before anything is submitted to the ranks: no run_dir= (the STOP file's place), no project."""
    step = CLUSTER / "slurm" / "run-step.sh"
    found = subprocess.run(
        ["bash", "-c", f'source {step}; craft_find_run_dir experiment=vae_tiny; echo "not reached"'],
        capture_output=True,
        text=True,
    )
    assert found.returncode == 2 and "pass run_dir=DIR" in found.stderr and "not reached" not in found.stdout
    env = {"PATH": "/usr/bin:/bin", "SLURM_SUBMIT_DIR": str(tmp_path), "CRAFT_VENV": str(tmp_path / "none")}
    setup = subprocess.run(["bash", "-c", f"source {step}; craft_setup"], capture_output=True, text=True, env=env)
    assert setup.returncode == 2 and "craftsman_platform is not importable" in setup.stderr, setup.stderr
