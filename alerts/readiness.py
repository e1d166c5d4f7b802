"""Can this process do its work? The database and the broker each answer a round trip, quickly.

Used by ``GET /readyz`` (the compose health check of web, a load balancer's readiness probe). Liveness
(``/healthz``) only says the process answers; readiness says its dependencies do too.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from celery import Celery
from sqlalchemy import Engine, text

from alerts.status import queue_depths

log = structlog.get_logger("alerts.readiness")


@dataclass(frozen=True)
class Readiness:
    database: bool
    broker: bool

    @property
    def ready(self) -> bool:
        return self.database and self.broker


def database_answers(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("readiness.database", error=f"{type(exc).__name__}: {exc}"[:300])
        return False
    return True


def broker_answers(app: Celery) -> bool:
    # A connection and one read of each queue's length: the same round trip status and metrics rely on.
    depths, error = queue_depths(app)
    if error is not None or any(depth is None for depth in depths.values()):
        log.warning("readiness.broker", error=error or "a queue could not be read")
        return False
    return True


def check(engine: Engine, app: Celery) -> Readiness:
    return Readiness(database=database_answers(engine), broker=broker_answers(app))
