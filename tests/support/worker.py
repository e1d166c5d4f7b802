"""Runs a real Celery worker in a subprocess for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alerts.config import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    env = {
        "ALERTS_ENV": settings.env,
        "ALERTS_DATABASE_URL": settings.database_url,
        "ALERTS_BROKER_URL": settings.broker_url,
        "ALERTS_BROKER_DIR": str(settings.broker_dir),
        "ALERTS_EMAIL_BACKEND": settings.email_backend,
        "ALERTS_OUTBOX_DIR": str(settings.outbox_dir),
        "ALERTS_SECRET_KEY": settings.secret_key,
        "ALERTS_BASE_URL": settings.base_url,
        "ALERTS_FROM_EMAIL": settings.from_email,
        "ALERTS_SENDGRID_HOST": settings.sendgrid_host,
        "ALERTS_SENDGRID_TIMEOUT_S": str(settings.sendgrid_timeout_s),
        "ALERTS_LOG_FORMAT": settings.log_format,
    }
    if settings.broker_prefix:
        env["ALERTS_BROKER_PREFIX"] = settings.broker_prefix
    if settings.sendgrid_api_key:
        env["ALERTS_SENDGRID_API_KEY"] = settings.sendgrid_api_key
    return env


@contextmanager
def celery_worker(
    settings: Settings, log_path: Path, concurrency: int = 2, pool: str = "prefork"
) -> Iterator[subprocess.Popen[bytes]]:
    env = os.environ | settings_env(settings)
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "alerts.tasks.app",
        "worker",
        "--queues",
        "events,deliveries,maintenance",
        "--concurrency",
        str(concurrency),
        "--pool",
        pool,
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        "--hostname",
        f"test-{os.getpid()}@%h",
    ]
    with log_path.open("wb") as log:
        worker = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while b"ready." not in log_path.read_bytes():
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.1)
            yield worker
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def wait_for(check: object, timeout_s: float = 60.0, interval_s: float = 0.2) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(interval_s)
