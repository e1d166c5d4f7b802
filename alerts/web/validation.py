"""The 422 answer for a request FastAPI could not validate: where and why, never what was sent.

FastAPI's default handler echoes each bad value back (``input``, ``ctx``). That repeats a stranger's
address or words to whoever sent them, and a value that cannot be encoded (a lone surrogate) crashed the
handler itself. This one keeps ``loc``, ``msg`` and ``type`` only, with anything unprintable escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from alerts.text import escaped


class FieldIssue(BaseModel):
    loc: list[str | int] = Field(description="Where: 'body', 'query', 'path', then the field")
    msg: str = Field(description="What is wrong, without repeating the value")
    type: str = Field(description="A stable code, e.g. 'missing', 'string_too_long', 'value_error'")


class ValidationProblem(BaseModel):
    detail: list[FieldIssue]


def issues(errors: Sequence[Any]) -> list[FieldIssue]:
    found = []
    for error in errors:
        loc = [part if isinstance(part, int) else escaped(str(part))[:100] for part in error.get("loc", ())]
        found.append(
            FieldIssue(loc=loc, msg=escaped(str(error.get("msg", "")))[:300], type=str(error.get("type", "invalid")))
        )
    return found


def problem_response(found: list[FieldIssue], **extra: Any) -> JSONResponse:
    return JSONResponse(
        ValidationProblem(detail=found).model_dump() | extra,
        status_code=422,
    )


async def request_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return problem_response(issues(exc.errors()))
