"""The Helm chart, with a real `helm` (from the npm registry) and Kubernetes' JSON schemas.

Every value set passes `helm lint --strict`; every manifest it renders validates against
the Kubernetes 1.30 schemas with no unknown field (kubernetes-validate), and the custom
resources against theirs (@kubernetes-models, run by node). The rest asserts what an
operator relies on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from service.settings import Settings
from tests.conftest import ROOT, Herald, RedisServer, wait_ready

CHART = ROOT / "helm" / "herald"
KUBE_VERSION = "1.30.0"
CRD_VALIDATORS = {
    "@kubernetes-models/gateway-api": "2.0.0",
    "@kubernetes-models/prometheus-operator": "6.0.0",
}
CUSTOM_KINDS = {"HTTPRoute", "ServiceMonitor"}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "external-redis": {
        "redis": {"deploy": False, "url": "rediss://herald:secret@redis.example.com:6380/0"}
    },
    "deploy-redis": {"redis": {"deploy": True, "persistence": {"storageClass": "fast-ssd"}}},
    "sentinel-redis": {
        "redis": {"deploy": False, "url": "redis+sentinel://s-0:26379,s-1:26379/herald"}
    },
    "cluster-redis": {
        "redis": {"deploy": False, "url": "rediss+cluster://herald:pw@redis-0:6380,redis-1:6380"}
    },
    "autoscaling": {
        "autoscaling": {"enabled": True, "minReplicas": 3, "openStreams": {"enabled": True}}
    },
    "ingress": {
        "ingress": {
            "enabled": True,
            "tls": [{"secretName": "herald-tls", "hosts": ["herald.example.com"]}],
        }
    },
    "httproute": {
        "httpRoute": {
            "enabled": True,
            "parentRefs": [{"name": "public", "namespace": "gateways"}],
            "hostnames": ["herald.example.com"],
        }
    },
    "all-workers": {
        "workers": {
            "stocks": {"enabled": True},
            "typewriter": {"enabled": True, "resources": {"requests": {"cpu": "10m"}}},
            "online": {"enabled": True},
            "logs": {
                "enabled": True,
                "volumes": [{"name": "logs", "hostPath": {"path": "/var/log/app"}}],
                "volumeMounts": [{"name": "logs", "mountPath": "/logs", "readOnly": True}],
            },
        },
        "config": {"logsFiles": "app=/logs/app.log", "stocksSymbols": "ACME=10"},
    },
    "existing-secret": {"existingSecret": "herald-secrets", "redis": {"deploy": False}},
    "auth-monitoring-netpol": {
        "replicaCount": 1,
        "auth": {
            "jwtKey": "a-long-enough-hs256-secret-for-tests",
            "token": "x.y.z",
            "metricsToken": "scrape-secret",
            "typewriterApiKey": "sk-upstream",
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "networkPolicy": {
            "enabled": True,
            "from": [{"namespaceSelector": {"matchLabels": {"ingress": "true"}}}],
        },
    },
}

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def helm() -> str:
    fetched = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch_helm.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if fetched.returncode != 0:
        message = f"could not fetch helm: {fetched.stderr.strip()[-500:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return fetched.stdout.strip()


def values_file(directory: Path, name: str, values: dict[str, Any]) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(json.dumps(values))  # JSON is YAML
    return path


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60)


def render(helm: str, directory: Path, values: dict[str, Any], name: str = "x") -> list[Any]:
    done = run_helm(
        helm,
        "template",
        "herald",
        str(CHART),
        "--namespace",
        "apps",
        "--kube-version",
        KUBE_VERSION,
        "-f",
        str(values_file(directory, name, values)),
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="session")
def rendered(helm: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    directory = tmp_path_factory.mktemp("values")
    return {name: render(helm, directory, values, name) for name, values in VALUE_SETS.items()}


def only(docs: list[Any], kind: str, name: str | None = None) -> Any:
    matching = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(matching) == 1, f"{len(matching)} {kind} {name or ''}"
    return matching[0]


def kinds(docs: list[Any]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def server(docs: list[Any]) -> Any:
    return only(docs, "Deployment", "herald")


def pods(docs: list[Any]) -> Iterator[Any]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            yield doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield doc["spec"]


# --------------------------------------------------------------------------- validity


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_chart_lints_strictly(helm: str, tmp_path: Path, name: str) -> None:
    done = run_helm(
        helm,
        "lint",
        "--strict",
        str(CHART),
        "-f",
        str(values_file(tmp_path, name, VALUE_SETS[name])),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout


@pytest.mark.parametrize("kube", [KUBE_VERSION, kubernetes_validate.latest_version()])
@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_manifest_validates_against_the_kubernetes_schemas_with_no_unknown_field(
    rendered: dict[str, list[Any]], name: str, kube: str
) -> None:
    for doc in rendered[name]:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, kube, strict=True)


@pytest.fixture(scope="session")
def crd_validator() -> Path:
    """`scripts/validate_crds.mjs` beside the npm packages it imports (cached in .cache)."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        message = "node and npm are needed to validate the custom resources"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    home = ROOT / ".cache" / "crd-validators"
    home.mkdir(parents=True, exist_ok=True)
    packages = [f"{name}@{version}" for name, version in CRD_VALIDATORS.items()]
    if not all((home / "node_modules" / name).is_dir() for name in CRD_VALIDATORS):
        (home / "package.json").write_text('{"private": true, "type": "module"}')
        installed = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(home), *packages],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert installed.returncode == 0, installed.stderr[-2000:]
    script = home / "validate_crds.mjs"
    shutil.copyfile(ROOT / "scripts" / "validate_crds.mjs", script)
    return script


