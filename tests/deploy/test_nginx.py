"""deploy/nginx/predictor.conf, the load balancer in front of the API replicas: what compose mounts,
read offline against the compose file and the app's own limits, then run by Debian's nginx the way
`make stack` renders it (`nginx -t`; tests/deploy/test_devstack.py sends it real traffic)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.adapters.import_command import IMPORT_TIMEOUT_SECONDS
from app.api.body_limit import MAX_BODY_BYTES, BodyTooLarge
from app.core.config import Settings
from app.observability.middleware import _SAFE_REQUEST_ID
from app.serve import KEEP_ALIVE_SECONDS
from tools.devstack import configs
from tools.devstack.configs import NGINX_FILE, ROOT, render_nginx

CONFIG = NGINX_FILE.read_text()
SERVICES = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
REPLICAS = sorted(
    name for name, service in SERVICES.items() if "build" in service and "command" not in service
)
# nginx reads sizes in k/m units: the app counts bytes.
UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}
CSV_DEFAULT = Settings.model_fields["max_csv_bytes"].default


def directives(name: str) -> list[str]:
    """The arguments of every `name ...;` line, comments aside."""
    return re.findall(rf"^[ \t]*{name}[ \t]+([^;#{{}}\n]*);", CONFIG, re.MULTILINE)


def test_compose_mounts_it_as_the_images_server():
    lb = SERVICES["lb"]
    assert "./deploy/nginx/predictor.conf:/etc/nginx/conf.d/default.conf:ro" in lb["volumes"]
    assert lb["image"].split(":")[0] == "nginx"


def test_it_listens_where_compose_publishes_and_proxies_to_every_replica():
    assert directives("listen") == ["8000"]
    assert SERVICES["lb"]["ports"] == ["8000:8000"]
    servers = [args.split()[0] for args in directives("server")]
    assert servers == [f"{name}:{SERVICES[name]['environment']['PORT']}" for name in REPLICAS]
    assert set(directives("proxy_pass")) == {"http://predictor_api"}


def test_replicas_are_resolved_again_through_dockers_dns():
    """`resolve` (nginx >= 1.27.3, open source): a re-created replica's new address is followed."""
    assert all(args.split()[1:] == ["resolve"] for args in directives("server"))
    assert directives("resolver")[0].split()[0] == "127.0.0.11"
    assert directives("zone")
    tag = SERVICES["lb"]["image"].split(":")[1]
    version = tuple(int(part) for part in re.match(r"(\d+)\.(\d+)\.(\d+)", tag).groups())
    assert version >= (1, 27, 3), tag


def location(name: str) -> str:
    """The body of `location name { ... }` (no nested blocks in this file)."""
    found = re.search(
        rf"^[ \t]*location {re.escape(name)} \{{(.*?)^[ \t]*\}}", CONFIG, re.DOTALL | re.MULTILINE
    )
    assert found, f"no location {name}"
    return found[1]


def in_bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([km]?)", size).groups()
    return int(number) * UNITS[unit]


def refusal(handler: str) -> dict[str, str]:
    body = re.search(r"return 413 '(.*?)';", location(handler))
    assert body, handler
    return json.loads(body[1])


def test_the_body_limit_is_the_apis_and_so_is_the_answer_past_it():
    server_wide, _ = directives("client_max_body_size")
    assert in_bytes(server_wide) == MAX_BODY_BYTES
    assert directives("error_page") == ["413 @body_too_large", "413 @v2_too_large", "413 @csv_too_large"]
    assert refusal("@body_too_large") == {"detail": BodyTooLarge(MAX_BODY_BYTES).detail}
    # The V2 routes in the protocol's shape, as the API answers them.
    assert "error_page 413 @v2_too_large;" in location("/v2/")
    assert refusal("@v2_too_large") == {"error": BodyTooLarge(MAX_BODY_BYTES).detail}
    assert "client_max_body_size" not in location("/")


def test_a_model_import_is_waited_for_as_long_as_the_api_lets_it_run():
    imported = location("= /models/import")
    assert "proxy_pass http://predictor_api;" in imported
    waits = re.search(r"proxy_read_timeout (\d+)s;", imported)
    assert waits and int(waits[1]) > IMPORT_TIMEOUT_SECONDS
    assert "client_max_body_size" not in imported  # the API's MAX_BODY_BYTES, set for the server


