"""Transport-level protections: request-body limits before anything parses, and HSTS in production.

``BodyLimit`` refuses a body larger than its route allows (413) from its Content-Length alone, before
reading a byte of it; a body sent without a length (chunked) is counted as it arrives and refused as
soon as it passes the limit. So an unauthenticated 50 MB body to ``/api/events`` costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException
from fastapi.responses import JSONResponse, Response
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alerts.config import Settings
from alerts.web import pages

# Producers' endpoints carry whole trial records (two per trial.changed) or SendGrid's event batches.
INGEST_PATHS = ("/api/events", "/webhooks/")
HSTS = "max-age=31536000; includeSubDomains"


def body_limits(settings: Settings) -> Callable[[str], int]:
    """The largest body each path accepts (ALERTS_MAX_INGEST_BODY_BYTES / ALERTS_MAX_BODY_BYTES)."""

    def limit(path: str) -> int:
        if path.startswith(INGEST_PATHS):
            return settings.max_ingest_body_bytes
        return settings.max_body_bytes

    return limit


def _too_large(limit: int) -> str:
    return f"the request body is larger than {limit} bytes"


class BodyLimit:
    """ASGI middleware: 413 for a body over its route's limit, decided before the app reads it."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await self._refuse(scope, receive, send, 400, "invalid Content-Length")
                return
            if int(declared) > limit:
                await self._refuse(scope, receive, send, 413, _too_large(limit))
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the app's own body read: its error handling answers (413, page or JSON).
                    raise HTTPException(413, _too_large(limit))
            return message

        await self.app(scope, counting_receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, code: int, detail: str) -> None:
        request = Request(scope)
        response: Response
        if pages.wants_html(request):
            response = pages.problem(
                request,
                code,
                "That was too much to send",
                "We couldn't take in what was sent. Please go back and try again.",
            )
        else:
            response = JSONResponse({"detail": detail}, status_code=code)
        # The body is not read: the connection closes after the answer instead of draining it.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


class StrictTransport:
    """ASGI middleware: ``Strict-Transport-Security`` on every answer (production serves HTTPS only)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"strict-transport-security", HSTS.encode())]
            await send(message)

        await self.app(scope, receive, send_with_hsts)
