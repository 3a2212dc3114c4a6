"""The deployment files, checked offline with each ecosystem's own tools: hadolint (Dockerfile),
cfn-lint (CloudFormation and every IAM policy), botocore's RegisterTaskDefinition input model
(ECS), kubernetes-validate (Kubernetes, strict schemas), yamllint (all YAML); plus the
agreements between them that no single tool sees (ports, probes, drain bounds, the one
configuration file, the environment each deployment gives it).

Every validator is also shown a broken copy and must reject it, so a validator that silently
checks nothing cannot pass these tests.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgpool_proxy.config import load_config
from tests.deploy import dockerfile

REPO = dockerfile.REPO
DEPLOY = REPO / "deploy"
EXAMPLE_CONFIG = DEPLOY / "pgpool-proxy.toml"
TEMPLATES = sorted((DEPLOY / "cloudformation").glob("*.yaml"))
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
TASK_DEFINITION = DEPLOY / "ecs" / "task-definition.json"
# IAM documents shipped as JSON: (file, "identity" or "trust").
POLICIES = [
    (DEPLOY / "ecs" / "task-role-policy.json", "identity"),
    (DEPLOY / "ecs" / "execution-role-policy.json", "identity"),
    (DEPLOY / "ecs" / "trust-policy.json", "trust"),
    (REPO / "examples" / "lambda" / "iam-policy.json", "identity"),
    (REPO / "examples" / "lambda" / "trust-policy.json", "trust"),
]
YAML_FILES = sorted(DEPLOY.rglob("*.yaml"))
# Oldest Kubernetes with native sidecars on by default (sidecar.yaml), and the newest known.
K8S_VERSIONS = ["1.29.0", "latest"]


def _tool(name: str) -> str:
    """A console script of the dev extra, next to this interpreter or on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: python3 -m pip install -e '.[dev]'")
    return found


def _run(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)


def _example() -> dict[str, Any]:
    with EXAMPLE_CONFIG.open("rb") as handle:
        return tomllib.load(handle)


def _listen_port(section: str) -> int:
    return int(_example()[section]["listen"].rpartition(":")[2])


def _shutdown_timeout_s() -> float:
    return float(_example()["proxy"]["shutdown_timeout_s"])


def _env_refs() -> set[str]:
    """Every variable the example config reads (``*_env`` keys of its arrays)."""
    names = set()
    for array in ("databases", "users"):
        for entry in _example().get(array, []):
            names |= {v for k, v in entry.items() if k.endswith("_env")}
    return names


# --------------------------------------------------------------------------------------------
# Dockerfile


def test_hadolint_passes_the_dockerfile(tmp_path: Path) -> None:
    hadolint = _tool("hadolint")
    done = _run([hadolint, "--failure-threshold", "style", str(dockerfile.DOCKERFILE)])
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        dockerfile.DOCKERFILE.read_text().replace(
            'CMD ["run", "--config", "/etc/pgpool-proxy/pgpool-proxy.toml"]',
            "CMD pgpool-proxy run --config /etc/pgpool-proxy/pgpool-proxy.toml",
        )
        + "RUN apt-get install curl\n"
    )
    done = _run([hadolint, "--failure-threshold", "style", str(broken)])
    assert done.returncode != 0 and "DL3025" in done.stdout, done.stdout


def test_dockerfile_shape() -> None:
    stages = dockerfile.instructions()[1:]
    assert len(stages) >= 2, "multi-stage: build the wheel apart from the runtime"
    final = dockerfile.final_stage()
    base = final[0].args
    args = {
        i.args.split("=")[0]: i.args for i in dockerfile.instructions()[0] if i.keyword == "ARG"
    }
    if base.startswith("${"):
        base = args[base.split()[0][2:-1]].partition("=")[2]
    assert re.fullmatch(r"python:3\.1[12]-slim(-\w+)?( AS \w+)?", base), base
    user = dockerfile.last(final, "USER")
    assert user is not None and user.args.split(":")[0] not in ("root", "0"), user
    exposed = {int(p) for i in final if i.keyword == "EXPOSE" for p in i.args.split()}
    assert exposed == {6432, _listen_port("metrics")}
    assert _listen_port("proxy") == 6432
    # PID 1 is the proxy itself, serving the baked-in example configuration.
    command = dockerfile.entry_command()
    assert command == ["pgpool-proxy", "run", "--config", "/etc/pgpool-proxy/pgpool-proxy.toml"]
    assert dockerfile.copied_files()[command[-1]] == "deploy/pgpool-proxy.toml"
    stop = dockerfile.last(final, "STOPSIGNAL")
    assert stop is None or stop.args == "SIGTERM"
    assert dockerfile.healthcheck_command()[:2] == ["pgpool-proxy", "healthcheck"]


