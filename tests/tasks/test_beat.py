"""A real Celery beat touches its heartbeat file on every tick (what the compose health check reads)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from alerts.config import environment
from tests.conftest import make_settings
from tests.support.worker import wait_for


def test_beat_touches_its_heartbeat_file_while_it_runs(sqlite_url: str, tmp_path: Path) -> None:
    heartbeat = tmp_path / "beat-heartbeat"
    settings = make_settings(
        sqlite_url,
        tmp_path,
        broker_url="filesystem://",
        broker_dir=tmp_path / "broker",
        beat_heartbeat_file=heartbeat,
        maintenance_interval_s=1.0,
    )
    env = os.environ | environment(settings)
    command = [sys.executable, "-m", "celery", "-A", "alerts.tasks.app", "beat", "--schedule", str(tmp_path / "s")]
    with (tmp_path / "beat.log").open("wb") as log:
        beat = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(heartbeat.exists, timeout_s=30)
            first = heartbeat.stat().st_mtime_ns
            wait_for(lambda: heartbeat.stat().st_mtime_ns > first, timeout_s=15)
            assert beat.poll() is None
        finally:
            beat.terminate()
            beat.wait(timeout=20)
    assert time.time() - heartbeat.stat().st_mtime < 60
