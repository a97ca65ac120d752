"""The Helm chart (deploy/helm/tenantry), rendered and checked as a cluster would take it.

Rendering is Helm's own: `helm-python-sdk` (PyPI) binds Helm v4's Go SDK (Go templates, Sprig, `required`,
`fail`, hooks), so a template that Helm would refuse fails here too. Every manifest is validated against the
Kubernetes JSON schemas `kubernetes-validate` (PyPI) carries, strictly (an unknown field is an error), at the
oldest Kubernetes the chart allows and the newest the package knows. The ServiceMonitor is a Prometheus
Operator CRD, whose schema no registry package ships: it is checked against the fields the chart uses.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tenantry.settings import Settings

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "tenantry"
MIN_KUBE = "1.30"  # Chart.yaml's kubeVersion
KUBE_VERSIONS = (MIN_KUBE, kubernetes_validate.utils.major_minor(kubernetes_validate.utils.latest_version()))
SECRET = "tenantry-secrets"
REQUIRED = {"secrets": {"existingSecret": SECRET}}
SECRET_ENV = {
    "TENANTRY_DATABASE_PASSWORD": "database-password",
    "TENANTRY_DB_APP_PASSWORD": "db-app-password",
    "TENANTRY_ADMIN_API_KEY": "admin-api-key",
    "TENANTRY_OPS_API_KEY": "ops-api-key",
    "TENANTRY_JWT_SECRET": "jwt-secret",
    "TENANTRY_SECRET_KEYS": "secret-keys",
}
# Every optional part turned on, and the defaults turned the other way.
EVERYTHING: dict[str, Any] = {
    "secrets": {
        "existingSecret": SECRET,
        "keys": {"stripeApiKey": "stripe-api-key", "stripeWebhookSecret": "stripe-webhook-secret"},
    },
    "autoscaling": {"enabled": False},
    "replicaCount": 3,
    "podDisruptionBudget": {"maxUnavailable": None, "minAvailable": 2},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}, "tlsConfig": {"serverName": "gw"}},
    "serviceAccount": {"create": True},
    "tls": {"existingSecret": "tenantry-tls"},
    "imagePullSecrets": [{"name": "registry"}],
    "settings": {
        "log_format": "json",
        "max_request_bytes": 1048576,
        "meter_timeout_seconds": 0.25,
        "mcp_stateful": True,
        "mcp_allowed_hosts": ["mcp.example.com"],
        "metrics_tenant_labels": 50,
        "plan_limits": {"free": {"calls_per_window": 100, "window_seconds": 60}},
    },
    "extraEnv": [{"name": "OTEL_TRACES_EXPORTER", "value": "otlp"}],
}

# The fields of monitoring.coreos.com/v1 ServiceMonitor the chart writes, as the operator's CRD types them.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "authorization": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "type": {"type": "string"},
                                    "credentials": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["key"],
                                        "properties": {"name": {"type": "string"}, "key": {"type": "string"}},
                                    },
                                },
                            },
                            "tlsConfig": {"type": "object"},
                        },
                    },
                },
            },
        },
    },
}


def render(values: dict[str, Any], chart: Path = CHART) -> list[dict[str, Any]]:
    """The manifests Helm renders for `values` (NOTES.txt and empty documents left out)."""
    with helm.Chart.load(chart) as loaded:
        files = loaded.render(values, name="prod", namespace="tenantry")
    docs: list[dict[str, Any]] = []
    for name, text in sorted(files.items()):
        if name.endswith(".yaml"):
            docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


def validate(doc: dict[str, Any], version: str) -> None:
    """Raise unless `doc` is a valid object of its kind at Kubernetes `version`."""
    if doc["kind"] == "ServiceMonitor":
        jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def container(doc: dict[str, Any]) -> dict[str, Any]:
    pod = doc["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    result: dict[str, Any] = pod["containers"][0]
    return result


def env(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(doc)["env"]}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize(
    ("variant", "kinds"),
    [
        (REQUIRED, {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Job"}),
        (EVERYTHING, {"Deployment", "Service", "PodDisruptionBudget", "Job", "ServiceMonitor", "ServiceAccount"}),
    ],
    ids=["defaults", "everything"],
)
def test_every_rendered_manifest_is_valid_kubernetes(variant: dict[str, Any], kinds: set[str], version: str) -> None:
    docs = render(variant)
    assert {d["kind"] for d in docs} == kinds
    for doc in docs:
        validate(doc, version)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_helm_lint_finds_nothing_wrong(version: str) -> None:
    report = helm.lint(CHART, REQUIRED, strict=True, kube_version=f"{version}.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_a_broken_template_or_an_invalid_manifest_fails_the_suite(tmp_path: Path) -> None:
    """The checks above would catch a mistake: a template Helm cannot execute, and one that renders YAML
    Kubernetes would refuse."""
    chart = tmp_path / "tenantry"
    shutil.copytree(CHART, chart)
    deployment = chart / "templates" / "deployment.yaml"
    original = deployment.read_text()

    deployment.write_text(original + '{{ include "tenantry.nosuch" . }}\n')
    with pytest.raises(helm.HelmRenderError, match=r"tenantry\.nosuch"):
        render(REQUIRED, chart)

    old = "revisionHistoryLimit: 5"
    assert old in original
    deployment.write_text(original.replace(old, 'revisionHistoryLimit: "five"'))
    broken = one(render(REQUIRED, chart), "Deployment")
    with pytest.raises(kubernetes_validate.ValidationError, match="revisionHistoryLimit"):
        validate(broken, MIN_KUBE)

    deployment.write_text(original.replace(old, old + "\n  replicaz: 3"))
    with pytest.raises(kubernetes_validate.ValidationError, match="replicaz"):
        validate(one(render(REQUIRED, chart), "Deployment"), MIN_KUBE)


def test_secrets_are_only_references_to_an_existing_secret() -> None:
    for variant in (REQUIRED, EVERYTHING):
        docs = render(variant)
        assert not [d for d in docs if d["kind"] == "Secret"], "the chart never carries a secret"
        for workload in (one(docs, "Deployment"), one(docs, "Job")):
            found = env(workload)
            expected = dict(SECRET_ENV)
            if variant is EVERYTHING:
                expected |= {
                    "TENANTRY_STRIPE_API_KEY": "stripe-api-key",
                    "TENANTRY_STRIPE_WEBHOOK_SECRET": "stripe-webhook-secret",
                }
            for name, key in expected.items():
                assert "value" not in found[name]
                assert found[name]["valueFrom"] == {"secretKeyRef": {"name": SECRET, "key": key}}
            assert "TENANTRY_STRIPE_API_KEY" in found or variant is REQUIRED
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert defaults["secrets"]["existingSecret"] == ""
    assert all(isinstance(v, str) for v in defaults["secrets"]["keys"].values())  # key names, no values


def test_rendering_refuses_a_missing_secret_name_and_a_secret_in_values() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"secrets\.existingSecret"):
        render({})
    with pytest.raises(helm.HelmRenderError, match=r"settings\.admin_api_key is a secret"):
        render({**REQUIRED, "settings": {"admin_api_key": "x" * 32}})
    with pytest.raises(helm.HelmRenderError, match=r"settings\.db_pool_size is set by the chart"):
        render({**REQUIRED, "settings": {"db_pool_size": 5}})
    with pytest.raises(helm.HelmRenderError, match="without the TENANTRY_ prefix"):
        render({**REQUIRED, "settings": {"TENANTRY_LOG_LEVEL": "debug"}})
    with pytest.raises(helm.HelmRenderError, match="exactly one of maxUnavailable and minAvailable"):
        render({**REQUIRED, "podDisruptionBudget": {"maxUnavailable": 1, "minAvailable": 1}})


def test_the_rendered_environment_is_a_valid_production_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every TENANTRY_* variable the chart writes names a real setting, and with the Secret's keys filled in
    the gateway's own Settings accept the whole environment (production checks included)."""
    deployment = one(render(EVERYTHING), "Deployment")
    secrets = {
        "database-password": "owner password",
        "db-app-password": "app password",
        "admin-api-key": "a" * 32,
        "ops-api-key": "o" * 32,
        "jwt-secret": "j" * 40,
        "secret-keys": '["Zm9yLXRlc3RzLW9ubHktMDEyMzQ1Njc4OWFiY2RlZmc="]',
        "stripe-api-key": "sk_test_x",
        "stripe-webhook-secret": "whsec_x",
    }
    fields = {name.upper() for name in Settings.model_fields}
    for name, entry in env(deployment).items():
        if not name.startswith("TENANTRY_"):
            continue
        assert name.removeprefix("TENANTRY_") in fields, f"{name} is not a setting"
        value = entry["value"] if "value" in entry else secrets[entry["valueFrom"]["secretKeyRef"]["key"]]
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.environment == "production"
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    assert settings.max_request_bytes == 1048576
    assert settings.meter_timeout_seconds == 0.25
    assert settings.mcp_allowed_hosts == ["mcp.example.com"]
    assert settings.plan_limits["free"].calls_per_window == 100
    assert settings.db_pool_size == 20
    assert settings.tls_certfile == "/etc/tenantry/tls/tls.crt"
    assert settings.database_password == "owner password"
    assert settings.stripe_api_key == "sk_test_x"


