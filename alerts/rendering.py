"""Email rendering: Jinja2 templates, CSS inlined by premailer once per shared rendering.

A rendering is shared by every recipient of an event. Per-recipient values (the unsubscribe and manage
links) are left as placeholders such as ``%%unsubscribe_url%%`` and filled in at send time by plain string
replacement (or by the provider's substitutions), so premailer never runs per recipient.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
PLACEHOLDERS = ("unsubscribe_url", "manage_url", "confirm_url")
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9._~:/?#@!$&'()*+,;=%-]*$")


def placeholder(name: str) -> str:
    return f"%%{name}%%"


# Parts of an email that differ between groups of its recipients (what their emails say about sites near
# them, alerts.contents): the shared rendering carries one placeholder per part and slot, ``%%near_site_text%%``
# in the text and ``%%near_site_html%%`` in the HTML, filled per recipient at send time like the links. The
# fragments are our own renderings, written with inline styles (premailer never sees them). The nearest
# site's sentence and the contact line are separate slots: the contact line is often the same for every
# reader of a batch (a central contact, or none), and then it goes into the rendering once
# (alerts.contents.prepare). New slots go last: fragments stored before them unpack with the new ones empty.
SLOTS = ("near_changes", "near_site", "near_contact")
FRAGMENT_SUFFIXES = ("_text", "_html")


def slot(name: str, part: str) -> str:
    return placeholder(f"{name}_{part}")


@dataclass(frozen=True)
class Content:
    subject: str
    text: str
    html: str

    def as_dict(self) -> dict[str, str]:
        return {"subject": self.subject, "text": self.text, "html": self.html}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Content:
        return cls(subject=str(data["subject"]), text=str(data["text"]), html=str(data["html"]))


def _as_is(value: Any) -> Any:
    return value


class Renderer:
    """Renders emails. Templates pass text the service only quotes (trial titles, sponsors, site names,
    contacts, record excerpts, the subscriber's own label) through the ``quoted`` filter: as it is in the
    email, and marked by ``quote`` where readability is measured (tests/test_plain_language.py)."""

    def __init__(self, templates_dir: Path = TEMPLATES_DIR, quote: Callable[[Any], Any] = _as_is) -> None:
        email_dir = templates_dir / "email"
        self._html = Environment(
            loader=FileSystemLoader(email_dir),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        # Plain-text parts must not be HTML-escaped ("Crohn's & colitis" stays readable).
        self._text = Environment(
            loader=FileSystemLoader(email_dir),
            autoescape=False,  # noqa: S701 - text/plain output, never parsed as HTML
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        for environment in (self._html, self._text):
            environment.filters["quoted"] = quote

    def render(self, name: str, context: Mapping[str, Any]) -> Content:
        """Render the email ``name`` once; per-recipient fields stay as placeholders."""
        ctx = {p: placeholder(p) for p in PLACEHOLDERS} | dict(context)
        text_ctx = ctx | {f"slot_{n}": slot(n, "text") for n in SLOTS}
        html_ctx = ctx | {f"slot_{n}": slot(n, "html") for n in SLOTS}
        subject = self._text.get_template(f"{name}/subject.txt").render(text_ctx)
        # A header value must be one line: newlines in a title must never become header injection.
        subject = " ".join(subject.split())
        text = self._text.get_template(f"{name}/body.txt").render(text_ctx)
        raw_html = self._html.get_template(f"{name}/body.html").render(html_ctx | {"subject": subject})
        return Content(subject=subject, text=text, html=_inline(raw_html))

    def text(self, name: str, context: Mapping[str, Any]) -> str:
        """Only the plain-text part of ``name`` (no HTML, no premailer), slots left as tokens."""
        ctx = {p: placeholder(p) for p in PLACEHOLDERS} | {f"slot_{n}": slot(n, "text") for n in SLOTS} | dict(context)
        return self._text.get_template(f"{name}/body.txt").render(ctx)

    def fragment(self, name: str, context: Mapping[str, Any]) -> tuple[str, str]:
        """(text, html) of ``templates/email/_fragments/<name>.{txt,html}``: Jinja only, no premailer."""
        ctx = {p: placeholder(p) for p in PLACEHOLDERS} | dict(context)
        text = self._text.get_template(f"_fragments/{name}.txt").render(ctx)
        return text, self._html.get_template(f"_fragments/{name}.html").render(ctx)

    def inlined_fragment(self, name: str, context: Mapping[str, Any]) -> tuple[str, str]:
        """(text, inlined HTML) of a part of an email: ``{name}.txt`` and ``{name}.html`` (digest entries).

        The HTML is rendered inside ``digest/fragment.html`` (the emails' own layout and CSS) so premailer
        inlines it as it would in a whole email; only the part between the fragment markers is kept.
        Per-recipient values stay placeholders, as in ``render``.
        """
        ctx = {p: placeholder(p) for p in PLACEHOLDERS} | dict(context)
        text = self._text.get_template(f"{name}.txt").render(ctx)
        page = self._html.get_template("digest/fragment.html").render(
            ctx | {"subject": "", "fragment_template": f"{name}.html"}
        )
        inlined = _inline(page)
        start, end = inlined.find(FRAGMENT_START), inlined.find(FRAGMENT_END)
        if start < 0 or end < start:
            raise RuntimeError(f"fragment markers lost while inlining {name}")
        return text, inlined[start + len(FRAGMENT_START) : end].strip()


FRAGMENT_START = "<!--fragment-->"
FRAGMENT_END = "<!--/fragment-->"


def _inline(raw_html: str) -> str:
    inlined: str = _inliner()(
        raw_html,
        remove_classes=False,
        keep_style_tags=True,  # media queries for small screens cannot be inlined
        strip_important=False,
        cssutils_logging_level="CRITICAL",
        allow_network=False,
        disable_validation=True,
    ).transform()
    return inlined


def load_inliner() -> None:
    """Import premailer now (a process about to render many emails: the watcher's lanes), not on the first
    email it renders."""
    _inliner()


@cache
def _inliner() -> type[Any]:
    """premailer's Premailer, turning each stylesheet into inlinable rules once per process.

    premailer caches parsing a stylesheet but formats its rules again for every email (~15 ms, most of a
    rendering), while every email carries the same stylesheet (``_base``). The rules are tuples of strings
    and the leftovers (media queries) are only read, so one result serves every rendering.
    Imported on first use: premailer with lxml and cssutils is ~25 MiB, and most processes (Celery's main
    process, a worker that only sends) never render.
    """
    import premailer

    rules: dict[tuple[Any, ...], Any] = {}

    class Inliner(premailer.Premailer):  # type: ignore[misc]
        def _parse_style_rules(self, css_body: str, ruleset_index: int) -> Any:
            # Every option the rules depend on is in the key.
            options = (self.strip_important, self.disable_validation, self.exclude_pseudoclasses)
            key = (css_body, ruleset_index, *options, self.include_star_selectors)
            if key not in rules:
                if len(rules) >= 64:  # other stylesheets (tests): bounded
                    rules.clear()
                rules[key] = super()._parse_style_rules(css_body, ruleset_index)
            return rules[key]

    return Inliner


def personalize(content: Content, values: Mapping[str, str]) -> Content:
    """Fill the per-recipient placeholders.

    Values are URLs made of URL-safe characters, except fragments (names ending in ``_text`` / ``_html``):
    our own renderings of one part, put into that part as they are.
    """
    text, body_html = content.text, content.html
    for name, value in values.items():
        if name.endswith("_text"):
            text = text.replace(placeholder(name), value)
            continue
        if name.endswith("_html"):
            body_html = body_html.replace(placeholder(name), value)
            continue
        if not _SAFE_VALUE.match(value):
            raise ValueError(f"per-recipient value {name!r} has characters unsafe in HTML")
        text = text.replace(placeholder(name), value)
        body_html = body_html.replace(placeholder(name), html.escape(value, quote=True))
    return Content(subject=content.subject, text=text, html=body_html)
