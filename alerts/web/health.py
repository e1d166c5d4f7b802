"""``GET /readyz``: 200 when the database and the broker answer, 503 (saying which did not) otherwise.

Unauthenticated (probes carry no token), so it names the failing part and nothing else; the reason goes to
the log.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from alerts.readiness import check
from alerts.web.deps import RuntimeDep, celery_app

router = APIRouter(tags=["ops"])

State = Literal["ok", "unavailable"]


class Ready(BaseModel):
    status: Literal["ready", "not ready"]
    database: State
    broker: State


_STATES: dict[bool, State] = {True: "ok", False: "unavailable"}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"description": "The database or the broker did not answer", "model": Ready},
}


@router.get(
    "/readyz", summary="Readiness: the database and the broker answer", response_model=Ready, responses=_RESPONSES
)
def readyz(request: Request, runtime: RuntimeDep) -> JSONResponse:
    result = check(runtime.engine, celery_app(request))
    body = Ready(
        status="ready" if result.ready else "not ready",
        database=_STATES[result.database],
        broker=_STATES[result.broker],
    )
    return JSONResponse(
        body.model_dump(), status_code=200 if result.ready else 503, headers={"Cache-Control": "no-store"}
    )
