"""The Helm chart (deploy/helm/predictor), checked without a cluster.

Helm's own engine (Helm v4's Go SDK, through helm-python-sdk: no helm binary) renders and lints the
chart with the values a user must give and with values-production.yaml; every object is checked against
the Kubernetes schemas (kubernetes-validate, strict) and the monitoring CRDs against prometheus-operator's
(tests/deploy/schemas); checkov scans both renders, and every finding the chart accepts says why.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import tarfile
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from app.api.body_limit import MAX_BODY_BYTES
from app.core.config import Settings
from app.core.oidc import OidcConfig, ScopeMap
from app.core.security import SCOPES
from tests.support.paths import ROOT

CHART = ROOT / "deploy" / "helm" / "predictor"
RULES = ROOT / "dashboards" / "prometheus" / "rules"
DASHBOARDS = ROOT / "dashboards" / "grafana" / "dashboards"
SCHEMAS = Path(__file__).parent / "schemas"
CHECKOV = ROOT / ".venv-chart" / "bin" / "checkov"

# The chart's kubeVersion floor, and the newest release kubernetes-validate bundles.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
# What a user must give: names of Secrets and services the chart does not create. Nothing else.
REQUIRED: dict[str, dict[str, str]] = {
    "auth": {"existingSecret": "predictor-auth"},
    "database": {"existingSecret": "predictor-database"},
    "modelStore": {"url": "s3://models/predictor"},
    "mlflow": {"trackingUri": "http://mlflow.mlflow:5000"},
}
PRODUCTION: dict[str, Any] = yaml.safe_load((CHART / "values-production.yaml").read_text())
VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
# (release, namespace) per example, apart: checkov's graph never matches one's pods to the other's policies.
RELEASES = {"default": ("demo", "demo"), "production": ("predictor", "predictor")}
WORKLOADS = {"Deployment", "Job", "CronJob"}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
}


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """base with override's keys laid over it, nested maps merged as Helm merges -f files."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def parse(manifests: dict[str, str]) -> list[dict[str, Any]]:
    """The objects of a render (template path -> text), in template order; NOTES.txt left out."""
    return [
        document
        for path, text in sorted(manifests.items())
        if path.endswith((".yaml", ".yml"))
        for document in yaml.safe_load_all(text)
        if document
    ]


def render(values: dict[str, Any], release: tuple[str, str] = RELEASES["default"]) -> list[dict[str, Any]]:
    name, namespace = release
    with helm.Chart.load(CHART) as chart:
        return parse(chart.render(values, name=name, namespace=namespace))


@cache
def rendered(example: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(REQUIRED if example == "default" else PRODUCTION, RELEASES[example]))


EXAMPLES = ["default", "production"]


def objects(example: str, kind: str) -> list[dict[str, Any]]:
    return [document for document in rendered(example) if document["kind"] == kind]


def one(example: str, kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        document
        for document in objects(example, kind)
        if component is None or document["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"{example}: {len(found)} {kind} objects for {component}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return workload["spec"]["template"]["metadata"]["labels"]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in container.get("env", [])}


def workloads(example: str) -> list[dict[str, Any]]:
    return [document for document in rendered(example) if document["kind"] in WORKLOADS]


# --- rendering and lint ---------------------------------------------------------------------------


def test_renders_the_issue_objects_with_the_required_values_only():
    kinds = Counter(document["kind"] for document in rendered("default"))
    # Deployments: the API's and the worker's; policies: the API's, and the worker's and trainer's.
    single = {"ServiceAccount": 1, "Service": 1, "PodDisruptionBudget": 1, "Job": 1}
    assert kinds == {**single, "Deployment": 2, "NetworkPolicy": 2}
    assert all(document["metadata"]["namespace"] == "demo" for document in rendered("default"))


def test_the_production_example_turns_on_every_optional_object():
    kinds = {document["kind"] for document in rendered("production")}
    assert {"HorizontalPodAutoscaler", "Ingress", "CronJob", "ConfigMap"} <= kinds
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds


@pytest.mark.parametrize(
    ("section", "key"), [(section, key) for section, values in REQUIRED.items() for key in values]
)
def test_a_missing_required_value_stops_the_render_naming_it(section: str, key: str):
    values = copy.deepcopy(REQUIRED)
    del values[section][key]
    with pytest.raises(helm.HelmRenderError, match=re.escape(f"{section}.{key} is required")):
        render(values)


def test_the_values_schema_refuses_a_misspelled_or_wrong_value():
    with pytest.raises(helm.HelmValuesError, match="additional properties 'replica' not allowed"):
        render(merged(REQUIRED, {"api": {"replica": 3}}))
    with pytest.raises(helm.HelmValuesError, match="modelStore/url"):
        render(merged(REQUIRED, {"modelStore": {"url": "var/model-versions"}}))


@pytest.mark.parametrize("example", EXAMPLES)
def test_helm_lint_is_clean(example: str):
    values = REQUIRED if example == "default" else PRODUCTION
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES_VERSIONS[0]}")
    assert report["errors"] == []
    # Severity 1 is information: Helm recommends an icon, which a chart for one project does without.
    findings = [message for message in report["messages"] if message["severity"] > 1]
    assert findings == [], findings


