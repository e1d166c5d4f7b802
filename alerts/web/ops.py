"""Operator views: ``GET /ops`` (page, ALERTS_OPS_TOKEN) and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from alerts.metrics import AlertsCollector
from alerts.models import utcnow
from alerts.rendering import TEMPLATES_DIR
from alerts.status import collect, timeline
from alerts.watch.status import WatchStatus
from alerts.watch.status import rows as watch_status_rows
from alerts.web.charts import line_chart, minute_series
from alerts.web.deps import RuntimeDep, bearer_token, require_token

router = APIRouter(tags=["ops"])
templates = Jinja2Templates(directory=str(TEMPLATES_DIR / "web"))


def _basic_password(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2] or None


def _celery(request: Request) -> Any:
    app = getattr(request.app.state, "celery", None)
    if app is None:
        from alerts.tasks.app import create_app

        app = request.app.state.celery = create_app(request.app.state.runtime.settings)
    return app


def watch_rows(watch: WatchStatus | None) -> list[tuple[str, str]]:
    return watch_status_rows(watch) if watch is not None else []


@router.get("/ops", response_class=HTMLResponse, include_in_schema=False)
def ops_page(request: Request, runtime: RuntimeDep) -> Response:
    given = bearer_token(request) or _basic_password(request)
    try:
        require_token(runtime.settings.ops_token, given, "ops")
    except HTTPException:
        # Basic lets an operator open the page in a browser: any user name, the ops token as password.
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "operator token required", headers={"WWW-Authenticate": 'Basic realm="ops"'}
        ) from None
    current = collect(runtime.engine, _celery(request), settings=runtime.settings)
    now = utcnow()
    minutes = timeline(runtime.engine, hours=24)
    chart = line_chart(
        [
            ("sent", "#0b5cad", minute_series(minutes, now, 24, "sent")),
            ("failed", "#c62828", minute_series(minutes, now, 24, "failed")),
        ],
        "Deliveries sent and failed per minute, last 24 hours",
    )
    return templates.TemplateResponse(
        request,
        "ops.html",
        {"status": current, "problems": current.problems, "chart": chart, "watch_rows": watch_rows(current.watch)},
        headers={"Cache-Control": "no-store", "Refresh": "30"},
    )


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, runtime: RuntimeDep) -> Response:
    registry = CollectorRegistry()
    registry.register(AlertsCollector(runtime.engine, _celery(request), runtime.settings))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
