"""``POST /api/events``: producers that speak HTTP rather than Celery publish events here."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from alerts.pipeline import Enqueue, Rejected, validate
from alerts.web.deps import RuntimeDep, bearer_token, require_token

router = APIRouter(tags=["events"])


class FieldProblem(BaseModel):
    field: str
    message: str


class EventQueued(BaseModel):
    status: str = "queued"
    type: str
    nct_id: str


class EventRejected(BaseModel):
    status: str = "rejected"
    rejection_id: int
    errors: list[FieldProblem]


@router.post(
    "/api/events",
    status_code=202,
    response_model=EventQueued,
    responses={
        401: {"description": "missing or invalid bearer token (ALERTS_INGEST_TOKEN)"},
        422: {"model": EventRejected, "description": "invalid event; recorded with its reasons"},
    },
    summary="Publish a trial.changed or trial.new_for_condition event",
)
def publish_event(
    request: Request,
    runtime: RuntimeDep,
    event: dict[str, Any] = Body(
        ..., description="An event as documented in docs/events.md (JSON Schemas in alerts/schemas)."
    ),
) -> Any:
    require_token(runtime.settings.ingest_token, bearer_token(request), "events")
    outcome = validate(runtime, event, source="api")
    if isinstance(outcome, Rejected):
        body = EventRejected(rejection_id=outcome.rejection_id, errors=[FieldProblem(**e) for e in outcome.errors])
        return JSONResponse(status_code=422, content=body.model_dump())
    enqueue: Enqueue = request.app.state.enqueue
    enqueue.trial_event(event)
    return EventQueued(type=outcome.type, nct_id=outcome.nct_id)
