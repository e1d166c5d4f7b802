"""The FastAPI app factory. Routers are small modules, one concern each."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from alerts import __version__
from alerts import places as gazetteer_places
from alerts.runtime import Runtime, get_runtime
from alerts.web import api_events, conditions, digests, health, links, ops, pages, places, signup, signupqueue, webhooks
from alerts.web.linkstore import LinkStore, conninfo
from alerts.web.ratelimit import RateLimiter
from alerts.web.security import BodyLimit, StrictTransport, body_limits
from alerts.web.signupqueue import SignupQueue
from alerts.web.validation import request_validation_error


def create_app(runtime: Runtime | None = None, enqueue: Any | None = None) -> FastAPI:
    """``runtime`` and ``enqueue`` default to the process ones; tests hand in their own."""
    runtime = runtime or get_runtime()
    settings = runtime.settings
    prod = settings.env == "prod"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # On PostgreSQL the link pages read through their own small async pool (alerts.web.linkstore), opened
        # here, inside the server's event loop; on SQLite (and in an app never started) they take the ORM path.
        database = conninfo(settings.database_url)
        store = LinkStore(database, settings.web_link_pool_size) if database else None
        if store is not None:
            await store.open()
            # The sign-up's rate limits on the same loop (one Lua script per sign-up, alerts.web.ratelimit).
            app.state.limiter.open_async(settings.redis_url)
            # And its task message: one LPUSH on the loop instead of Celery's publish in a thread
            # (alerts.web.signupqueue); only for the real Celery enqueue on a Redis broker.
            from alerts.tasks.enqueue import CeleryEnqueue

            enqueue = app.state.enqueue
            if isinstance(enqueue, CeleryEnqueue) and signupqueue.usable(enqueue.app):
                app.state.signup_queue = SignupQueue(enqueue.app)
        app.state.linkstore = store
        try:
            yield
        finally:
            app.state.linkstore = None
            queue, app.state.signup_queue = app.state.signup_queue, None
            if queue is not None:
                await queue.close()
            if store is not None:
                await app.state.limiter.close_async()
                await store.close()

    app = FastAPI(
        lifespan=lifespan,
        title="Trial alerts",
        version=__version__,
        description="Email alerts for clinical-trial changes and new trials for a condition.",
        # The interactive docs load their scripts from a CDN: not in production (/openapi.json stays).
        docs_url=None if prod else "/docs",
        redoc_url=None if prod else "/redoc",
        # No OpenTelemetry here (logs and /metrics are ours): without this FastAPI asks the global providers
        # on every request whether they were configured, a tenth of a link page's time.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.runtime = runtime
    app.state.linkstore = None
    app.state.signup_queue = None
    if enqueue is None:
        from alerts.tasks.enqueue import CeleryEnqueue

        enqueue = CeleryEnqueue()
    app.state.enqueue = enqueue
    app.state.limiter = RateLimiter.from_settings(settings)
    # The city gazetteer takes about half a second to index: built in the background at start, so the
    # first visitor's city search does not wait for it (functools.cache: once per process).
    threading.Thread(target=gazetteer_places.gazetteer, name="gazetteer", daemon=True).start()
    pages.install(app)
    app.add_exception_handler(RequestValidationError, request_validation_error)

    @app.get("/healthz", tags=["ops"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # The links in emails first: routes are tried in order, and a scanner burst is millions of these.
    app.router.routes.extend(links.ROUTES)
    app.include_router(links.router)
    app.include_router(health.router)
    app.include_router(api_events.router)
    app.include_router(ops.router)
    app.include_router(signup.router)
    app.include_router(digests.router)
    app.include_router(conditions.router)
    app.include_router(places.router)
    app.include_router(webhooks.router)

    # The last added is the outermost. The real client address (from a trusted proxy's X-Forwarded-For)
    # is set before anything reads it (the per-IP limit); oversized bodies are refused before any parsing.
    app.add_middleware(BodyLimit, limit_for=body_limits(settings))
    if prod:
        app.add_middleware(StrictTransport)
    if settings.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.trusted_proxies))
    return app