def test_dockerignore_keeps_the_build_context_small() -> None:
    lines = (REPO / ".dockerignore").read_text().split()
    assert lines[lines.index("*") :][:1] == ["*"], "allow-list: ignore everything first"
    # Everything the build COPYs is let back in.
    for i in dockerfile.instructions()[2]:
        if i.keyword == "COPY":
            for src in i.args.split()[:-1]:
                assert f"!{src.rstrip('/')}" in lines or f"!{src.rstrip('/')}/" in lines, src


# --------------------------------------------------------------------------------------------
# CloudFormation and IAM


def test_cfn_lint_passes_the_templates(tmp_path: Path) -> None:
    assert TEMPLATES
    cfn_lint = _tool("cfn-lint")
    done = _run([cfn_lint, *map(str, TEMPLATES)])
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(TEMPLATES[0].read_text().replace("TargetType: ip", "TargetType: ipv9"))
    done = _run([cfn_lint, str(broken)])
    assert done.returncode != 0 and "E3030" in done.stdout, done.stdout


def _policy_template(documents: Mapping[str, tuple[dict[str, Any], str]]) -> dict[str, Any]:
    """A template holding each document where CloudFormation would: identity policies as
    managed policies, trust policies as a role's AssumeRolePolicyDocument."""
    resources: dict[str, Any] = {}
    for name, (doc, kind) in documents.items():
        if kind == "trust":
            resources[name] = {
                "Type": "AWS::IAM::Role",
                "Properties": {"AssumeRolePolicyDocument": doc},
            }
        else:
            resources[name] = {
                "Type": "AWS::IAM::ManagedPolicy",
                "Properties": {"PolicyDocument": doc},
            }
    return {"AWSTemplateFormatVersion": "2010-09-09", "Resources": resources}


def test_iam_policies_pass_cfn_lint(tmp_path: Path) -> None:
    documents = {
        re.sub(r"\W", "", path.parent.name.title() + path.stem.title()): (
            json.loads(path.read_text()),
            kind,
        )
        for path, kind in POLICIES
    }
    good = tmp_path / "policies.json"
    good.write_text(json.dumps(_policy_template(documents)))
    cfn_lint = _tool("cfn-lint")
    done = _run([cfn_lint, str(good)])
    assert done.returncode == 0, done.stdout + done.stderr
    name = next(iter(documents))
    bad_doc = copy.deepcopy(documents[name][0])
    bad_doc["Statement"][0]["Effect"] = "Alow"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(_policy_template({name: (bad_doc, "identity")})))
    done = _run([cfn_lint, str(broken)])
    assert done.returncode != 0 and "E3510" in done.stdout, done.stdout


def _cfn(path: Path) -> dict[str, Any]:
    from cfnlint.decode import cfn_yaml

    template: dict[str, Any] = cfn_yaml.load(str(path))
    return template


