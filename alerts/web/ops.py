"""Operator views: ``GET /ops`` (page) and ``GET /metrics`` (Prometheus), both behind ALERTS_OPS_TOKEN.

``/metrics`` is open without a token only outside production (a local Prometheus in development); in
production without ALERTS_OPS_TOKEN it is closed, like ``/ops``.
"""

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
from alerts.web.deps import RuntimeDep, bearer_token, celery_app, require_token

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
    return celery_app(request)


# The page's own inline styles and SVG chart, nothing else: no scripts, no other origin, never framed.
OPS_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'none'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _require_operator(request: Request, expected: str | None) -> None:
    given = bearer_token(request) or _basic_password(request)
    try:
        require_token(expected, given, "ops")
    except HTTPException:
        # Basic lets an operator open the page in a browser: any user name, the ops token as password.
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "operator token required",
            headers={"WWW-Authenticate": 'Basic realm="ops"'} | OPS_HEADERS,
        ) from None


def watch_rows(watch: WatchStatus | None) -> list[tuple[str, str]]:
    return watch_status_rows(watch) if watch is not None else []


@router.get("/ops", response_class=HTMLResponse, include_in_schema=False)
def ops_page(request: Request, runtime: RuntimeDep) -> Response:
    _require_operator(request, runtime.settings.ops_token)
    current = collect(runtime.engine, _celery(request), settings=runtime.settings)
    now = utcnow()
    minutes = timeline(runtime.engine, hours=24)
    sent = minute_series(minutes, now, 24, "sent")
    failed = minute_series(minutes, now, 24, "failed")
    chart = line_chart(
        [("sent", "#0b5cad", sent), ("failed", "#c62828", failed)],
        "Deliveries sent and failed per minute, last 24 hours",
    )
    # The table beside the chart shows the sums of the very series drawn, so both count the same thing.
    last_day = {"sent": sum(sent), "failed": sum(failed)}
    return templates.TemplateResponse(
        request,
        "ops.html",
        {
            "status": current,
            "problems": current.problems,
            "chart": chart,
            "last_day": last_day,
            "watch_rows": watch_rows(current.watch),
        },
        headers=OPS_HEADERS | {"Refresh": "30"},
    )


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, runtime: RuntimeDep) -> Response:
    settings = runtime.settings
    if settings.ops_token or settings.env == "prod":
        _require_operator(request, settings.ops_token)
    registry = CollectorRegistry()
    registry.register(AlertsCollector(runtime.engine, _celery(request), runtime.settings))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