def test_behind_pgbouncer_the_pooler_setting_and_a_direct_url_reach_the_gateway_and_the_migrations() -> None:
    plain = env(one(render(REQUIRED), "Deployment"))
    assert "TENANTRY_DATABASE_DIRECT_URL" not in plain
    assert plain["TENANTRY_DB_TRANSACTION_POOLER"]["value"] == "false"
    direct = "postgresql+asyncpg://tenantry_owner@postgres-direct:5432/tenantry"
    pooled = {
        **REQUIRED,
        "database": {
            "url": "postgresql+asyncpg://tenantry_owner@pgbouncer:6432/tenantry",
            "transactionPooler": True,
            "directUrl": direct,
        },
    }
    for kind in ("Deployment", "Job"):
        found = env(one(render(pooled), kind))
        assert found["TENANTRY_DATABASE_DIRECT_URL"]["value"] == direct
        assert found["TENANTRY_DB_TRANSACTION_POOLER"]["value"] == "true"


def test_liveness_does_not_depend_on_postgresql_and_readiness_is_the_public_health() -> None:
    """Liveness and startup ask /health/live (the process answers; a PostgreSQL blip does not restart pods:
    tests/api/test_health.py), readiness asks the public /health (503 while a dependency fails)."""
    for variant, scheme in ((REQUIRED, "HTTP"), (EVERYTHING, "HTTPS")):
        gateway = container(one(render(variant), "Deployment"))
        port = gateway["ports"][0]
        assert (port["name"], port["containerPort"]) == ("http", 8000)
        probes = {p: gateway[f"{p}Probe"]["httpGet"] for p in ("startup", "liveness", "readiness")}
        assert probes["startup"]["path"] == probes["liveness"]["path"] == "/health/live"
        assert probes["readiness"]["path"] == "/health"
        assert {(p["port"], p["scheme"]) for p in probes.values()} == {("http", scheme)}
        # /health runs each check with a 2 s timeout: the probe must wait longer than that.
        assert gateway["readinessProbe"]["timeoutSeconds"] > 2
        assert gateway["args"] == ["tenantry", "serve"]