def test_the_custom_resources_validate_against_their_schemas(
    rendered: dict[str, list[Any]], crd_validator: Path, tmp_path: Path
) -> None:
    custom = [d for docs in rendered.values() for d in docs if d["kind"] in CUSTOM_KINDS]
    assert {d["kind"] for d in custom} == CUSTOM_KINDS
    manifests = tmp_path / "custom.json"
    manifests.write_text(json.dumps(custom))
    done = subprocess.run(
        ["node", str(crd_validator), str(manifests)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("valid ") == len(custom)


def test_an_invalid_custom_resource_is_caught(crd_validator: Path, tmp_path: Path) -> None:
    bad = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "bad"},
        "spec": {"selector": {}, "endpoints": [{"port": 8000}]},
    }
    manifests = tmp_path / "bad.json"
    manifests.write_text(json.dumps([bad]))
    done = subprocess.run(
        ["node", str(crd_validator), str(manifests)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "invalid ServiceMonitor bad" in done.stdout


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("replicaCount=two", "replicaCount"),
        ("replicaCnt=2", "replicaCnt"),
        ("config.heartbeatSeconds=0", "heartbeatSeconds"),
        ("config.jwtAlgorithm=none", "jwtAlgorithm"),
        ("config.heartbeat=5", "heartbeat"),
        ("redis.url=http://redis:6379", "url"),
        ("ingress.hosts[0].paths[0]=events", "paths"),
    ],
)
def test_the_schema_rejects_a_bad_value_and_names_it(
    helm: str, setting: str, complaint: str
) -> None:
    done = run_helm(helm, "lint", "--strict", str(CHART), "--set", setting)
    assert done.returncode != 0
    assert complaint in done.stdout + done.stderr


def test_without_redis_the_chart_says_what_to_set(helm: str) -> None:
    done = run_helm(helm, "template", "herald", str(CHART), "--set", "redis.deploy=false")
    assert done.returncode != 0
    assert "Herald needs Redis: set redis.url" in done.stderr


def test_a_redis_url_alone_means_that_redis_and_none_of_the_chart_s(
    helm: str, tmp_path: Path
) -> None:
    url = "rediss://herald:secret@redis.example.com:6380/0"
    common = [str(CHART), "--set", f"redis.url={url}", "--set", "networkPolicy.enabled=true"]
    linted = run_helm(helm, "lint", "--strict", *common)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    done = run_helm(helm, "template", "herald", *common, "--kube-version", KUBE_VERSION)
    assert done.returncode == 0, done.stderr
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    assert "StatefulSet" not in kinds(docs)
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "NetworkPolicy"] == ["herald"]
    assert only(docs, "Secret")["stringData"] == {"HERALD_REDIS_URL": url}
    (container,) = server(docs)["spec"]["template"]["spec"]["containers"]
    assert "env" not in container, "nothing may override the Secret's HERALD_REDIS_URL"
    notes = run_helm(helm, "install", "herald", *common, "--dry-run=client")
    assert notes.returncode == 0, notes.stderr
    assert "NOTES:" in notes.stdout
    assert "the chart's single Redis" not in notes.stdout


def test_the_config_values_are_generated_from_the_settings_object() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chart_settings.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- what operators rely on


def test_probes_point_at_healthz_and_readyz_on_the_http_port(
    rendered: dict[str, list[Any]],
) -> None:
    (container,) = server(rendered["defaults"])["spec"]["template"]["spec"]["containers"]
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    configmap = only(rendered["defaults"], "ConfigMap")
    assert configmap["data"]["HERALD_PORT"] == "8000"
    assert configmap["data"]["HERALD_HOST"] == "0.0.0.0"


