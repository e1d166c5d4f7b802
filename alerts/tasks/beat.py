"""Celery beat's scheduler with a heartbeat file, so a health check can tell a working beat from a hung one.

Beat has no port to probe and its schedule file is written only now and then. After every tick (each time
it has looked at the schedule and sent what was due) this scheduler touches ``ALERTS_BEAT_HEARTBEAT_FILE``;
a beat stuck on an unreachable broker or a dead loop stops touching it, and the compose health check
(``docker-compose.yml``) sees the file grow old.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery.beat import PersistentScheduler

from alerts.config import get_settings


class HeartbeatScheduler(PersistentScheduler):  # type: ignore[misc]  # celery.beat is untyped
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heartbeat_file: Path | None = get_settings().beat_heartbeat_file

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval: float = super().tick(*args, **kwargs)
        if self.heartbeat_file is not None:
            self.heartbeat_file.parent.mkdir(parents=True, exist_ok=True)
            self.heartbeat_file.touch()
        return interval