def test_the_service_budget_and_autoscaler_govern_the_gateway_pods_only() -> None:
    docs = render(REQUIRED)
    deployment, job = one(docs, "Deployment"), one(docs, "Job")
    gateway_labels = deployment["spec"]["template"]["metadata"]["labels"]
    migrate_labels = job["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], gateway_labels)
    service, budget = one(docs, "Service"), one(docs, "PodDisruptionBudget")
    for selector in (service["spec"]["selector"], budget["spec"]["selector"]["matchLabels"]):
        assert matches(selector, gateway_labels)
        assert not matches(selector, migrate_labels)
    hpa = one(docs, "HorizontalPodAutoscaler")
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["scaleTargetRef"] == target
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert one(render(EVERYTHING), "Deployment")["spec"]["replicas"] == 3
    requests = container(deployment)["resources"]["requests"]
    # The autoscaler's utilisation is relative to the requests.
    assert requests["cpu"]
    assert requests["memory"]


def test_migrations_run_as_a_hook_before_install_and_upgrade() -> None:
    job = one(render(EVERYTHING), "Job")
    hooks = job["metadata"]["annotations"]
    assert set(hooks["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert container(job)["args"] == ["tenantry", "migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert env(job)["TENANTRY_DATABASE_URL"] == env(one(render(EVERYTHING), "Deployment"))["TENANTRY_DATABASE_URL"]
    assert env(one(render(REQUIRED), "Job"))["TENANTRY_DATABASE_URL"]["value"].endswith("@postgres:5432/tenantry")
    # A ServiceAccount the chart creates does not exist yet when a pre-install hook runs.
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "default"


def test_the_service_monitor_scrapes_metrics_with_the_ops_key() -> None:
    docs = render(EVERYTHING)
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["scheme"]) == ("http", "/metrics", "https")
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": SECRET, "key": "ops-api-key"}}
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert "ServiceMonitor" not in {d["kind"] for d in render(REQUIRED)}


def test_each_pod_tells_the_other_replicas_where_its_stateful_sessions_live() -> None:
    """A session request that lands on another replica is forwarded to the owner's TENANTRY_REPLICA_URL:
    the pod's own IP (the downward API), on the container port, in the scheme it serves."""
    for variant, scheme in ((REQUIRED, "http"), (EVERYTHING, "https")):
        found = env(one(render(variant), "Deployment"))
        assert found["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert found["TENANTRY_REPLICA_URL"]["value"] == f"{scheme}://$(POD_IP):8000"
