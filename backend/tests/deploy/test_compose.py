"""The compose files: valid against the Compose Specification and wired as intended."""

from __future__ import annotations

import ipaddress
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .nginx_harness import MAIN_CONF, REPO_ROOT, SITE_CONF, tool

DEV = REPO_ROOT / "docker-compose.yml"
PROD = REPO_ROOT / "docker-compose.prod.yml"
SLOT = REPO_ROOT / "docker-compose.app.yml"
APP_ENV_FILE = "${APP_ENV:-/etc/one-system/backend.env}"


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with the Compose Specification schema it ships (vendor.compose-spec)."""
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_both_files_match_the_compose_specification() -> None:
    result = validate(DEV, PROD, SLOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_an_invalid_file(tmp_path: Path) -> None:
    broken = load(SLOT)
    broken["services"]["app"]["restart_policy"] = "always"  # not a service key
    path = tmp_path / "compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = validate(path)
    assert result.returncode != 0
    assert "restart_policy" in result.stdout + result.stderr


def test_dev_app_waits_for_healthy_postgres_moto_and_finished_migrations() -> None:
    services = load(DEV)["services"]
    assert services["postgres"]["image"] == "postgres:15"
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert services["cognito"]["image"].startswith("motoserver/moto:")
    assert "healthcheck" in services["cognito"]
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["app"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "cognito": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    # Migrations and the app run the same image, built from this repo.
    assert services["migrate"]["image"] == services["app"]["image"]
    environment = services["app"]["environment"]
    assert environment["DB_HOST"] == "postgres"
    assert environment["AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER"] == "http://cognito:5000"
    # Published ports stay on loopback: a laptop on a café network exposes nothing.
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def test_prod_app_runs_the_pinned_image_read_only_with_settings_from_the_env_file() -> None:
    compose = load(SLOT)
    app = compose["services"]["app"]
    # The digest the deploy script pinned in release.env, for the API and its worker alike.
    assert app["image"] == "${APP_IMAGE:?APP_IMAGE is not set}"
    assert compose["services"]["worker"]["image"] == app["image"]
    # One project per slot, and nginx's upstream.conf names the live one by this alias.
    assert compose["name"] == "one-system-${SLOT:?SLOT is not set}"
    assert app["networks"]["backend"]["aliases"] == ["app-${SLOT:?SLOT is not set}"]
    assert app["env_file"] == [APP_ENV_FILE]
    # Database settings come from that file and the secret it names, never from compose.
    assert not [key for key in app["environment"] if key.startswith("DB_")]
    assert app["restart"] == "unless-stopped"
    assert app["read_only"] is True
    assert "ports" not in app
    assert "build" not in app
    assert app["cap_drop"] == ["ALL"]


def test_prod_nginx_is_the_only_published_service_and_mounts_config_read_only() -> None:
    services = load(PROD)["services"]
    assert set(services) == {"nginx"}
    assert not [s for s in load(SLOT)["services"].values() if s.get("ports")]
    nginx = services["nginx"]
    # The ALB's port, and the metrics server on the host's loopback alone.
    assert nginx["ports"] == ["80:8080", "127.0.0.1:9145:9145"]
    assert "listen 9145;" in SITE_CONF.read_text()
    assert "listen 8080 default_server;" in SITE_CONF.read_text()
    binds = [volume for volume in nginx["volumes"] if isinstance(volume, str)]
    mounts = {volume.split(":")[0]: volume for volume in binds}
    upstream_dir, site_dir = "/var/lib/one-system/nginx", "/etc/one-system/nginx"
    assert mounts.keys() == {
        "./nginx/nginx.conf",
        "./nginx/one-system.conf",
        upstream_dir,
        site_dir,
    }
    assert all(volume.endswith(":ro") for volume in mounts.values())
    site = SITE_CONF.read_text()
    # The deploy script's upstream file, included where nginx sees that directory.
    target = mounts[upstream_dir].split(":")[1]
    assert f"include {target}/upstream.conf;" in site
    # The site's own files (docs/operations.md, "The edge's site files"), each included there.
    target = mounts[site_dir].split(":")[1]
    for name in ("trusted-proxies.conf", "server-name.conf", "cors-origins.map"):
        assert f"include {target}/{name};" in site, name
    for source, volume in mounts.items():
        if source in (upstream_dir, site_dir):
            continue
        assert (REPO_ROOT / source).is_file()
        target = volume.split(":")[1]
        # nginx.conf includes the site file from exactly where compose mounts it.
        if source.endswith("one-system.conf"):
            assert f"include {target};" in MAIN_CONF.read_text()
    assert nginx["read_only"] is True
    assert nginx["restart"] == "unless-stopped"


def test_prod_nginx_image_is_a_supported_stable_line_with_upstream_resolve() -> None:
    image = load(PROD)["services"]["nginx"]["image"]
    match = re.fullmatch(r"nginx:(\d+)\.(\d+)(?:\.(\d+))?-alpine", image)
    assert match, image
    version = tuple(int(part or 0) for part in match.groups())
    assert version >= (1, 27, 3), "server ... resolve needs nginx 1.27.3 or newer"
    # Even minor versions are nginx's stable lines; only the newest one gets fixes.
    assert version[1] % 2 == 0, f"{image} is a mainline (odd) version"
    assert version >= (1, 30), "1.28 and older stable lines are out of support"


def test_prod_nginx_may_open_two_descriptors_per_connection() -> None:
    main = MAIN_CONF.read_text()
    (connections,) = re.findall(r"^\s*worker_connections (\d+);", main, re.MULTILINE)
    (rlimit,) = re.findall(r"^worker_rlimit_nofile (\d+);", main, re.MULTILINE)
    assert int(rlimit) >= 2 * int(connections)
    nofile = load(PROD)["services"]["nginx"]["ulimits"]["nofile"]
    assert nofile == {"soft": int(rlimit), "hard": int(rlimit)}


def test_prod_app_trusts_forwarded_headers_only_from_its_own_network() -> None:
    edge, slot = load(PROD), load(SLOT)
    network = edge["networks"]["backend"]
    (subnet,) = [c["subnet"] for c in network["ipam"]["config"]]
    trusted = slot["services"]["app"]["environment"]["FORWARDED_ALLOW_IPS"]
    assert ipaddress.ip_network(trusted) == ipaddress.ip_network(subnet)
    assert ipaddress.ip_network(subnet).is_private
    # The slots join the edge's network, by its fixed name.
    assert slot["networks"]["backend"] == {"external": True, "name": network["name"]}
    for service in [*edge["services"].values(), *slot["services"].values()]:
        assert list(service["networks"]) == ["backend"]


@pytest.mark.parametrize("path", [DEV, PROD, SLOT], ids=["dev", "prod", "slot"])
def test_no_real_secret_is_committed(path: Path) -> None:
    text = path.read_text()
    assert "AKIA" not in text
    if path != DEV:
        # The app reads its database password from Secrets Manager; compose never carries one.
        assert "PASSWORD" not in text


# What both slots (during a deploy) and Nginx may take at once, at most: within a 4 GiB host
# with room for dockerd, the CloudWatch agent and the page cache.
HOST_MEMORY_BUDGET_MIB = 2048


def _mib(size: str) -> int:
    number, unit = int(size[:-1]), size[-1]
    return number * {"m": 1, "g": 1024}[unit]


def test_every_service_is_limited_and_its_tmp_is_sized() -> None:
    services = {**load(SLOT)["services"], **load(PROD)["services"]}
    assert set(services) == {"app", "worker", "nginx"}
    for name, service in services.items():
        assert service["memswap_limit"] == service["mem_limit"], name  # no swap either
        assert 0 < float(service["cpus"]) <= 2, name
        assert 0 < int(service["pids_limit"]) <= 256, name
        assert "tmpfs" not in service, f"{name}: an unsized tmpfs may take half the host"
        (tmp,) = [v for v in service["volumes"] if isinstance(v, dict) and v["target"] == "/tmp"]
        assert tmp["type"] == "tmpfs"
        assert 0 < tmp["tmpfs"]["size"] <= 128 * 1024 * 1024, name
    slot = _mib(services["app"]["mem_limit"]) + _mib(services["worker"]["mem_limit"])
    assert 2 * slot + _mib(services["nginx"]["mem_limit"]) <= HOST_MEMORY_BUDGET_MIB
    # The bench holds a web worker to 150 MiB; the app runs WEB_CONCURRENCY=2 and uvicorn.
    assert _mib(services["app"]["mem_limit"]) >= 2 * 150 + 100


def test_nginx_has_the_address_the_metadata_rule_refuses() -> None:
    """Only the app and the worker need the instance role: the host refuses Nginx's fixed
    address the metadata service (docs/operations.md), an address Docker never hands a slot."""
    compose = load(PROD)
    address = compose["services"]["nginx"]["networks"]["backend"]["ipv4_address"]
    (pool,) = compose["networks"]["backend"]["ipam"]["config"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(pool["subnet"])
    assert ipaddress.ip_address(address) not in ipaddress.ip_network(pool["ip_range"])
    rule = f"iptables -I DOCKER-USER -s {address}/32 -d 169.254.169.254/32 -j REJECT"
    assert rule in (REPO_ROOT / "docs" / "operations.md").read_text()