@pytest.mark.parametrize("shutdown", [10, 25.5])
def test_the_grace_period_covers_prestop_and_herald_s_shutdown(
    helm: str, tmp_path: Path, shutdown: float
) -> None:
    docs = render(helm, tmp_path, {"config": {"shutdownTimeoutSeconds": shutdown}})
    pod = server(docs)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + shutdown
    assert only(docs, "ConfigMap")["data"]["HERALD_SHUTDOWN_TIMEOUT_SECONDS"] == str(shutdown)


def test_rolling_updates_never_lower_capacity_and_a_config_change_rolls_the_pods(
    helm: str, tmp_path: Path
) -> None:
    before = server(render(helm, tmp_path, {}, "a"))
    after = server(render(helm, tmp_path, {"config": {"heartbeatSeconds": 5}}, "b"))
    assert before["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    annotations = before["spec"]["template"]["metadata"]["annotations"]
    changed = after["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"] != changed["checksum/config"]
    assert annotations["checksum/secret"] == changed["checksum/secret"]


def test_replicas_spread_over_zones_and_nodes(rendered: dict[str, list[Any]]) -> None:
    spread = server(rendered["defaults"])["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == [
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    ]


def test_the_ingress_carries_the_sse_essentials(rendered: dict[str, list[Any]]) -> None:
    ingress = only(rendered["ingress"], "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "herald", "port": {"name": "http"}}


def test_the_httproute_has_no_request_timeout(rendered: dict[str, list[Any]]) -> None:
    (rule,) = only(rendered["httproute"], "HTTPRoute")["spec"]["rules"]
    assert rule["timeouts"] == {"request": "0s"}
    assert rule["backendRefs"] == [{"name": "herald", "port": 80}]


def test_a_disruption_budget_exists_only_with_more_than_one_replica(
    rendered: dict[str, list[Any]],
) -> None:
    assert only(rendered["defaults"], "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert "PodDisruptionBudget" in kinds(rendered["autoscaling"])
    assert "PodDisruptionBudget" not in kinds(rendered["auth-monitoring-netpol"])


def test_autoscaling_on_cpu_and_on_open_streams(rendered: dict[str, list[Any]]) -> None:
    hpa = only(rendered["autoscaling"], "HorizontalPodAutoscaler")
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "herald_subscribers"
    assert hpa["spec"]["minReplicas"] == 3
    assert "replicas" not in server(rendered["autoscaling"])["spec"]


def test_every_pod_runs_restricted(rendered: dict[str, list[Any]]) -> None:
    checked = 0
    for docs in rendered.values():
        for pod in pods(docs):
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            assert pod["automountServiceAccountToken"] is False
            for container in pod["containers"]:
                context = container["securityContext"]
                assert context["allowPrivilegeEscalation"] is False
                assert context["readOnlyRootFilesystem"] is True
                assert context["capabilities"] == {"drop": ["ALL"]}
                checked += 1
    assert checked >= 20


def test_environment_names_are_exactly_the_settings(
    rendered: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {f"HERALD_{name.upper()}" for name in Settings.model_fields}
    for docs in rendered.values():
        names = set(only(docs, "ConfigMap")["data"])
        for doc in docs:
            if doc["kind"] == "Secret":
                names |= set(doc["stringData"])
        for pod in pods(docs):
            for container in pod["containers"]:
                names |= {e["name"] for e in container.get("env", [])}
        assert names <= settings, names - settings
    data = only(rendered["all-workers"], "ConfigMap")["data"]
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    parsed = Settings()  # the rendered values are what Herald accepts
    assert parsed.logs_files == "app=/logs/app.log"
    assert parsed.cors_origins == []


def test_secrets_come_from_the_chart_s_secret_or_an_existing_one(
    rendered: dict[str, list[Any]],
) -> None:
    secret = only(rendered["external-redis"], "Secret")
    assert secret["stringData"] == {
        "HERALD_REDIS_URL": "rediss://herald:secret@redis.example.com:6380/0"
    }
    assert "HERALD_REDIS_URL" not in only(rendered["external-redis"], "ConfigMap")["data"]
    existing = rendered["existing-secret"]
    assert "Secret" not in kinds(existing)
    (container,) = server(existing)["spec"]["template"]["spec"]["containers"]
    assert {"secretRef": {"name": "herald-secrets", "optional": True}} in container["envFrom"]
    assert only(rendered["auth-monitoring-netpol"], "Secret")["stringData"].keys() == {
        "HERALD_JWT_KEY",
        "HERALD_TOKEN",
        "HERALD_METRICS_TOKEN",
        "HERALD_TYPEWRITER_API_KEY",
    }


def test_the_service_monitor_scrapes_with_the_metrics_token(
    rendered: dict[str, list[Any]],
) -> None:
    (endpoint,) = only(rendered["auth-monitoring-netpol"], "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "herald", "key": "HERALD_METRICS_TOKEN"},
    }


def test_the_trial_redis_keeps_an_append_only_file_on_a_volume(
    rendered: dict[str, list[Any]],
) -> None:
    redis = only(rendered["deploy-redis"], "StatefulSet")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert container["args"][container["args"].index("--appendonly") + 1] == "yes"
    assert container["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    (env,) = server(rendered["deploy-redis"])["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == {"name": "HERALD_REDIS_URL", "value": "redis://herald-redis:6379/0"}
    assert "StatefulSet" not in kinds(rendered["external-redis"])


def test_one_deployment_per_worker_and_only_online_counts_by_default(
    rendered: dict[str, list[Any]],
) -> None:
    def workers(docs: list[Any]) -> dict[str, Any]:
        return {
            d["metadata"]["name"]: d
            for d in docs
            if d["kind"] == "Deployment" and d["metadata"]["name"] != "herald"
        }

    assert set(workers(rendered["defaults"])) == {"herald-online"}
    every = workers(rendered["all-workers"])
    assert set(every) == {f"herald-{n}" for n in ("stocks", "logs", "online", "typewriter")}
    for name, deployment in every.items():
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["worker", name.removeprefix("herald-")]
    (logs,) = every["herald-logs"]["spec"]["template"]["spec"]["containers"]
    assert {"name": "logs", "mountPath": "/logs", "readOnly": True} in logs["volumeMounts"]


def test_helm_test_publishes_and_reads_back_through_the_service(
    rendered: dict[str, list[Any]],
) -> None:
    pod = only(rendered["defaults"], "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["check", "--url", "http://herald:80"]


def test_the_notes_tell_how_to_publish_and_subscribe(helm: str, tmp_path: Path) -> None:
    done = run_helm(
        helm, "install", "herald", str(CHART), "--dry-run=client", "--namespace", "apps"
    )
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert 'curl -N "$URL/events?topic=stocks.AAPL"' in notes
    assert 'curl -s "$URL/publish"' in notes
    assert "helm test herald" in notes


# --------------------------------------------------------------------------- the rendered pods, run


def test_the_rendered_pods_run_herald_and_pass_the_helm_test(
    helm: str, tmp_path: Path, flushed_redis: RedisServer
) -> None:
    """The server's and a worker's container, run as processes with the environment the
    chart gives them, and the test hook's command against them."""
    values = {
        "redis": {"deploy": False, "url": flushed_redis.url},
        "workers": {"stocks": {"enabled": True}},
        "config": {"stocksSymbols": "ACME=10", "stocksRate": 20, "heartbeatSeconds": 2},
    }
    docs = render(helm, tmp_path, values)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env |= only(docs, "ConfigMap")["data"] | only(docs, "Secret")["stringData"]
    # The pod's own network; port 0, so that no other process can take its port first.
    env |= {"HERALD_PORT": "0", "HERALD_HOST": "127.0.0.1"}

    def run(args: list[str], name: str) -> subprocess.Popen[bytes]:
        """`herald ARGS…`, its output in NAME.stdout.log and NAME.stderr.log."""
        with (
            (tmp_path / f"{name}.stdout.log").open("wb") as out,
            (tmp_path / f"{name}.stderr.log").open("wb") as err,
        ):
            return subprocess.Popen(
                [sys.executable, "-m", "service", *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=err,
            )

    (server_container,) = server(docs)["spec"]["template"]["spec"]["containers"]
    (worker_container,) = only(docs, "Deployment", "herald-stocks")["spec"]["template"]["spec"][
        "containers"
    ]
    (hook,) = only(docs, "Pod")["spec"]["containers"]
    herald_process = run(server_container["args"], "server")
    worker_process = run(worker_container["args"], "worker")
    herald = Herald(
        0, herald_process, env, tmp_path / "server.stdout.log", tmp_path / "server.stderr.log"
    )
    try:
        wait_ready(herald)
        url = herald.url
        args = [url if a == "http://herald:80" else a for a in hook["args"]]
        check = subprocess.run(
            [sys.executable, "-m", "service", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.startswith("ok:")
        ticks = 0
        deadline = time.monotonic() + 10
        while ticks < 5 and time.monotonic() < deadline:
            ticks = httpx.get(f"{url}/topics/stocks.ACME").json()["length"]
            time.sleep(0.1)
        assert ticks >= 5, (tmp_path / "worker.stderr.log").read_text()
    finally:
        grace = server(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        for process in (worker_process, herald_process):
            process.send_signal(signal.SIGTERM)
            assert process.wait(grace) == 0
