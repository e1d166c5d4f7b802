"""The FastAPI app factory. Routers are small modules, one concern each."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from alerts import __version__
from alerts.runtime import Runtime, get_runtime
from alerts.web import api_events, conditions, links, linkstore, ops, pages, signup, webhooks
from alerts.web.ratelimit import RateLimiter


def create_app(runtime: Runtime | None = None, enqueue: Any | None = None) -> FastAPI:
    """``runtime`` and ``enqueue`` default to the process ones; tests hand in their own."""
    app = FastAPI(
        title="Trial alerts",
        version=__version__,
        description="Email alerts for clinical-trial changes and new trials for a condition.",
        # No OpenTelemetry here (logs and /metrics are ours): without this FastAPI asks the global providers
        # on every request whether they were configured, a tenth of a link page's time.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        lifespan=linkstore.lifespan,
    )
    app.state.runtime = runtime or get_runtime()
    if enqueue is None:
        from alerts.tasks.enqueue import CeleryEnqueue

        enqueue = CeleryEnqueue()
    app.state.enqueue = enqueue
    app.state.limiter = RateLimiter.from_settings(app.state.runtime.settings)
    linkstore.install(app, app.state.runtime)
    pages.install(app)

    @app.get("/healthz", tags=["ops"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # The links in emails first: routes are tried in order, and a scanner burst is millions of these.
    app.include_router(links.router)
    app.include_router(api_events.router)
    app.include_router(ops.router)
    app.include_router(signup.router)
    app.include_router(conditions.router)
    app.include_router(webhooks.router)
    return app
