"""docker-compose.yml, checked without a Docker engine: schema, files, names, ports, variables, tools."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES = COMPOSE["services"]
PROMETHEUS = yaml.safe_load((ROOT / "dashboards/prometheus/prometheus.yml").read_text())
GRAFANA = ROOT / "dashboards" / "grafana"
ONE_SHOT = {"minio-init", "trainer"}
# The API replicas: the image's default command (python -m app.serve).
REPLICAS = sorted(
    name for name, service in SERVICES.items() if "build" in service and "command" not in service
)
# ${VAR}, ${VAR:-default}, ${VAR:?message}; $${VAR} is an escape for the container's shell.
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}")

# What each image has on its PATH, for healthchecks and entrypoints (by image repository):
# - python:3.11-slim (our Dockerfile): python and sh (dash); slim images have neither curl nor wget,
#   hence the python one-liners. dvc and mlflow come from the image's venv.
# - postgres (Debian or Alpine): the server ships its client tools, pg_isready and psql.
# - minio/minio: bundles the `mc` client since 2023 (`mc ready local`), and no curl.
# - minio/mc: mc on a ubi-micro base, which has sh.
# - prom/prometheus, prom/alertmanager: built on prom/busybox, so sh, wget and sed are busybox applets.
# - grafana/grafana: Alpine-based, busybox wget and sh.
# - nginx (the -alpine variant): busybox sh and wget; the image adds curl.
IMAGE_TOOLS = {
    "mlops-api-predictor": {"python", "sh", "dvc", "mlflow"},
    "postgres": {"pg_isready", "psql", "sh"},
    "minio/minio": {"mc", "sh"},
    "redis": {"redis-server", "redis-cli", "sh"},
    "minio/mc": {"mc", "sh"},
    "prom/prometheus": {"prometheus", "promtool", "sh", "wget", "sed"},
    "prom/alertmanager": {"alertmanager", "amtool", "sh", "wget", "sed"},
    "grafana/grafana": {"grafana", "sh", "wget"},
    "nginx": {"nginx", "sh", "wget", "curl"},
}


def repository(service: dict) -> str:
    return service["image"].rsplit(":", 1)[0]


def container_ports(service: dict) -> set[int]:
    """The ports it listens on in its container: published (`ports`) or for the network only (`expose`)."""
    mappings = [*service.get("ports", []), *service.get("expose", [])]
    return {int(str(mapping).rsplit(":", 1)[-1].split("/")[0]) for mapping in mappings}


def test_validates_against_the_compose_spec():
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_issue_services_are_all_there():
    expected = {"postgres", "minio", "minio-init", "mlflow", "trainer", "prometheus", "alertmanager"}
    expected |= {"api-1", "api-2", "worker", "lb"}
    assert expected | {"grafana", "ui"} <= set(SERVICES)
    assert REPLICAS == ["api-1", "api-2"]


def test_build_contexts_and_dockerfiles_exist():
    built = {name: service["build"] for name, service in SERVICES.items() if "build" in service}
    assert {"trainer", "api-1", "api-2", "worker", "mlflow", "ui"} <= set(built)
    for name, build in built.items():
        context = ROOT / build["context"]
        assert context.is_dir(), f"{name}: build context {context} missing"
        assert (context / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: Dockerfile missing"
    # Two images for the Python side: the serving one for the API replicas, the full one for the
    # rest (the trainer, the worker, MLflow, the UI).
    images = {name: (SERVICES[name]["image"], built[name].get("target")) for name in built}
    assert images["api-1"] == images["api-2"] == ("mlops-api-predictor:serving", "serving")
    others = {images[name] for name in built if not name.startswith("api-")}
    assert others == {("mlops-api-predictor:full", "full")}


def test_every_bind_mounted_file_exists_in_the_repo():
    mounts = [
        (name, volume.split(":")[0])
        for name, service in SERVICES.items()
        for volume in service.get("volumes", [])
        if volume.startswith(".")
    ]
    assert len(mounts) >= 6
    for name, source in mounts:
        assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"


def test_named_volumes_are_declared_and_used():
    declared = set(COMPOSE["volumes"])
    used = {
        volume.split(":")[0]
        for service in SERVICES.values()
        for volume in service.get("volumes", [])
        if not volume.startswith((".", "/"))
    }
    assert used == declared


def test_the_python_services_share_no_disk():
    """Stateless: versions go through the model store, jobs and the pointer through the database."""
    for name in [*REPLICAS, "worker", "trainer"]:
        assert not SERVICES[name].get("volumes"), f"{name} mounts {SERVICES[name]['volumes']}"
        assert "VERSIONS_DIR" not in SERVICES[name]["environment"], name


def test_every_service_has_a_healthcheck_and_servers_restart():
    for name, service in SERVICES.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
        else:
            assert service.get("restart") == "unless-stopped", name


def test_start_order():
    # A replica needs the database and the store's bucket, not a model: it serves what the trainer
    # publishes once it does, without a restart.
    for name in [*REPLICAS, "worker"]:
        depends = SERVICES[name]["depends_on"]
        assert "trainer" not in depends, name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["minio-init"]["condition"] == "service_completed_successfully", name
    assert SERVICES["trainer"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert SERVICES["trainer"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert set(SERVICES["lb"]["depends_on"]) == set(REPLICAS)
    assert SERVICES["ui"]["depends_on"]["lb"]["condition"] == "service_healthy"
    assert SERVICES["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    # Every dependency names a service of this file.
    for name, service in SERVICES.items():
        assert set(service.get("depends_on", {})) <= set(SERVICES), name


def test_the_trainer_reproduces_pushes_and_publishes():
    script = SERVICES["trainer"]["command"][-1]
    steps = [step.strip() for step in script.split("&&")]
    assert steps == [
        "dvc repro",
        "python -m app.pipeline.remote",
        "dvc push",
        "python -m app.cli models publish --serve",
    ]
    env = SERVICES["trainer"]["environment"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["DVC_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["DVC_REMOTE_URL"].startswith("s3://")
    # `models publish` reads what dvc repro wrote in the image's WORKDIR, not the replicas' MODEL_DIR.
    assert env["MODEL_DIR"] == "/app/models"


def test_every_process_shares_one_database_store_and_secret():
    sharing = [*REPLICAS, "worker", "trainer"]
    for key in ("DATABASE_URL", "MODEL_STORE_URL", "SECRET_KEY", "ADMIN_PASSWORD", "AWS_ACCESS_KEY_ID"):
        values = {SERVICES[name]["environment"][key] for name in sharing}
        assert len(values) == 1, (key, values)
    env = SERVICES["worker"]["environment"]
    assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["DATABASE_URL"].endswith("@postgres:5432/${POSTGRES_DB}")
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # Each process caches what it downloads in its own container.
    assert all(SERVICES[name]["environment"]["MODEL_CACHE_DIR"] == "/srv/cache" for name in sharing)


def test_the_model_store_bucket_is_created_by_minio_init():
    store = SERVICES["worker"]["environment"]["MODEL_STORE_URL"]
    match = re.fullmatch(r"s3://\$\{MODEL_BUCKET:-([\w.-]+)\}/versions", store)
    assert match, store
    init = SERVICES["minio-init"]
    assert init["environment"]["MODEL_BUCKET"] == f"${{MODEL_BUCKET:-{match[1]}}}"
    assert '"local/$$MODEL_BUCKET"' in init["command"][0]


def test_replicas_run_the_api_only_and_the_worker_runs_the_jobs():
    first = SERVICES[REPLICAS[0]]
    for name in REPLICAS:
        service = SERVICES[name]
        assert service == first, f"{name} differs from {REPLICAS[0]}"
        assert service["environment"]["START_WORKER"] == "false"
        assert "ports" not in service, f"{name} publishes a port: clients go through lb"
        assert container_ports(service) == {int(service["environment"]["PORT"])}
    worker = SERVICES["worker"]
    assert worker["command"] == ["python", "-m", "app.worker"]
    assert worker["environment"]["JOBS_DIR"] == "/srv/jobs"
    assert "ports" not in worker and "expose" not in worker


def test_the_replicas_take_the_oidc_settings_from_env_with_the_settings_defaults():
    """Every OIDC_* setting passes through from .env or the environment; unset, it is what the API
    would use without it (OIDC_ISSUER empty: no issuer)."""
    from app.core.config import Settings

    settings = [name for name in Settings.model_fields if name.startswith("oidc_")]
    assert len(settings) >= 7
    for replica in REPLICAS:
        environment = SERVICES[replica]["environment"]
        defaults = {}
        for name in settings:
            match = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", str(environment.get(name.upper())))
            assert match and match[1] == name.upper(), f"{replica}: {name.upper()} = {match}"
            defaults[name] = match[2]
        # _env_file=None: the repository's .env, if any, has no say here.
        passed = Settings(_env_file=None, **defaults)
        for name in settings:
            assert getattr(passed, name) == Settings.model_fields[name].default, f"{replica}: {name}"


def test_mlflow_uses_postgres_and_minio_on_both_sides():
    server = SERVICES["mlflow"]["environment"]
    assert server["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    assert server["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflow")
    assert server["MLFLOW_DEFAULT_ARTIFACT_ROOT"].startswith("s3://")
    for name in ("mlflow", "trainer"):
        assert SERVICES[name]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000", name
    # The database MLflow uses is created by the init script postgres mounts.
    init = [v for v in SERVICES["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v]
    assert "CREATE DATABASE mlflow" in (ROOT / init[0].split(":")[0]).read_text()


def test_the_load_balancer_is_the_one_published_api_port():
    published = {
        name: container_ports({"ports": service["ports"]})
        for name, service in SERVICES.items()
        if "ports" in service
    }
    assert [name for name, ports in published.items() if 8000 in ports] == ["lb"]
    assert SERVICES["lb"]["ports"] == ["8000:8000"]
    assert SERVICES["ui"]["environment"]["API_URL"] == "http://lb:8000"


def scrape_targets() -> list[tuple[str, str]]:
    targets = [
        (job["job_name"], target)
        for job in PROMETHEUS["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    targets += [
        ("alerting", target)
        for manager in PROMETHEUS["alerting"]["alertmanagers"]
        for static in manager["static_configs"]
        for target in static["targets"]
    ]
    return targets


@pytest.mark.parametrize(("job", "target"), scrape_targets())
def test_prometheus_targets_are_compose_services_on_their_ports(job, target):
    host, port = target.rsplit(":", 1)
    # `localhost` in Prometheus's own container is the prometheus service.
    service = "prometheus" if host == "localhost" else host
    assert service in SERVICES, f"{job}: {host} is not a compose service"
    assert int(port) in container_ports(SERVICES[service]), f"{job}: {service} does not listen on {port}"


def test_prometheus_scrapes_every_replica_and_not_the_load_balancer():
    targets = {target for job, target in scrape_targets() if job == "predictor-api"}
    assert targets == {f"{name}:{SERVICES[name]['environment']['PORT']}" for name in REPLICAS}


def test_prometheus_gets_the_metrics_token_file_it_reads():
    job = next(job for job in PROMETHEUS["scrape_configs"] if job["job_name"] == "predictor-api")
    mounted = {secret["target"]: secret["source"] for secret in SERVICES["prometheus"]["secrets"]}
    source = mounted[job["authorization"]["credentials_file"]]
    assert COMPOSE["secrets"][source] == {"environment": "METRICS_TOKEN"}
    for name in REPLICAS:
        assert SERVICES[name]["environment"]["METRICS_TOKEN"].startswith("${METRICS_TOKEN")
    # And the rule files it loads are mounted beside the config.
    volumes = SERVICES["prometheus"]["volumes"]
    assert "./dashboards/prometheus/rules:/etc/prometheus/rules:ro" in volumes
    assert all(rule.startswith("rules/") for rule in PROMETHEUS["rule_files"])


def test_grafana_provisioning_matches_the_mounts():
    volumes = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["grafana"]["volumes"]}
    assert volumes["/etc/grafana/provisioning"] == "./dashboards/grafana/provisioning"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/predictor.yml").read_text())["providers"]
    path = providers[0]["options"]["path"]
    assert volumes[path] == "./dashboards/grafana/dashboards"
    assert list((GRAFANA / "dashboards").glob("*.json"))
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    url = datasource["datasources"][0]["url"]
    host, port = url.removeprefix("http://").split(":")
    assert host in SERVICES and int(port) in container_ports(SERVICES[host])
    assert SERVICES["grafana"]["user"] == "472"


def env_example() -> dict[str, bool]:
    """Each variable of .env.example, and whether a comment documents its block."""
    documented: dict[str, bool] = {}
    commented = False
    for line in (ROOT / ".env.example").read_text().splitlines():
        if not line.strip():
            commented = False
        elif line.startswith("#"):
            commented = True
        elif match := re.match(r"([A-Z_][A-Z0-9_]*)=", line):
            documented[match[1]] = commented
    return documented


def compose_variables() -> set[str]:
    names = set(VARIABLE.findall(COMPOSE_FILE.read_text()))
    names |= {secret["environment"] for secret in COMPOSE["secrets"].values() if "environment" in secret}
    return names


def test_every_compose_variable_is_documented_in_env_example():
    variables = compose_variables()
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "SECRET_KEY", "GRAFANA_ADMIN_PASSWORD"} <= variables
    documented = env_example()
    missing = sorted(v for v in variables if v not in documented)
    assert not missing, f"not in .env.example: {missing}"
    bare = sorted(v for v in variables if not documented[v])
    assert not bare, f"no comment in .env.example: {bare}"
    listed = re.findall(r"^([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.MULTILINE)
    assert len(listed) == len(set(listed)), "a variable is listed twice in .env.example"


def test_no_credential_is_written_inline():
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|_USER$|DATABASE_URL|STORE_URI")
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if secretish.search(key):
                assert "${" in str(value), f"{name}: {key} is written inline"


def healthcheck_tool(service: dict) -> str:
    test = service["healthcheck"]["test"]
    if test[0] == "CMD-SHELL":
        return test[1].split()[0]
    assert test[0] == "CMD", test
    return Path(test[1]).name


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_healthchecks_and_entrypoints_use_tools_the_image_has(name):
    service = SERVICES[name]
    tools = IMAGE_TOOLS[repository(service)]
    assert healthcheck_tool(service) in tools
    if "entrypoint" in service:
        assert Path(service["entrypoint"][0]).name in tools
    command = service.get("command") or []
    if command and command[0] in ("sh", "mlflow", "python", "dvc"):
        assert command[0] in tools
    if name == "alertmanager":
        assert {"sed", "alertmanager"} <= tools


def test_images_are_pinned():
    for name, service in SERVICES.items():
        image = service["image"]
        if "build" in service:
            continue
        tag = image.rsplit(":", 1)[1] if ":" in image else "latest"
        pinned = tag != "latest" and re.search(r"\d+\.\d+|RELEASE\.\d{4}", tag)
        assert pinned, f"{name}: {image} is not pinned"


def unescape(command: str) -> str:
    """What the container's shell receives: compose turns $$ into $."""
    return command.replace("$$", "$")


def test_alertmanager_start_command_renders_the_webhook(tmp_path):
    command = unescape(SERVICES["alertmanager"]["command"][0])
    source = "/etc/alertmanager/alertmanager.yml.in"
    target = "/alertmanager/alertmanager.yml"
    assert source in command and target in command
    mounted = next(v for v in SERVICES["alertmanager"]["volumes"] if source in v).split(":")[0]
    (tmp_path / "in.yml").write_text((ROOT / mounted).read_text())
    command = command.replace(source, str(tmp_path / "in.yml")).replace(target, str(tmp_path / "out.yml"))
    command = command.split("&& exec")[0]
    url = "https://hooks.example.com/services/T0/B0?x=1&y=2"
    subprocess.run(["sh", "-c", command], check=True, env={"ALERT_WEBHOOK_URL": url, "PATH": "/usr/bin:/bin"})
    rendered = yaml.safe_load((tmp_path / "out.yml").read_text())
    urls = [hook["url"] for receiver in rendered["receivers"] for hook in receiver["webhook_configs"]]
    assert urls and set(urls) == {url}
