"""HTML pages for subscribers: the Jinja2 templates in ``templates/web``, friendly error pages, and the
error handling that makes sure a visitor never sees a stack trace.

Every page is sent with headers that keep tokens private (no Referer to other sites, no caching, no
indexing) and with a strict Content-Security-Policy: one stylesheet, and small scripts of our own (the city
autocomplete, ``static/places.js``; the sign-up form's time zone from the browser, ``static/timezone.js``);
every form works without them.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup, escape
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alerts.rendering import TEMPLATES_DIR
from alerts.web.skeleton import Slot

log = structlog.get_logger("alerts.web")

STATIC_DIR = TEMPLATES_DIR.parent / "static"

templates = Jinja2Templates(
    env=Environment(
        loader=FileSystemLoader(TEMPLATES_DIR / "web"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        # Compiled once per process: no stat() of the template files on every page (they change on deploy).
        auto_reload=False,
    )
)


def capitalize_first(text: str) -> str:
    """'changes to study NCT…' -> 'Changes to study NCT…' (unlike ``capitalize``, the rest is left alone)."""
    return text[:1].upper() + text[1:]


templates.env.filters["capitalize_first"] = capitalize_first


@dataclass(frozen=True)
class _Menu:
    """A menu's ``<option>``s joined once, and where each value's opening tag ends (in the text and in its UTF-8
    bytes, which a skeleton's fill uses: ``alerts.web.skeleton``)."""

    html: str
    tag_ends: dict[str, int]
    encoded: bytes
    byte_ends: dict[str, int]

    def marking(self, selected: object) -> Markup:
        """The menu with ``selected``'s option marked (a copy cut around that tag: no search of the whole menu,
        which for the ~600 time zones cost more than the rest of the menu's work)."""
        end = self.tag_ends.get(str(selected))
        if end is None:
            return Markup(self.html)  # noqa: S704 (escaped when built)
        return Markup(f"{self.html[: end - 1]} selected{self.html[end - 1 :]}")  # noqa: S704 (escaped when built)

    def marked_bytes(self, selected: object) -> bytes:
        """``marking``'s text as UTF-8, cut from the bytes encoded once (the time zone menu is 15 KB)."""
        end = self.byte_ends.get(str(selected))
        if end is None:
            return self.encoded
        whole = memoryview(self.encoded)
        return b"".join((whole[: end - 1], b" selected", whole[end - 1 :]))


def _menu(options: Iterable[tuple[str, str]]) -> _Menu:
    parts: list[str] = []
    tag_ends: dict[str, int] = {}
    byte_ends: dict[str, int] = {}
    at = at_byte = 0
    for key, option in options:
        tag = option[: option.index(">") + 1]
        # The first, as str.replace(..., 1) marked it.
        tag_ends.setdefault(key, at + len(tag))
        byte_ends.setdefault(key, at_byte + len(tag.encode()))
        parts.append(option)
        at += len(option)
        at_byte += len(option.encode())
    html = "".join(parts)
    return _Menu(html, tag_ends, html.encode(), byte_ends)


@functools.lru_cache(maxsize=8)
def _options_menu(values: tuple[str, ...]) -> _Menu:
    # No value attribute: an option's value is its text (HTML), and the menu is most of the manage page's bytes.
    return _menu((v, f"<option>{escape(v)}</option>") for v in values)


def options(values: tuple[str, ...], selected: str) -> Markup:
    """``<option>``s of ``values`` with ``selected`` marked: a long list (every IANA time zone, ~600) is escaped
    and joined once per process instead of on every manage page and sign-up form (it was most of their render)."""
    if isinstance(selected, Slot):  # a skeleton's render (alerts.web.skeleton): marked when filled
        return Markup(selected.then(_options_menu(values).marked_bytes))  # noqa: S704 (a marker)
    return _options_menu(values).marking(selected)


templates.env.filters["options"] = options


@functools.lru_cache(maxsize=32)
def _choices_menu(pairs: tuple[tuple[object, str], ...]) -> _Menu:
    return _menu((str(value), f'<option value="{escape(value)}">{escape(label)}</option>') for value, label in pairs)


def choices(pairs: Iterable[tuple[object, str]], selected: object) -> Markup:
    """``<option value=…>label</option>`` for (value, label) pairs, ``selected`` marked: what a template loop writes,
    joined once per process (the digest hour and weekday menus were half of a manage page's template work)."""
    if isinstance(selected, Slot):  # a skeleton's render (alerts.web.skeleton): marked when filled
        return Markup(selected.then(_choices_menu(tuple(pairs)).marked_bytes))  # noqa: S704 (a marker)
    return _choices_menu(tuple(pairs)).marking(selected)


templates.env.filters["choices"] = choices

# script-src 'self': small scripts of our own (static/places.js, static/timezone.js).
_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors {}"
)


