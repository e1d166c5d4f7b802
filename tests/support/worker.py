"""Runs a real Celery worker in a subprocess for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alerts.config import Settings, environment
from alerts.tasks.app import worker_command


@contextmanager
def celery_worker(
    settings: Settings, log_path: Path, concurrency: int = 2, pool: str = "prefork"
) -> Iterator[subprocess.Popen[bytes]]:
    env = os.environ | environment(settings)
    command = worker_command(concurrency=concurrency, pool=pool, standalone=True, hostname=f"test-{os.getpid()}@%h")
    with log_path.open("wb") as log:
        worker = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(worker, log_path, timeout_s=30)
            yield worker
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def wait_ready(worker: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    """Until the worker logs that it is ready; raises with the log's tail if it dies or takes too long."""
    deadline = time.monotonic() + timeout_s
    while b"ready." not in log_path.read_bytes():
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)


def wait_for(check: object, timeout_s: float = 60.0, interval_s: float = 0.2) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(interval_s)
