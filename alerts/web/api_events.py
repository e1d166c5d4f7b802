"""``POST /api/events``: producers that speak HTTP rather than Celery publish events here."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from alerts.pipeline import Enqueue, Rejected, validate
from alerts.runtime import Runtime
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


class BodyProblem(BaseModel):
    detail: str


# The body as a client must send it; read by hand (below) so the token is checked before the body is.
EVENT_BODY = {
    "required": True,
    "description": "An event as documented in docs/events.md (JSON Schemas in alerts/schemas).",
    "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}},
}


@router.post(
    "/api/events",
    status_code=202,
    response_model=EventQueued,
    responses={
        400: {"model": BodyProblem, "description": "the body is not JSON (or not UTF-8)"},
        401: {"model": BodyProblem, "description": "missing or invalid bearer token (ALERTS_INGEST_TOKEN)"},
        413: {"model": BodyProblem, "description": "the body is larger than ALERTS_MAX_INGEST_BODY_BYTES"},
        422: {"model": EventRejected, "description": "invalid event; recorded with its reasons"},
    },
    summary="Publish a trial.changed or trial.new_for_condition event",
    openapi_extra={"requestBody": EVENT_BODY},
)
async def publish_event(request: Request, runtime: RuntimeDep) -> Any:
    # The token first: an unauthenticated body is never read (and never larger than the body limit).
    require_token(runtime.settings.ingest_token, bearer_token(request), "events")
    try:
        event = json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return JSONResponse({"detail": "the body is not valid JSON"}, status_code=400)
    return await run_in_threadpool(_publish, request, runtime, event)


def _publish(request: Request, runtime: Runtime, event: Any) -> Any:
    # Anything that is not a valid event (not an object, NUL bytes, lone surrogates...) is a recorded
    # rejection with its reasons (alerts.events), never a crash.
    outcome = validate(runtime, event, source="api")
    if isinstance(outcome, Rejected):
        body = EventRejected(rejection_id=outcome.rejection_id, errors=[FieldProblem(**e) for e in outcome.errors])
        return JSONResponse(status_code=422, content=body.model_dump())
    enqueue: Enqueue = request.app.state.enqueue
    enqueue.trial_event(event)
    return EventQueued(type=outcome.type, nct_id=outcome.nct_id)