def is_signup_page(path: str) -> bool:
    """The sign-up form and every answer it leads to (sent, errors, 429): the pages another site may frame."""
    return path == "/subscribe" or path.startswith("/subscribe/")


def page_headers(embed_origins: Sequence[str] = ()) -> dict[str, str]:
    """Headers for every HTML page: framed only by ``embed_origins`` (ALERTS_EMBED_ORIGINS), else by nobody."""
    return dict(_page_headers(tuple(embed_origins)))


@functools.lru_cache(maxsize=8)
def _page_headers(embed_origins: tuple[str, ...]) -> dict[str, str]:
    # Built once per set of origins (callers get a copy): the same few headers for every page.
    headers = {
        "Content-Security-Policy": _CSP.format(" ".join(embed_origins) if embed_origins else "'none'"),
        # Page URLs carry tokens: never send them to another site, never keep them in a shared cache.
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "X-Robots-Tag": "noindex, nofollow",
    }
    if not embed_origins:
        headers["X-Frame-Options"] = "DENY"
    return headers


def headers_for(request: Request) -> dict[str, str]:
    """The page headers for this request's path: the sign-up pages may be embedded by the configured sites."""
    return page_headers(_framing(request))


def _framing(request: Request) -> tuple[str, ...]:
    """The sites that may frame this page (ALERTS_EMBED_ORIGINS for the sign-up pages, else none)."""
    # The scope's path, not request.url.path: building the URL (host header, urlsplit) cost more than the rest of
    # a page's headers, and it only differs by percent-encoding ?, # and \, which the prefix test never looks at.
    if is_signup_page(request.scope["path"]):
        return tuple(request.app.state.runtime.settings.embed_origins)
    return ()


@functools.lru_cache(maxsize=8)
def _raw_page_headers(embed_origins: tuple[str, ...]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in _page_headers(embed_origins).items())


def site_context(request: Request) -> dict[str, Any]:
    runtime = request.app.state.runtime
    return {"site_name": runtime.settings.site_name}


