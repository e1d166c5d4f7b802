"""The production compose file, as docker-compose resolves it (the engine is not available here, the file
format is): what a deployer relies on, checked on the resolved configuration."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts import __version__

ROOT = Path(__file__).resolve().parent.parent
needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose not installed (.ci/run installs it)"
)


def _config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )


def _env_example() -> dict[str, str]:
    example = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            example[key] = value
    return example


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose not installed (.ci/run installs it)")
    result = _config({"PATH": os.environ["PATH"], **_env_example()})
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)
    return dict(resolved["services"])


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else list(command)


def _published(service: dict[str, Any]) -> list[dict[str, Any]]:
    ports = []
    for port in service.get("ports") or []:
        if isinstance(port, str):  # "127.0.0.1:5555:5555/tcp"
            host_ip, _, rest = port.rpartition(":")[0].rpartition(":")
            ports.append({"host_ip": host_ip or None, "published": rest})
        else:
            ports.append(port)
    return ports


def test_the_stack_and_redis_persistence(services: dict[str, Any]) -> None:
    assert set(services) == {"postgres", "redis", "migrate", "proxy", "web", "worker", "beat", "flower"}
    assert "--appendonly" in _command(services["redis"]) and "noeviction" in _command(services["redis"])


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag, f"{name}: {image} has no tag"
        # An exact release: x.y.z, or x.y for PostgreSQL (which numbers its releases major.minor).
        release = r"\d+\.\d+" if repository == "postgres" else r"\d+\.\d+\.\d+"
        assert re.fullmatch(release + r"(-[a-z0-9]+)?", tag), f"{name}: {image} is not pinned to a release"
        if repository == "trial-alerts":
            assert tag == __version__
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:\d+\.\d+\.\d+-slim", dockerfile, re.M)
    assert "'.[flower]'" in dockerfile
    assert re.search(r'flower = \["flower==\d+\.\d+\.\d+"\]', (ROOT / "pyproject.toml").read_text())


def test_only_the_proxy_is_published_and_flower_only_on_loopback(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for port in _published(service):
            if name == "proxy":
                assert str(port["published"]) in {"80", "443"}
            else:
                assert name == "flower", f"{name} publishes a port"
                assert port["host_ip"] == "127.0.0.1"
    assert "ports" not in services["web"]


def test_the_web_app_trusts_exactly_its_proxy(services: dict[str, Any]) -> None:
    proxy_ip = services["proxy"]["networks"]["default"]["ipv4_address"]
    assert services["web"]["environment"]["ALERTS_TRUSTED_PROXIES"] == proxy_ip
    assert services["web"]["environment"]["ALERTS_ENV"] == "prod"  # the shared settings are still there
    for name, service in services.items():
        if name != "web":
            assert "ALERTS_TRUSTED_PROXIES" not in (service.get("environment") or {})
    resolved = _config({"PATH": os.environ["PATH"], **_env_example()})
    network = yaml.safe_load(resolved.stdout)["networks"]["default"]["ipam"]["config"][0]
    subnet, dynamic = ipaddress.ip_network(network["subnet"]), ipaddress.ip_network(network["ip_range"])
    # Fixed in the subnet and outside the range other containers get their addresses from: never taken.
    assert ipaddress.ip_address(proxy_ip) in subnet and ipaddress.ip_address(proxy_ip) not in dynamic
    caddyfile = (ROOT / "deploy" / "Caddyfile").read_text()
    mounts = [str(v) for v in services["proxy"]["volumes"]]  # "source:target:mode" as docker-compose 1.x writes
    assert f"{ROOT / 'deploy' / 'Caddyfile'}:/etc/caddy/Caddyfile:ro" in mounts
    assert "reverse_proxy web:8000" in caddyfile and "respond /metrics 404" in caddyfile
    # Caddy trusts no one's X-Forwarded-For (it sets the header from the connection) unless told otherwise.
    directives = [line.split("#")[0] for line in caddyfile.splitlines()]
    assert not any("trusted_proxies" in line for line in directives)


def test_health_checks_readiness_and_beat(services: dict[str, Any]) -> None:
    for name in ("postgres", "redis", "proxy", "web", "worker", "beat", "flower"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert "/readyz" in " ".join(services["web"]["healthcheck"]["test"])
    heartbeat = services["beat"]["environment"]["ALERTS_BEAT_HEARTBEAT_FILE"]
    assert heartbeat in " ".join(services["beat"]["healthcheck"]["test"])
    assert services["proxy"]["depends_on"]["web"]["condition"] == "service_healthy"


def test_workers_recycle_their_processes_and_everything_has_a_memory_limit(services: dict[str, Any]) -> None:
    command = _command(services["worker"])
    assert int(command[command.index("--max-tasks-per-child") + 1]) > 0
    max_kib = int(command[command.index("--max-memory-per-child") + 1])
    limit = int(services["worker"]["mem_limit"].rstrip("m")) * 1024
    concurrency = int(command[command.index("--concurrency") + 1])
    assert concurrency * max_kib < limit, "pool processes are recycled before the container limit is reached"
    for name, service in services.items():
        assert service.get("mem_limit"), f"{name} has no memory limit"


def test_the_beat_health_check_command_reads_the_heartbeat(services: dict[str, Any], tmp_path: Path) -> None:
    # The very command compose runs, against a fresh and a stale heartbeat file.
    test = services["beat"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    heartbeat = services["beat"]["environment"]["ALERTS_BEAT_HEARTBEAT_FILE"]
    local = tmp_path / "heartbeat"
    argv = [arg.replace(heartbeat, str(local)) for arg in test[1:]]
    argv[0] = shutil.which("python3") or "python3"
    local.touch()
    assert subprocess.run(argv, check=False).returncode == 0
    os.utime(local, (0, 0))
    assert subprocess.run(argv, check=False).returncode != 0


@needs_compose
def test_compose_refuses_to_start_without_secrets() -> None:
    result = _config({"PATH": os.environ["PATH"]})
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD" in result.stderr or "set ALERTS_SECRET_KEY" in result.stderr
