"""The deploy/ files parse and carry what the stack needs: compose services, the Dockerfile's
stages and user, Kubernetes objects that refer to each other correctly, and the generated
ConfigMaps in step with alert_rules/ and templates/."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from consumers.config.settings import load_settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S = DEPLOY / "kubernetes"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None or doc.get("kind") == "Kustomization":
                continue
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def test_compose_has_the_whole_stack() -> None:
    compose = _yaml(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert {
        "kafka",
        "postgres",
        "mailpit",
        "runwatch-1",
        "runwatch-2",
        "prometheus",
        "grafana",
    } <= (services.keys())
    kafka = services["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]  # KRaft: no ZooKeeper
    assert "KAFKA_CONTROLLER_QUORUM_VOTERS" in kafka
    assert not any("zookeeper" in name for name in services)
    for name in ("runwatch-1", "runwatch-2"):
        replica = services[name]
        build = replica["build"]
        assert (build["context"], build["dockerfile"]) == ("..", "deploy/Dockerfile")
        assert replica["init"] is True  # PID 1 is an init that forwards SIGTERM
        assert replica["command"][:2] == ["serve", "--config"]
        assert "/readyz" in " ".join(replica["healthcheck"]["test"])
        assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert replica["environment"]["RUNWATCH_STORE__URL"].startswith("postgresql://")
    assert services["runwatch-1"]["hostname"] != services["runwatch-2"]["hostname"]
    # Every bind mount exists, and Prometheus scrapes both replicas by those host names.
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), volume
    scrape = _yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"][0]
    assert scrape["job_name"] == "runwatch"
    assert scrape["static_configs"][0]["targets"] == ["runwatch-1:9464", "runwatch-2:9464"]


def test_compose_and_container_configs_are_valid_runwatch_configs() -> None:
    compose = load_settings(DEPLOY / "compose" / "runwatch.yaml")
    assert compose.kafka.bootstrap_servers == "kafka:9092"
    assert compose.smtp.host == "mailpit" and compose.metrics.listen == "0.0.0.0:9464"
    assert set(compose.receivers) == {"ml-oncall", "chat"}
    image = load_settings(DEPLOY / "runwatch.container.yaml")
    assert image.metrics.listen == "0.0.0.0:9464" and image.logging.format == "json"


def test_dockerfile_is_multi_stage_and_runs_unprivileged() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)$", text, re.MULTILINE)
    assert len(stages) >= 2
    # Dependencies only from the lock, hash-checked; tests/test_image.py builds and runs it.
    assert "pip install --require-hashes -r /src/requirements.lock" in text
    assert "COPY --from=venv /opt/runwatch /opt/runwatch" in text
    assert re.search(r"^HEALTHCHECK .*healthcheck\.py", text, re.MULTILINE | re.DOTALL)
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert text.index(users[-1]) > text.rindex("FROM ")
    for source in re.findall(r"^COPY (?!--from)(\S+) ", text, re.MULTILINE):
        assert (DEPLOY.parent / source).exists(), source
    assert '"serve", "--config", "/etc/runwatch/runwatch.yaml"' in text


def test_kubernetes_objects_fit_together(tmp_path: Path) -> None:
    objects = _k8s_objects()
    deployment = objects[("Deployment", "runwatch")]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] >= 2
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9464}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Every ConfigMap and Secret the pod uses is defined, with the keys it reads.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    secret = objects[("Secret", "runwatch-secrets")]
    for volume in pod["volumes"]:
        assert volume["name"] in mounts
        if "configMap" in volume:
            assert ("ConfigMap", volume["configMap"]["name"]) in objects
        if "secret" in volume:
            assert volume["secret"]["secretName"] == "runwatch-secrets"
    for env in container["env"]:
        ref = env["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "runwatch-secrets" and ref["key"] in secret["stringData"]
    assert mounts["rules"] == "/etc/runwatch/alert_rules"
    # The mounted config is valid, and its secret files are keys of the Secret.
    config_text = objects[("ConfigMap", "runwatch-config")]["data"]["runwatch.yaml"]
    (tmp_path / "runwatch.yaml").write_text(config_text)
    settings = load_settings(tmp_path / "runwatch.yaml")
    assert settings.rules_dir == Path(mounts["rules"])
    assert settings.templates_dir == Path("/etc/runwatch/templates")
    secret_files = re.findall(r"/run/secrets/runwatch/([\w-]+)", config_text)
    assert secret_files and set(secret_files) <= set(secret["stringData"])
    assert mounts["secrets"] == "/run/secrets/runwatch"
    assert settings.metrics.auth is not None and not settings.metrics.auth.protect_probes
    # Service, PodDisruptionBudget and ServiceMonitor select the pods and name the port.
    service = objects[("Service", "runwatch")]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["name"] == "metrics"
    pdb = objects[("PodDisruptionBudget", "runwatch")]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    monitor = objects[("ServiceMonitor", "runwatch")]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == "metrics"
    assert endpoint["authorization"]["credentials"]["key"] in secret["stringData"]


def test_configmaps_are_built_from_alert_rules_and_templates() -> None:
    spec = importlib.util.spec_from_file_location("build_configmaps", K8S / "build_configmaps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (K8S / "configmaps.yaml").read_text() == module.render(), (
        "deploy/kubernetes/configmaps.yaml is stale: run `make k8s-configmaps`"
    )
    objects = _k8s_objects()
    rules = objects[("ConfigMap", "runwatch-rules")]["data"]
    root = DEPLOY.parent
    assert set(rules) == {p.name for p in (root / "alert_rules").glob("*.yaml")}
    assert rules["runs.yaml"] == (root / "alert_rules" / "runs.yaml").read_text()
    webhook = objects[("ConfigMap", "runwatch-templates-webhook")]["data"]
    assert set(webhook) == {p.name for p in (root / "templates" / "webhook").iterdir()}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds_the_manifests() -> None:
    assert shutil.which("kubectl") is not None
    done = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(done.stdout))
    assert kinds == sorted(
        ["ConfigMap"] * 4 + ["Secret", "Service", "Deployment", "PodDisruptionBudget"]
    )


def test_grafana_dashboard_and_provisioning_agree() -> None:
    board = orjson.loads((DEPLOY / "grafana" / "dashboards" / "runwatch.json").read_bytes())
    datasource = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    uid = datasource["datasources"][0]["uid"]
    titles = {panel["title"] for panel in board["panels"]}
    assert {
        "Events by status",
        "Consumer lag by partition",
        "Notification latency",
        "Notifications by receiver and result",
        "Outbox depth",
        "Dead letters",
        "Run failures by experiment",
    } <= titles
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid and target["expr"].strip()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    latency = next(p for p in board["panels"] if p["title"] == "Notification latency")
    assert [t["legendFormat"] for t in latency["targets"]] == ["p50", "p99"]
    provider = _yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "runwatch.yml")
    path = provider["providers"][0]["options"]["path"]
    grafana = _yaml(DEPLOY / "docker-compose.yml")["services"]["grafana"]
    assert f"./grafana/dashboards:{path}:ro" in grafana["volumes"]


def test_image_healthcheck_is_healthy_on_200_and_401_only() -> None:
    """deploy/healthcheck.py (the image's HEALTHCHECK) against a real HTTP server; 401 means
    the process answered but metrics.auth protects the probes."""

    class Status(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(int(self.path.strip("/")))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        codes = {}
        for status in (200, 401, 403, 500, 503):
            url = f"http://127.0.0.1:{server.server_address[1]}/{status}"
            done = subprocess.run(
                [sys.executable, str(DEPLOY / "healthcheck.py")],
                env={"HEALTHCHECK_URL": url},
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            codes[status] = done.returncode
    finally:
        server.shutdown()
        server.server_close()
    assert codes == {200: 0, 401: 0, 403: 1, 500: 1, 503: 1}


def test_the_image_runs_optimized_from_byte_code_it_carries() -> None:
    """PYTHONOPTIMIZE=2 (docs/operations.md, "Memory") with a read-only root and
    PYTHONDONTWRITEBYTECODE: without .opt-2.pyc files in the image every start would compile
    all it imports from source."""
    text = (DEPLOY / "Dockerfile").read_text()
    runtime = text[text.rindex("\nFROM ") :]
    env = runtime.index("PYTHONOPTIMIZE=2")
    assert "PYTHONDONTWRITEBYTECODE=1" in runtime
    assert text.count("python -OO -m compileall") == 2  # the dependencies, runwatch itself
    assert runtime.index("python3 -m compileall", env) > env  # the standard library, at level 2
    assert text.count("! -name '*.opt-2.pyc' -delete") == 2
