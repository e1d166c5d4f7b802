"""The production compose file validates (the engine is not available here, the file format is)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed (.ci/run installs it)")
def test_compose_file_validates_with_the_documented_settings() -> None:
    example = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            example[key] = value
    result = _config({"PATH": os.environ["PATH"], **example})
    assert result.returncode == 0, result.stderr
    for service in ("postgres", "redis", "migrate", "web", "worker", "beat", "flower"):
        assert f"  {service}:" in result.stdout
    assert "appendonly" in result.stdout


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed (.ci/run installs it)")
def test_compose_refuses_to_start_without_secrets() -> None:
    result = _config({"PATH": os.environ["PATH"]})
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD" in result.stderr or "set ALERTS_SECRET_KEY" in result.stderr