def render(
    request: Request,
    name: str,
    context: Mapping[str, Any] | None = None,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    # Rendered straight from the compiled template (Starlette's TemplateResponse adds nothing our pages use, at
    # a cost a scanner burst multiplies).
    body = templates.env.get_template(name).render(site_context(request) | dict(context or {}))
    return respond(request, body, status_code, headers)


def respond(
    request: Request, body: str | bytes, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> HTMLResponse:
    """A page already rendered (``alerts.web.skeleton`` gives bytes), with every page's headers."""
    if headers:
        return HTMLResponse(body, status_code=status_code, headers=headers_for(request) | dict(headers))
    response = HTMLResponse(body, status_code=status_code)
    # The page headers as Starlette encodes them, encoded once per process, in front of the length and type it
    # adds (the order they have always had).
    response.raw_headers[:0] = _raw_page_headers(_framing(request))
    return response


def problem(
    request: Request,
    status_code: int,
    title: str,
    message: str,
    next_steps: list[str] | None = None,
    headers: Mapping[str, str] | None = None,
    back: tuple[str, str] | None = None,
) -> HTMLResponse:
    """A friendly page for something that cannot be done: what happened and what to do next.

    ``back`` (href, label): a link out of the dead end, e.g. to the form again.
    """
    context = {"title": title, "message": message, "next_steps": next_steps or [], "back": back}
    return render(request, "problem.html", context, status_code=status_code, headers=headers)


def invalid_link(request: Request) -> HTMLResponse:
    """Tampered, truncated or wrong-kind token: 400."""
    return problem(
        request,
        400,
        "This link doesn't work",
        "The link may have been cut short or changed when it was copied.",
        [
            "Open the link straight from the email, or copy the whole address into your browser.",
            "Every email we send has working links to unsubscribe and to manage your alerts.",
        ],
    )


def gone_link(request: Request) -> HTMLResponse:
    """A genuine link whose subscription or subscriber no longer exists (erased, expired sign-up): 404."""
    return problem(
        request,
        404,
        "This link is no longer valid",
        "The alert it was for no longer exists, so nothing more will be sent from it.",
        ["If you want alerts again, sign up on the study page you came from."],
    )


def wants_html(request: Request) -> bool:
    path = request.url.path
    if path.startswith("/api/") or path in {"/openapi.json", "/healthz"}:
        return False
    return "text/html" in request.headers.get("accept", "")


def wait_phrase(seconds: int) -> str:
    """'about 5 minutes', 'about 3 hours': precise enough for a person, never '1440 minutes'."""
    if seconds < 90:
        return "a minute"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} minutes"
    hours = round(seconds / 3600)
    return "about an hour" if hours == 1 else f"about {hours} hours"


def rate_limited_page(request: Request, retry_after_s: int, back: str | None = None) -> HTMLResponse:
    """429 as a page; ``back`` is where "Back to the form" leads (the sign-up form with its choices)."""
    return problem(
        request,
        429,
        "Please wait a little",
        f"We've had too many sign-up requests. Please try again in {wait_phrase(retry_after_s)}.",
        ["If you've signed up already, look for our confirmation email, and check your spam folder."],
        headers={"Retry-After": str(retry_after_s)},
        back=(back, "Back to the form") if back else None,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """Browsers get a page for unknown addresses and wrong methods; API clients keep FastAPI's JSON."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (404, 405) and wants_html(request):
        title = "Page not found" if exc.status_code == 404 else "This page can't be used that way"
        response = problem(
            request,
            exc.status_code,
            title,
            "There's nothing here. If you followed a link from one of our emails, open it again from the email.",
        )
        response.headers.update(exc.headers or {})
        return response
    return await http_exception_handler(request, exc)


class FriendlyErrors:
    """ASGI middleware: an unhandled exception becomes a generic 500 page (JSON under /api/).

    Logged with the route and the stack but not the exception's message, which can carry SQL parameters
    (an address). The exception stops here, so the server does not log it again in full.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            route = scope.get("route")
            log.error(
                "web.unhandled_error",
                route=getattr(route, "path", None),
                method=scope.get("method"),
                error=type(exc).__name__,
                stack="".join(traceback.format_tb(exc.__traceback__)),
            )
            if started:
                raise
            request = Request(scope)
            response: Response
            if request.url.path.startswith("/api/") or not wants_html(request):
                response = JSONResponse({"detail": "Internal Server Error"}, status_code=500)
            else:
                response = problem(
                    request,
                    500,
                    "Something went wrong on our side",
                    "We couldn't finish that. Nothing you did caused this, and we've been told about it.",
                    ["Please try again in a few minutes."],
                )
            await response(scope, receive, send)


def install(app: FastAPI) -> None:
    """Static files, friendly error pages, and the 500 safety net."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    handler: Callable[[Request, Exception], Awaitable[Response]] = _http_error
    app.add_exception_handler(StarletteHTTPException, handler)
    app.add_middleware(FriendlyErrors)