# --- schemas ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("example", EXAMPLES)
def test_every_object_validates_against_the_kubernetes_schemas(example: str, version: str):
    checked = 0
    for document in rendered(example):
        if (document["apiVersion"], document["kind"]) in CRD_SCHEMAS:
            continue
        name = f"{document['kind']}/{document['metadata']['name']}"
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{example}: {name} against Kubernetes {version}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{example}: {name}: {exc.message}")
        checked += 1
    assert checked >= 8


def strict(schema: Any) -> Any:
    """The CRD's schema refusing unknown fields, as the API server's strict field validation does.

    A structural schema prunes what it does not declare; unless a node keeps unknown fields
    (x-kubernetes-preserve-unknown-fields) or declares a map (additionalProperties), an unknown field
    here is a typo that Kubernetes would silently drop.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in result
        and "additionalProperties" not in result
        and not result.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[(api_version, kind)]).read_text())
    return jsonschema.Draft7Validator(strict(schema))


def crd_errors(document: dict[str, Any]) -> list[str]:
    validator = crd_validator(document["apiVersion"], document["kind"])
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)]


def test_the_monitoring_objects_validate_against_the_vendored_crd_schemas():
    for api_version, kind in CRD_SCHEMAS:
        document = one("production", kind)
        assert document["apiVersion"] == api_version
        assert crd_errors(document) == [], f"{kind}: {crd_errors(document)}"


def test_the_crd_check_catches_a_misspelled_field():
    monitor = copy.deepcopy(one("production", "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["scrapeTimout"] = "10s"
    assert any("scrapeTimout" in error for error in crd_errors(monitor))


# --- the security scan ------------------------------------------------------------------------------


def checkov(*folders: Path) -> list[dict[str, Any]]:
    """checkov's results for each folder, the scans run side by side (each takes seconds to start)."""
    if not CHECKOV.exists():
        pytest.fail(
            "checkov is not installed: `make chart-tools` (run by `make test`) puts it in .venv-chart"
        )
    # --skip-download: offline, no policy metadata from the vendor's platform.
    options = ["--framework", "kubernetes", "--output", "json", "--skip-download"]
    scans = [
        subprocess.Popen(
            [str(CHECKOV), "--directory", str(folder), *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for folder in folders
    ]
    results = []
    for scan in scans:
        out, err = scan.communicate(timeout=300)
        # 1: some check failed, which the caller reports; anything else is checkov itself failing.
        assert scan.returncode in (0, 1), err
        results.append(json.loads(out)["results"])
    return results


def write_renders(folder: Path, transform=lambda document: document) -> Path:
    folder.mkdir()
    for example in EXAMPLES:
        documents = [transform(copy.deepcopy(document)) for document in rendered(example)]
        (folder / f"{example}.yaml").write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return folder


def without_skips(document: dict[str, Any]) -> dict[str, Any]:
    annotations = document["metadata"].get("annotations", {})
    for key in [key for key in annotations if key.startswith("checkov.io/skip")]:
        del annotations[key]
    return document


def findings(checks: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(check["file_path"].strip("/"), check["resource"], check["check_id"]) for check in checks}


@pytest.mark.checkov
def test_checkov_fails_nothing_and_every_skip_is_justified_and_needed(tmp_path: Path):
    # The same renders without the chart's skip annotations too: they must fail exactly what it skips.
    chart, bare_chart = write_renders(tmp_path / "chart"), write_renders(tmp_path / "bare", without_skips)
    results, bare = checkov(chart, bare_chart)
    assert results["failed_checks"] == [], findings(results["failed_checks"])
    for check in results["skipped_checks"]:
        reason = check["check_result"]["suppress_comment"]
        assert len(reason) > 40, f"{check['check_id']} on {check['resource']}: no real reason ({reason!r})"
    # No stale skip: each one hides a finding.
    assert findings(bare["failed_checks"]) == findings(results["skipped_checks"])
    # Pulling by digest is the production example's answer, not a skip.
    skipped = findings(results["skipped_checks"])
    assert "CKV_K8S_43" not in {check_id for file, _, check_id in skipped if file == "production.yaml"}


# --- the API Deployment and every pod ---------------------------------------------------------------


def probe_path(container: dict[str, Any], probe: str) -> tuple[str, str]:
    get = container[probe]["httpGet"]
    return get["path"], get["port"]


@pytest.mark.parametrize("example", EXAMPLES)
def test_the_api_probes_health_and_readiness(example: str):
    deployment = one(example, "Deployment", "api")
    (api,) = pod_spec(deployment)["containers"]
    assert api["command"] == ["python", "-m", "app.serve"]
    assert api["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert probe_path(api, "startupProbe") == ("/health", "http")
    assert probe_path(api, "livenessProbe") == ("/health", "http")
    assert probe_path(api, "readinessProbe") == ("/ready", "http")
    # Kubernetes' graceful shutdown: the preStop hook turns /ready to 503 for drainSeconds, then
    # SIGTERM; the grace period covers both and the requests in flight.
    assert api["lifecycle"]["preStop"]["exec"]["command"] == ["python", "-m", "app.drain"]
    env = {e["name"]: e.get("value") for e in api["env"]}
    assert env["DRAIN_FILE"].startswith("/tmp/")
    assert {"name": "tmp", "mountPath": "/tmp"} in api["volumeMounts"]
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace > float(env["SHUTDOWN_DRAIN_SECONDS"]) + float(env["SHUTDOWN_TIMEOUT_SECONDS"])
    # Start-up (migrations, the first download) gets minutes; liveness only takes over after it.
    startup = api["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_pod_runs_unprivileged_on_a_read_only_filesystem(example: str):
    for workload in workloads(example):
        spec = pod_spec(workload)
        name = workload["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is False, name
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 10001, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        # Every writable path is a scratch volume of the pod's own: nothing shared, nothing persisted.
        assert all(set(volume) == {"name", "emptyDir"} for volume in volumes.values()), name
        for container in containers(workload):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert context["runAsNonRoot"] is True, name
            assert container["resources"]["limits"] and container["resources"]["requests"], name
            assert {mount["name"] for mount in container["volumeMounts"]} <= set(volumes), name


def mounts(container: dict[str, Any]) -> dict[str, str]:
    return {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}


@pytest.mark.parametrize("example", EXAMPLES)
def test_each_process_gets_the_writable_paths_the_contract_names(example: str):
    (api,) = pod_spec(one(example, "Deployment", "api"))["containers"]
    variables = env(api)
    assert variables["MODEL_CACHE_DIR"]["value"] == "/cache"
    assert {"/cache", "/tmp"} <= set(mounts(api))
    workers = int(variables["WORKERS"]["value"])
    if workers > 1:
        folder = Path(variables["PROMETHEUS_MULTIPROC_DIR"]["value"])
        # A subfolder of its own volume: app.serve deletes and recreates it, which a mount point refuses.
        assert str(folder.parent) in mounts(api)
        assert str(folder) not in mounts(api)
    else:
        assert "PROMETHEUS_MULTIPROC_DIR" not in variables
    (worker,) = pod_spec(one(example, "Deployment", "worker"))["containers"]
    assert worker["command"] == ["python", "-m", "app.worker"]
    assert env(worker)["JOBS_DIR"]["value"] in mounts(worker)
    assert {"/cache", "/tmp"} <= set(mounts(worker))


def trainers(example: str) -> list[dict[str, Any]]:
    return [
        workload
        for workload in workloads(example)
        if workload["metadata"]["labels"]["app.kubernetes.io/component"] == "trainer"
    ]


@pytest.mark.parametrize("example", EXAMPLES)
def test_the_trainer_reproduces_then_publishes_in_a_writable_copy_of_app(example: str):
    found = trainers(example)
    kinds = {workload["kind"] for workload in found}
    assert kinds == ({"Job"} if example == "default" else {"Job", "CronJob"})
    for workload in found:
        spec = pod_spec(workload)
        assert spec["restartPolicy"] == "Never"
        (copier,) = spec["initContainers"]
        assert copier["command"][-1] == "cp -R /app/. /workspace/"
        (trainer,) = spec["containers"]
        assert trainer["command"] == ["sh", "-c", "dvc repro && python -m app.cli models publish --serve"]
        assert mounts(trainer)["/app"] == mounts(copier)["/workspace"]
        assert env(trainer)["MODEL_DIR"]["value"] == "/app/models"
    if example == "production":
        by_kind = {workload["kind"]: workload for workload in found}
        assert pod_spec(by_kind["Job"]) == pod_spec(by_kind["CronJob"])
        assert by_kind["CronJob"]["spec"]["concurrencyPolicy"] == "Forbid"


SECRET_SETTINGS = {
    "DATABASE_URL", "SECRET_KEY", "ADMIN_PASSWORD", "METRICS_TOKEN", "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "REDIS_URL",
}  # fmt: skip
# Read by the libraries the app uses rather than by Settings.
LIBRARY_VARIABLES = {
    "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
    "PROMETHEUS_MULTIPROC_DIR", "HOME", "DVC_SITE_CACHE_DIR",
    "REDIS_URL",  # read from issue 14 on
}  # fmt: skip


def settings_variables() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        names.add(name.upper())
        choices = getattr(field.validation_alias, "choices", [])
        names |= {choice.upper() for choice in choices if isinstance(choice, str)}
    return names


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_process_gets_production_settings_and_secrets_only_by_reference(example: str):
    known = settings_variables() | LIBRARY_VARIABLES
    for workload in workloads(example):
        for container in pod_spec(workload)["containers"]:
            variables = env(container)
            name = f"{workload['metadata']['name']}/{container['name']}"
            assert variables["APP_ENV"]["value"] == "production", name
            assert variables["START_WORKER"]["value"] == "false", name
            assert {"DATABASE_URL", "SECRET_KEY", "ADMIN_PASSWORD", "MODEL_STORE_URL"} <= set(variables), name
            for variable, entry in variables.items():
                if variable in SECRET_SETTINGS:
                    assert set(entry) == {"name", "valueFrom"}, f"{name}: {variable} is written inline"
                    assert "secretKeyRef" in entry["valueFrom"], f"{name}: {variable}"
            unknown = set(variables) - known
            assert not unknown, f"{name} sets variables no setting reads: {sorted(unknown)}"
    assert not objects(example, "Secret"), "the chart creates no Secret: it references yours"


def leaves(tree: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves(value, f"{path}.{key}" if path else key)
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from leaves(value, f"{path}[{index}]")
    else:
        yield path, tree


def test_values_yaml_defaults_no_secret():
    secretish = re.compile(r"password|secret|token|credential|url$|uri$", re.IGNORECASE)
    for path, value in leaves(VALUES):
        key = path.rsplit(".", 1)[-1]
        # ...Key values name a key inside a Secret (SECRET_KEY), not its content.
        if secretish.search(key) and not key.endswith("Key"):
            assert value in ("", None), f"values.yaml sets {path}: secrets and URLs come from your values"
    existing = [path for path, _ in leaves(VALUES) if path.endswith("existingSecret")]
    assert len(existing) == 5


# --- the API's neighbours ---------------------------------------------------------------------------


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a LabelSelector matches these labels (matchLabels, and In / NotIn / Exists expressions)."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value, operator = labels.get(expression["key"]), expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and value is None:
            return False
    return True


@pytest.mark.parametrize("example", EXAMPLES)
def test_the_service_pdb_and_hpa_point_at_the_api_pods(example: str):
    api = one(example, "Deployment", "api")
    labels = pod_labels(api)
    service = one(example, "Service")
    assert selects({"matchLabels": service["spec"]["selector"]}, labels)
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    budget = one(example, "PodDisruptionBudget")["spec"]["selector"]
    assert selects(budget, labels)
    assert not selects(budget, pod_labels(one(example, "Deployment", "worker")))
    if example == "production":
        hpa = one(example, "HorizontalPodAutoscaler")["spec"]
        assert hpa["scaleTargetRef"]["name"] == api["metadata"]["name"]
        assert "replicas" not in api["spec"], "the HPA owns the replica count"
        metrics = {metric["type"]: metric for metric in hpa["metrics"]}
        assert metrics["Resource"]["resource"]["target"]["averageUtilization"] == 70
        assert metrics["Pods"]["pods"]["metric"]["name"] == "predictor_requests_per_second"
        for ingress in objects(example, "Ingress"):
            backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
            assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    else:
        assert api["spec"]["replicas"] == VALUES["api"]["replicas"]


def test_csv_uploads_get_an_ingress_of_their_own_unbuffered_up_to_max_csv_bytes():
    """ingress-nginx reads its body limit and buffering per Ingress: /predict/csv (Exact) gets the
    API's CSV limit and no buffering, the other routes keep the shared annotations."""
    by_name = {ingress["metadata"]["name"]: ingress for ingress in objects("production", "Ingress")}
    assert set(by_name) == {"predictor-api", "predictor-api-csv", "predictor-api-import"}
    routes, csv = by_name["predictor-api"], by_name["predictor-api-csv"]
    shared = merged(VALUES["ingress"]["annotations"], PRODUCTION["ingress"]["annotations"])
    assert routes["metadata"]["annotations"] == shared
    notes = csv["metadata"]["annotations"]
    size = notes["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert size.endswith("m") and int(size[:-1]) * 1024**2 == Settings.model_fields["max_csv_bytes"].default
    assert notes["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert notes["cert-manager.io/cluster-issuer"] == shared["cert-manager.io/cluster-issuer"]
    for rule in csv["spec"]["rules"]:
        assert [(p["path"], p["pathType"]) for p in rule["http"]["paths"]] == [("/predict/csv", "Exact")]
    assert csv["spec"]["tls"] == routes["spec"]["tls"]
    assert [r["host"] for r in csv["spec"]["rules"]] == [r["host"] for r in routes["spec"]["rules"]]
    alone = render(
        merged(PRODUCTION, {"ingress": {"csvUpload": {"enabled": False}, "modelImport": {"enabled": False}}}),
        RELEASES["production"],
    )
    assert [d["metadata"]["name"] for d in alone if d["kind"] == "Ingress"] == ["predictor-api"]


def test_model_imports_get_an_ingress_that_waits_past_the_import_timeout():
    """POST /models/import answers once the model is compiled and checked (the API stops it at
    IMPORT_TIMEOUT_SECONDS): its own Ingress (Exact path) waits longer for the answer than that."""
    from app.adapters.import_command import IMPORT_TIMEOUT_SECONDS

    by_name = {ingress["metadata"]["name"]: ingress for ingress in objects("production", "Ingress")}
    imports = by_name["predictor-api-import"]
    notes = imports["metadata"]["annotations"]
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > IMPORT_TIMEOUT_SECONDS
    shared = merged(VALUES["ingress"]["annotations"], PRODUCTION["ingress"]["annotations"])
    assert (
        notes["nginx.ingress.kubernetes.io/proxy-body-size"]
        == shared["nginx.ingress.kubernetes.io/proxy-body-size"]
    )
    for rule in imports["spec"]["rules"]:
        assert [(p["path"], p["pathType"]) for p in rule["http"]["paths"]] == [("/models/import", "Exact")]


def test_the_ingress_controller_holds_slow_bodies_and_refuses_large_ones():
    """uvicorn cuts no slow client: for ingress-nginx, a JSON body is read whole by the controller
    (under its client-body-timeout) before a replica sees it, and refused past the API's limit; the
    CSV upload, unbuffered, up to MAX_CSV_BYTES (docs/operations.md, "Slow clients")."""
    values = merged(REQUIRED, {"ingress": {"enabled": True}})
    by_name = {d["metadata"]["name"]: d for d in render(values) if d["kind"] == "Ingress"}
    routes = by_name["demo-predictor-api"]["metadata"]["annotations"]
    csv = by_name["demo-predictor-api-csv"]["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert routes[prefix + "proxy-request-buffering"] == "on"
    assert in_bytes(routes[prefix + "proxy-body-size"]) == MAX_BODY_BYTES
    assert csv[prefix + "proxy-request-buffering"] == "off"
    assert in_bytes(csv[prefix + "proxy-body-size"]) == Settings.model_fields["max_csv_bytes"].default


def in_bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([km]?)", size).groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2}[unit]


@pytest.mark.parametrize("example", EXAMPLES)
def test_network_policies_cover_every_pod(example: str):
    policies = objects(example, "NetworkPolicy")
    for workload in workloads(example):
        labels = pod_labels(workload)
        mine = [policy for policy in policies if selects(policy["spec"]["podSelector"], labels)]
        assert len(mine) == 1, f"{workload['metadata']['name']}: {len(mine)} policies"
        (policy,) = mine
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        egress_ports = {port["port"] for rule in policy["spec"]["egress"] for port in rule["ports"]}
        assert {53, 5432, 443, 5000} <= egress_ports
        ingress = policy["spec"].get("ingress", [])
        if labels["app.kubernetes.io/component"] == "api":
            # Only the API's port, from named peers: an empty `from` would let everything in.
            assert [rule["ports"] for rule in ingress] == [[{"port": "http", "protocol": "TCP"}]]
            assert ingress[0]["from"]
            same_namespace = {"podSelector": {}} in ingress[0]["from"]
            assert same_namespace == (example == "default")
        else:
            assert ingress == [], "the worker and the trainer take no connection"


def test_a_network_policy_with_no_peer_is_refused():
    values = merged(REQUIRED, {"networkPolicy": {"allowSameNamespace": False, "ingressFrom": []}})
    with pytest.raises(helm.HelmRenderError, match="nothing could reach the API"):
        render(values)


# --- an external OpenID Connect issuer (identity.oidc) ----------------------------------------------

OIDC = {
    "issuer": "https://keycloak.example.com/realms/acme",
    "audience": "predictor-api",
    "scopesClaim": "realm_access.roles",
    # A name of theirs may hold colons (Auth0's permissions): only the last one separates ours.
    "scopeMap": {"predictor-admins": ["admin", "predict"], "read:predictions": ["predict"]},
    "leewaySeconds": 30,
}
# Each value of identity.oidc and the setting it renders.
OIDC_VALUES = {
    "issuer": "oidc_issuer",
    "audience": "oidc_audience",
    "scopesClaim": "oidc_scopes_claim",
    "scopeMap": "oidc_scope_map",
    "leewaySeconds": "oidc_leeway_seconds",
    "jwksRefreshSeconds": "oidc_jwks_refresh_seconds",
    "jwksMinRefetchSeconds": "oidc_jwks_min_refetch_seconds",
}
SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
OIDC_SCHEMA: dict[str, Any] = SCHEMA["properties"]["identity"]["properties"]["oidc"]


def oidc_env(container: dict[str, Any]) -> dict[str, str]:
    return {name: entry["value"] for name, entry in env(container).items() if name.startswith("OIDC_")}


def policy_for(documents: list[dict[str, Any]], component: str) -> dict[str, Any]:
    """The NetworkPolicy that selects this component's pods."""
    (workload,) = [
        document
        for document in documents
        if document["kind"] in WORKLOADS
        and document["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    (policy,) = [
        document
        for document in documents
        if document["kind"] == "NetworkPolicy"
        and selects(document["spec"]["podSelector"], pod_labels(workload))
    ]
    return policy


def test_every_oidc_setting_has_a_value_and_the_values_default_to_the_settings_defaults():
    assert set(OIDC_VALUES.values()) == {name for name in Settings.model_fields if name.startswith("oidc_")}
    assert set(VALUES["identity"]["oidc"]) == set(OIDC_VALUES) == set(OIDC_SCHEMA["properties"])
    defaults = VALUES["identity"]["oidc"]
    assert defaults["issuer"] == "" and defaults["audience"] == "" and defaults["scopeMap"] == {}
    for value in ("scopesClaim", "leewaySeconds", "jwksRefreshSeconds", "jwksMinRefetchSeconds"):
        assert defaults[value] == Settings.model_fields[OIDC_VALUES[value]].default, value


def test_the_schema_bounds_are_the_settings_bounds():
    """A value the API would refuse at start (and crash-loop on) is refused at install instead."""
    words = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "min_length": "minLength"}
    for value, setting in OIDC_VALUES.items():
        constraints = Settings.model_fields[setting].metadata
        bounds = {
            word: getattr(c, name) for c in constraints for name, word in words.items() if hasattr(c, name)
        }
        schema = OIDC_SCHEMA["properties"][value]
        assert bounds == {word: schema[word] for word in words.values() if word in schema}, value
    scopes = OIDC_SCHEMA["properties"]["scopeMap"]["additionalProperties"]["items"]["enum"]
    assert sorted(scopes) == sorted(SCOPES)


def test_no_issuer_renders_no_oidc_setting_and_opens_nothing_for_it():
    for workload in workloads("default"):
        for container in pod_spec(workload)["containers"]:
            assert not oidc_env(container), workload["metadata"]["name"]
    documents = list(rendered("default"))
    assert policy_for(documents, "api")["spec"]["egress"] == policy_for(documents, "worker")["spec"]["egress"]


@pytest.mark.parametrize("example", EXAMPLES)
def test_an_issuer_reaches_the_api_and_the_worker_as_the_settings_it_stands_for(example: str):
    values = merged(REQUIRED if example == "default" else PRODUCTION, {})
    values["identity"] = {"oidc": OIDC}  # in place of the production example's, scope map included
    documents = render(values, RELEASES[example])
    by_component = {
        document["metadata"]["labels"]["app.kubernetes.io/component"]: document
        for document in documents
        if document["kind"] in WORKLOADS
    }
    (api,) = pod_spec(by_component["api"])["containers"]
    (worker,) = pod_spec(by_component["worker"])["containers"]
    assert oidc_env(api) == oidc_env(worker)
    # The trainer takes no token: it gets none of them.
    assert not oidc_env(pod_spec(by_component["trainer"])["containers"][0])
    # What the API makes of them: the issuer's settings as the values say.
    settings = Settings(_env_file=None, **{name.lower(): value for name, value in oidc_env(api).items()})
    assert settings.oidc == OidcConfig(
        issuer=OIDC["issuer"],
        audience=OIDC["audience"],
        scopes_claim=OIDC["scopesClaim"],
        scope_map=ScopeMap({"predictor-admins": ("admin", "predict"), "read:predictions": ("predict",)}),
        leeway_seconds=30,
    )
    assert settings.oidc_jwks_refresh_seconds == VALUES["identity"]["oidc"]["jwksRefreshSeconds"]
    assert settings.oidc_jwks_min_refetch_seconds == VALUES["identity"]["oidc"]["jwksMinRefetchSeconds"]
    # Egress: one rule more for the API pods, networkPolicy.egress.oidcIssuer; none for the jobs.
    api_egress = policy_for(documents, "api")["spec"]["egress"]
    jobs_egress = policy_for(documents, "worker")["spec"]["egress"]
    issuer_rule = merged(VALUES, values)["networkPolicy"]["egress"]["oidcIssuer"]
    expected = {"ports": issuer_rule["ports"]} | ({"to": issuer_rule["to"]} if issuer_rule["to"] else {})
    assert api_egress == [*jobs_egress, expected]
    assert expected["ports"] == [{"port": 443, "protocol": "TCP"}]


def test_the_production_example_shows_an_issuer_narrowed_to_public_addresses():
    (api,) = pod_spec(one("production", "Deployment", "api"))["containers"]
    assert oidc_env(api)["OIDC_ISSUER"] == PRODUCTION["identity"]["oidc"]["issuer"]
    rules = policy_for(list(rendered("production")), "api")["spec"]["egress"]
    assert rules[-1] == PRODUCTION["networkPolicy"]["egress"]["oidcIssuer"]


@pytest.mark.parametrize(
    ("oidc", "where"),
    [
        ({"issuer": OIDC["issuer"]}, "/identity/oidc/audience"),
        ({"issuer": OIDC["issuer"], "audience": "  "}, "/identity/oidc/audience"),
        ({"issuer": "http://keycloak.example.com/realms/acme", "audience": "x"}, "/identity/oidc/issuer"),
        ({**OIDC, "scopeMap": {"predictor-admins": ["root"]}}, "/identity/oidc/scopeMap/predictor-admins/0"),
        # Refused at the root: the schema engine reports a property name's error there.
        ({**OIDC, "scopeMap": {"a,b": ["predict"]}}, "invalid propertyName 'a,b'"),
        ({**OIDC, "leewaySeconds": 301}, "/identity/oidc/leewaySeconds"),
        ({**OIDC, "jwksRefreshSeconds": 0}, "/identity/oidc/jwksRefreshSeconds"),
    ],
)
def test_the_schema_refuses_an_issuer_the_api_would_refuse(oidc: dict[str, Any], where: str):
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        render(merged(REQUIRED, {"identity": {"oidc": oidc}}))
    # The API says no to the same, at start (APP_ENV=production: https only).
    given = merged(VALUES["identity"]["oidc"], oidc)
    fields = {OIDC_VALUES[value]: setting for value, setting in given.items()}
    pairs = given["scopeMap"].items()
    fields["oidc_scope_map"] = ",".join(f"{theirs}:{one}" for theirs, ours in pairs for one in ours)
    production = {"app_env": "production", "secret_key": "s" * 32, "admin_password": "p" * 12}
    with pytest.raises(ValidationError):
        Settings(_env_file=None, **production, **fields)


# --- monitoring: the same rules and dashboards as dashboards/ ---------------------------------------


def rule_files_groups() -> list[dict[str, Any]]:
    files = sorted(RULES.glob("*.yml"))
    return [group for path in files for group in yaml.safe_load(path.read_text())["groups"]]


def test_the_chart_reads_the_rules_and_dashboards_through_symlinks_not_copies():
    assert (CHART / "files" / "prometheus-rules").resolve() == RULES.resolve()
    assert (CHART / "files" / "grafana-dashboards").resolve() == DASHBOARDS.resolve()
    for link in ("prometheus-rules", "grafana-dashboards"):
        assert (CHART / "files" / link).is_symlink(), link
    # No rule file or dashboard anywhere else in the chart.
    own = [
        path for path in CHART.rglob("*") if path.suffix in (".yml", ".json") and "files" not in path.parts
    ]
    assert own == [CHART / "values.schema.json"]


def test_the_packaged_chart_carries_the_linked_files_and_renders_the_same(tmp_path: Path):
    """helm package follows the symlinks: a chart pushed to a registry needs no checkout beside it."""
    archive = helm.package(CHART, destination=tmp_path)
    with tarfile.open(archive) as packed:
        names = {member.name for member in packed.getmembers() if member.isfile()}
    linked = {f"predictor/files/prometheus-rules/{path.name}" for path in RULES.glob("*.yml")}
    linked |= {f"predictor/files/grafana-dashboards/{path.name}" for path in DASHBOARDS.glob("*.json")}
    assert linked <= names
    with helm.Chart.load_archive(Path(archive).read_bytes()) as chart:
        name, namespace = RELEASES["production"]
        packaged = parse(chart.render(PRODUCTION, name=name, namespace=namespace))
    assert packaged == list(rendered("production"))


def test_the_prometheus_rule_holds_exactly_the_rule_files_groups():
    groups = one("production", "PrometheusRule")["spec"]["groups"]
    assert groups == rule_files_groups()
    assert {group["name"] for group in groups} == {"predictor-alerts", "predictor-recording"}
    assert one("production", "PrometheusRule")["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_service_monitor_sends_the_metrics_token_and_labels_the_job_the_rules_select():
    monitor = one("production", "ServiceMonitor")
    service = one("production", "Service")
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": PRODUCTION["auth"]["existingSecret"], "key": "METRICS_TOKEN"},
    }
    (api,) = pod_spec(one("production", "Deployment", "api"))["containers"]
    assert env(api)["METRICS_TOKEN"]["valueFrom"]["secretKeyRef"] == endpoint["authorization"]["credentials"]
    # The compose scrape's job name, which the alert rules select on.
    compose = yaml.safe_load((ROOT / "dashboards" / "prometheus" / "prometheus.yml").read_text())
    job = compose["scrape_configs"][0]["job_name"]
    relabel = {rule["targetLabel"]: rule["replacement"] for rule in endpoint["relabelings"]}
    assert relabel["job"] == job
    assert f'job="{job}"' in (RULES / "alerts.yml").read_text()


def test_each_dashboard_is_a_configmap_with_the_sidecar_label():
    maps = objects("production", "ConfigMap")
    files = {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}
    assert len(maps) == len(files) == 4
    shipped = {}
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["annotations"] == {"grafana_folder": "Predictor"}
        ((name, text),) = config_map["data"].items()
        shipped[name] = json.loads(text)
    assert set(shipped) == set(files)
    for name, dashboard in shipped.items():
        # The same dashboard, pointed at kube-prometheus-stack's datasource (uid `prometheus`).
        expected = json.loads(json.dumps(files[name]).replace('"predictor-prometheus"', '"prometheus"'))
        assert dashboard == expected, name
        assert '"predictor-prometheus"' not in json.dumps(dashboard)


def test_the_dashboard_label_and_datasource_are_configurable():
    values = merged(
        REQUIRED,
        {
            "grafanaDashboards": {
                "enabled": True,
                "label": "grafana.example/dashboard",
                "labelValue": "yes",
                "datasourceUid": "predictor-prometheus",
            }
        },
    )
    maps = [document for document in render(values) if document["kind"] == "ConfigMap"]
    assert all(config_map["metadata"]["labels"]["grafana.example/dashboard"] == "yes" for config_map in maps)
    shipped = {name: text for config_map in maps for name, text in config_map["data"].items()}
    # With the compose datasource's uid the files go out byte for byte.
    assert shipped == {path.name: path.read_text() for path in DASHBOARDS.glob("*.json")}


@pytest.mark.parametrize("example", EXAMPLES)
def test_api_pods_run_the_serving_image_and_the_rest_the_full_one(example: str):
    (api,) = pod_spec(one(example, "Deployment", "api"))["containers"]
    others = [
        c["image"]
        for w in workloads(example)
        if w is not one(example, "Deployment", "api")
        for c in containers(w)
    ]
    if example == "default":
        assert api["image"] == "mlops-api-predictor:0.1.0-serving"
        assert set(others) == {"mlops-api-predictor:0.1.0"}
    else:
        assert (
            api["image"] == f"{PRODUCTION['image']['repository']}@{PRODUCTION['image']['serving']['digest']}"
        )
        assert set(others) == {f"{PRODUCTION['image']['repository']}@{PRODUCTION['image']['digest']}"}