def test_a_csv_upload_streams_through_up_to_the_apis_csv_limit():
    """/predict/csv: the API's MAX_CSV_BYTES default, and no buffering either way: the replica scores
    the file as it arrives, and the client reads answer rows while it is still sending."""
    csv = location("= /predict/csv")
    assert in_bytes(re.search(r"client_max_body_size (\S+);", csv)[1]) == CSV_DEFAULT
    assert "proxy_request_buffering off;" in csv and "proxy_buffering off;" in csv
    assert "proxy_pass http://predictor_api;" in csv
    assert "error_page 413 @csv_too_large;" in csv
    assert refusal("@csv_too_large") == {"detail": BodyTooLarge(CSV_DEFAULT).detail}
    # Set once for the server, so both locations send the replicas the same headers.
    assert not any(
        "proxy_set_header" in location(name) for name in ("/", "/v2/", "= /predict/csv", "= /models/import")
    )


def test_the_replicas_learn_who_called_and_how():
    headers = dict(args.split(None, 1) for args in directives("proxy_set_header"))
    assert headers["X-Forwarded-For"] == "$proxy_add_x_forwarded_for"
    assert headers["Host"] == "$http_host"
    assert headers["X-Forwarded-Proto"] == "$scheme"
    assert headers["X-Request-ID"] == "$predictor_request_id"
    # The uvicorn of each replica believes X-Forwarded-For from the network it is reached on.
    assert all(SERVICES[name]["environment"]["FORWARDED_ALLOW_IPS"] == "*" for name in REPLICAS)


def test_a_callers_request_id_is_kept_by_the_same_rule_as_the_api():
    kept = re.search(
        r'map \$http_x_request_id \$predictor_request_id \{\s*"~(.*?)" \$http_x_request_id;', CONFIG
    )
    assert kept and kept[1] == _SAFE_REQUEST_ID.pattern


def seconds(name: str) -> int:
    """The one `name Ns;` of the server (or upstream) block, in seconds."""
    (value,) = directives(name)
    return int(re.fullmatch(r"(\d+)s", value)[1])


def test_slow_and_endless_clients_are_cut_here():
    """uvicorn has no deadline for headers and reads a refused body to its end: nginx has both, and
    every location inherits them (tests/faults/test_abusive_clients.py sends such clients through)."""
    assert seconds("client_header_timeout") == 15  # REQUEST_HEADER_TIMEOUT_SECONDS's old default
    assert seconds("client_body_timeout") <= 30 and seconds("send_timeout") <= 30
    assert seconds("lingering_time") <= 10 and seconds("lingering_timeout") <= seconds("lingering_time")
    for name in ("/", "/v2/", "= /predict/csv"):
        assert not re.search(
            r"\b(client_header_timeout|client_body_timeout|send_timeout|lingering_\w+) ", location(name)
        ), name


def test_idle_upstream_connections_close_before_uvicorn_closes_them():
    """A request sent down a connection uvicorn is closing (its idle timeout) would be lost."""
    keepalive_timeouts = directives("keepalive_timeout")
    upstream = re.search(r"upstream predictor_api \{(.*?)\}", CONFIG, re.DOTALL)[1]
    (to_replicas,) = re.findall(r"keepalive_timeout (\d+)s;", upstream)
    assert int(to_replicas) < KEEP_ALIVE_SECONDS
    assert len(keepalive_timeouts) == 2  # the other one: idle clients


def test_metrics_are_not_served_through_the_balancer():
    assert re.search(r"location = /metrics \{[^}]*return 404 ", CONFIG)


@pytest.mark.nginx
def test_rendered_for_make_stack_debians_nginx_accepts_it(tmp_path: Path):
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        pytest.fail("nginx is not installed: `make test` installs it (`make stack-tools`, Debian's nginx)")
    config = render_nginx(
        tmp_path,
        listen="127.0.0.1:8000",
        replicas=["127.0.0.1:8001", "127.0.0.1:8002"],
        access_log=tmp_path / "a.log",
    )
    rendered = (tmp_path / "predictor.conf").read_text()
    assert " resolve;" not in rendered and "resolver " not in rendered and "api-1" not in rendered
    assert "server 127.0.0.1:8001;" in rendered and "listen 127.0.0.1:8000;" in rendered
    result = subprocess.run(
        [nginx, "-t", "-p", f"{tmp_path}/", "-c", str(config), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_render_refuses_a_file_it_no_longer_understands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    changed = tmp_path / "predictor.conf"
    changed.write_text(CONFIG.replace("listen 8000;", "listen 8080;"))
    monkeypatch.setattr(configs, "NGINX_FILE", changed)
    with pytest.raises(ValueError, match="no longer the shape"):
        render_nginx(
            tmp_path / "out", listen="127.0.0.1:1", replicas=["127.0.0.1:2"], access_log=tmp_path / "a"
        )
