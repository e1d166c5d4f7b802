"""Request dependencies: the process runtime (settings, database, transport...) and bearer-token checks."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status

from alerts.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    # async: FastAPI runs a plain ``def`` dependency in the threadpool, a thread hand-off per request.
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def require_token(expected: str | None, given: str | None, realm: str) -> None:
    """Constant-time check; an unset token means the endpoint is closed, not open."""
    if not expected or not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or invalid bearer token",
            headers={"WWW-Authenticate": f'Bearer realm="{realm}"'},
        )


def celery_app(request: Request) -> Any:
    """The Celery app this web process talks to the broker with, created on first use."""
    app = getattr(request.app.state, "celery", None)
    if app is None:
        from alerts.tasks.app import create_app

        app = request.app.state.celery = create_app(request.app.state.runtime.settings)
    return app
