"""The whole digest, for its web page (``/digest/<token>``): what an email left out to stay within its byte
budget (``alerts.digests.assemble.plan``), and the same entries for a digest that fitted.

Read-only: it renders nothing new (every fragment a sent digest showed exists already; one that does not
is left out, as in the email) and writes nothing, so opening the page, or a mail scanner following the
link, changes no state. Entries of alerts stopped since are not shown, as in a digest sent now.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from html import escape

from sqlalchemy import select
from sqlalchemy.orm import Session

from alerts.digests.assemble import CHANGES_SECTION, DIGEST_URL, INTRO, Item, assemble, entries, needed_keys, shape
from alerts.digests.send import items_query, load_fragments
from alerts.models import Digest, Subscriber


@dataclass(frozen=True)
class WholeDigest:
    subject: str
    html: str  # the entries' HTML with every stop link filled in (relative links on the site's own pages)
    entries: int
    manage_token: str


# Email HTML carries inline CSS for mail clients; the site's pages have a stylesheet and a CSP that
# refuses inline styles, so the attributes are dropped rather than left to be blocked.
_STYLE = re.compile(r'\sstyle="[^"]*"')


def whole_digest(session: Session, digest_id: int, stop_url: Callable[[str], str]) -> WholeDigest | None:
    """The digest with every entry (no budget); None when it no longer exists or its subscriber was erased.

    A digest with nothing left to show (every alert in it stopped) has no entries and an empty body.
    """
    digest = session.get(Digest, digest_id)
    if digest is None or digest.subscriber_id is None:
        return None
    manage_token = session.scalar(select(Subscriber.manage_token).where(Subscriber.id == digest.subscriber_id))
    if manage_token is None:
        return None
    rows = session.connection().execute(items_query(Digest.id == digest_id)).tuples().all()
    items = [
        Item(key, variant, int(sid), status, bool(weekly), token)
        for _, key, variant, sid, weekly, status, token in rows
    ]
    shapes = [shape(i) for i in items]
    fragments = load_fragments(session, {CHANGES_SECTION, *INTRO.values(), *needed_keys(*entries(shapes))})
    assembled = assemble(items, fragments)
    if assembled is None:
        return WholeDigest(subject="", html="", entries=0, manage_token=manage_token)
    html = assembled.html
    for name, token in assembled.stops.items():
        html = html.replace(f"%%{name}%%", escape(stop_url(token), quote=True))
    html = _STYLE.sub("", html.replace(DIGEST_URL, ""))
    return WholeDigest(subject=assembled.subject, html=html, entries=assembled.entries, manage_token=manage_token)