def _resources(template: Mapping[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {
        name: res["Properties"]
        for name, res in template["Resources"].items()
        if res["Type"] == kind
    }


def test_standalone_template_wiring() -> None:
    t = _cfn(DEPLOY / "cloudformation" / "standalone.yaml")
    params = t["Parameters"]
    metrics_port = _listen_port("metrics")

    # Drain bounds: the proxy's drain fits in the container stop timeout, and the NLB keeps a
    # stopping task's connections at least as long as the drain may take.
    shutdown = params["ShutdownTimeoutSeconds"]
    assert shutdown["Default"] == _shutdown_timeout_s()
    (task,) = _resources(t, "AWS::ECS::TaskDefinition").values()
    (container,) = task["ContainerDefinitions"]
    assert shutdown["MaxValue"] < container["StopTimeout"] <= 120
    assert params["DeregistrationDelaySeconds"]["Default"] >= shutdown["Default"]
    (tg,) = _resources(t, "AWS::ElasticLoadBalancingV2::TargetGroup").values()
    attrs = {a["Key"]: a["Value"] for a in tg["TargetGroupAttributes"]}
    assert attrs["deregistration_delay.timeout_seconds"] == {"Ref": "DeregistrationDelaySeconds"}
    assert attrs["deregistration_delay.connection_termination.enabled"] == "false"
    assert (tg["Protocol"], tg["Port"], tg["HealthCheckPath"]) == ("TCP", 6432, "/readyz")
    assert int(tg["HealthCheckPort"]) == metrics_port
    (nlb,) = _resources(t, "AWS::ElasticLoadBalancingV2::LoadBalancer").values()
    assert (nlb["Type"], nlb["Scheme"]) == ("network", "internal")
    lb_attrs = {a["Key"]: a["Value"] for a in nlb["LoadBalancerAttributes"]}
    assert lb_attrs["load_balancing.cross_zone.enabled"] == "true"

    # Security groups: clients only from the application's group; the tasks reach only the
    # database port (plus HTTPS for AWS APIs).
    groups = _resources(t, "AWS::EC2::SecurityGroup")
    nlb_in = groups["LoadBalancerSecurityGroup"]["SecurityGroupIngress"]
    assert [(r["FromPort"], r["SourceSecurityGroupId"]) for r in nlb_in] == [
        (6432, {"Ref": "AppSecurityGroupId"})
    ]
    proxy_in = groups["ProxySecurityGroup"]["SecurityGroupIngress"]
    assert {(r["FromPort"], r["SourceSecurityGroupId"]["Ref"]) for r in proxy_in} == {
        (6432, "LoadBalancerSecurityGroup"),
        (metrics_port, "LoadBalancerSecurityGroup"),
    }
    egress = [
        (r["FromPort"], r.get("DestinationSecurityGroupId") or r.get("CidrIp"))
        for r in groups["ProxySecurityGroup"]["SecurityGroupEgress"]
    ] + [
        (r["FromPort"], r["DestinationSecurityGroupId"])
        for r in _resources(t, "AWS::EC2::SecurityGroupEgress").values()
        if r["GroupId"] == {"Ref": "ProxySecurityGroup"}
    ]
    assert sorted(egress, key=str) == sorted(
        [
            (443, {"Ref": "AwsApiCidr"}),
            ({"Ref": "DatabasePort"}, {"Ref": "DatabaseSecurityGroupId"}),
        ],
        key=str,
    )

    # The task role may read exactly the one database secret, nothing else.
    roles = _resources(t, "AWS::IAM::Role")
    (policy,) = roles["TaskRole"]["Policies"]
    assert policy["PolicyDocument"]["Statement"] == [
        {
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": {"Ref": "DatabaseSecretArn"},
        }
    ]
    assert "ManagedPolicyArns" not in roles["TaskRole"]

    # Scaling on CPU and on client connections per task.
    policies = _resources(t, "AWS::ApplicationAutoScaling::ScalingPolicy")
    specs = [p["TargetTrackingScalingPolicyConfiguration"] for p in policies.values()]
    assert any(
        s.get("PredefinedMetricSpecification", {}).get("PredefinedMetricType")
        == "ECSServiceAverageCPUUtilization"
        for s in specs
    )
    assert any(
        m.get("MetricStat", {}).get("Metric", {}).get("MetricName") == "ActiveFlowCount_TCP"
        for s in specs
        for m in s.get("CustomizedMetricSpecification", {}).get("Metrics", [])
    )

    # The container gets every variable the example config reads.
    env = {e["Name"] for e in container["Environment"]} | {s["Name"] for s in container["Secrets"]}
    assert _env_refs() <= env
    assert container["HealthCheck"]["Command"] == ["CMD", *dockerfile.healthcheck_command()]


# --------------------------------------------------------------------------------------------
# ECS task definition (sidecar)


def _enum_problems(value: Any, shape: Any, path: str) -> Iterator[str]:
    """botocore's ParamValidator checks types and required members, not enum values."""
    if shape.type_name == "structure" and isinstance(value, dict):
        for key, item in value.items():
            if key in shape.members:
                yield from _enum_problems(item, shape.members[key], f"{path}.{key}")
    elif shape.type_name == "list" and isinstance(value, list):
        for index, item in enumerate(value):
            yield from _enum_problems(item, shape.member, f"{path}[{index}]")
    elif shape.type_name == "map" and isinstance(value, dict):
        for key, item in value.items():
            yield from _enum_problems(item, shape.value, f"{path}[{key!r}]")
    elif shape.type_name == "string" and getattr(shape, "enum", None) and value not in shape.enum:
        yield f"{path}: {value!r} is not one of {shape.enum}"


def _task_definition_problems(params: dict[str, Any]) -> list[str]:
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    report = ParamValidator().validate(params, shape)
    problems = [report.generate_report()] if report.has_errors() else []
    return problems + list(_enum_problems(params, shape, "taskDefinition"))


def test_task_definition_validates_against_botocore() -> None:
    params = json.loads(TASK_DEFINITION.read_text())
    assert _task_definition_problems(params) == []
    broken = copy.deepcopy(params)
    broken["networkMode"] = "awsvpcc"
    broken["containerDefinitions"][0]["stoptimeout"] = 30
    broken["cpu"] = 1024
    problems = "\n".join(_task_definition_problems(broken))
    assert "stoptimeout" in problems and "awsvpcc" in problems and "cpu" in problems


def test_task_definition_sidecar_wiring() -> None:
    task = json.loads(TASK_DEFINITION.read_text())
    containers = {c["name"]: c for c in task["containerDefinitions"]}
    proxy, app = containers["pgpool-proxy"], containers["app"]
    env = {e["name"]: e["value"] for e in proxy["environment"]}
    # A sidecar listens on the task's loopback only.
    assert env["PGPOOL_PROXY_LISTEN"].startswith("127.0.0.1:")
    assert _env_refs() <= set(env) | {s["name"] for s in proxy["secrets"]}
    assert proxy["healthCheck"]["command"] == ["CMD", *dockerfile.healthcheck_command()]
    # The application starts once the proxy is healthy; ECS stops it first, then the proxy,
    # which gets more time than its drain needs.
    assert app["dependsOn"] == [{"containerName": "pgpool-proxy", "condition": "HEALTHY"}]
    shutdown = float(env.get("PGPOOL_PROXY_SHUTDOWN_TIMEOUT_S", _shutdown_timeout_s()))
    assert proxy["stopTimeout"] > shutdown
    for c in containers.values():
        assert c["logConfiguration"]["logDriver"] == "awslogs"
    # The task role reads exactly the database secret the proxy is given.
    policy = json.loads((DEPLOY / "ecs" / "task-role-policy.json").read_text())
    assert policy["Statement"] == [
        {
            "Sid": "ReadTheDatabaseSecret",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": env["PGPOOL_DB_SECRET_ARN"],
        }
    ]
    # Secrets injected at start are the execution role's business, and only those.
    execution = json.loads((DEPLOY / "ecs" / "execution-role-policy.json").read_text())
    readable = {
        s["Resource"]
        for s in execution["Statement"]
        if s["Action"] == "secretsmanager:GetSecretValue"
    }
    injected = {s["valueFrom"] for c in containers.values() for s in c.get("secrets", [])}
    assert readable == injected


# --------------------------------------------------------------------------------------------
# Kubernetes


def _documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_validate_passes_the_manifests(version: str) -> None:
    import kubernetes_validate

    if version == "latest":
        version = kubernetes_validate.latest_version()
    docs = list(_documents())
    assert {d["kind"] for _, d in docs} >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
    }
    for path, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {exc}")
    _, deployment = next((p, d) for p, d in docs if d["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def _proxy_containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(manifest, pod spec, proxy container) for every pod that runs the proxy."""
    for path, doc in _documents():
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            if "pgpool-proxy" in c["image"]:
                yield path.name, pod, c


def test_kubernetes_probes_drain_and_config() -> None:
    metrics_port = _listen_port("metrics")
    seen = set()
    for name, pod, c in _proxy_containers():
        seen.add(name)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["metrics"] == metrics_port
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        ready = c.get("readinessProbe") or c["startupProbe"]
        assert ready["httpGet"] == {"path": "/readyz", "port": "metrics"}
        env = {e["name"]: e for e in c["env"]}
        assert _env_refs() <= set(env)
        assert "secretKeyRef" in env["PGPOOL_APP_PASSWORD"]["valueFrom"]
        assert c["args"] == dockerfile.entry_command()[1:]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volume = {v["name"]: v for v in pod["volumes"]}[mounts["/etc/pgpool-proxy"]]
        assert volume["configMap"]["name"] == "pgpool-proxy-config"
        shutdown = float(
            env.get("PGPOOL_PROXY_SHUTDOWN_TIMEOUT_S", {}).get("value", _shutdown_timeout_s())
        )
        pre_stop = 0.0
        if "lifecycle" in c:
            command = c["lifecycle"]["preStop"]["exec"]["command"]
            assert command[0] == "sleep"
            pre_stop = float(command[1])
        # The kubelet's SIGKILL must not cut the drain short.
        assert pod["terminationGracePeriodSeconds"] > pre_stop + shutdown
        if c.get("restartPolicy") == "Always":  # native sidecar
            assert env["PGPOOL_PROXY_LISTEN"]["value"].startswith("127.0.0.1:")
    assert seen == {"standalone.yaml", "sidecar.yaml"}
    standalone = next(c for n, _, c in _proxy_containers() if n == "standalone.yaml")
    assert "preStop" in standalone["lifecycle"]

    # The ConfigMap carries the shipped configuration unchanged.
    (cm,) = [d for _, d in _documents() if d["kind"] == "ConfigMap"]
    assert cm["data"]["pgpool-proxy.toml"] == EXAMPLE_CONFIG.read_text()


# --------------------------------------------------------------------------------------------
# YAML and the example configuration


def test_yamllint_passes_all_yaml(tmp_path: Path) -> None:
    config = DEPLOY / ".yamllint.yaml"
    args = [sys.executable, "-m", "yamllint", "--strict", "-c", str(config)]
    done = _run([*args, *map(str, YAML_FILES)])
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(MANIFESTS[0].read_text().replace("metadata:", "metadata:   ", 1))
    done = _run([*args, str(broken)])
    assert done.returncode != 0 and "trailing-spaces" in done.stdout, done.stdout


def _deployment_envs() -> dict[str, dict[str, str]]:
    """The environment each shipped deployment gives the proxy container, secrets included
    (as placeholders)."""
    envs: dict[str, dict[str, str]] = {}
    task = json.loads(TASK_DEFINITION.read_text())
    proxy = next(c for c in task["containerDefinitions"] if c["name"] == "pgpool-proxy")
    envs["ecs sidecar"] = {e["name"]: e["value"] for e in proxy["environment"]} | {
        s["name"]: "secret-from-secrets-manager" for s in proxy["secrets"]
    }
    t = _cfn(DEPLOY / "cloudformation" / "standalone.yaml")
    (task_def,) = _resources(t, "AWS::ECS::TaskDefinition").values()
    (container,) = task_def["ContainerDefinitions"]
    samples = {"DatabaseHost": "db.example.internal", "DatabaseSecretArn": _SAMPLE_ARN}
    env = {}
    for e in container["Environment"]:
        ref = e["Value"]["Ref"]
        env[e["Name"]] = samples.get(ref) or str(t["Parameters"][ref]["Default"])
    envs["cloudformation"] = env | {s["Name"]: "secret" for s in container["Secrets"]}
    for name, _pod, c in _proxy_containers():
        envs[f"kubernetes {name}"] = {
            e["name"]: e.get("value", "secret-from-kubernetes") for e in c["env"]
        }
    return envs


_SAMPLE_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:app-db-AbCdEf"


@pytest.mark.parametrize("deployment", sorted(_deployment_envs()))
def test_example_config_loads_with_each_deployments_environment(deployment: str) -> None:
    env = _deployment_envs()[deployment]
    config = load_config(EXAMPLE_CONFIG, env=env)
    (db,) = config.databases
    assert db.host == env["PGPOOL_DB_HOST"]
    assert db.port == int(env["PGPOOL_DB_PORT"])
    assert db.secret_arn == env["PGPOOL_DB_SECRET_ARN"]
    expected = env.get("PGPOOL_PROXY_SHUTDOWN_TIMEOUT_S", _shutdown_timeout_s())
    assert config.proxy.shutdown_timeout_s == float(expected)  # type: ignore[attr-defined]


def test_check_config_names_every_missing_variable() -> None:
    done = _run(
        [sys.executable, "-m", "pgpool_proxy", "check-config", str(EXAMPLE_CONFIG)],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 1
    for var in sorted(_env_refs()):
        assert f"environment variable {var} is not set" in done.stderr + done.stdout
