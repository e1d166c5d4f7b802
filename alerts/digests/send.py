"""Sending a range of digests: claim, assemble per subscriber from shared fragments, send, record.

The claim (queued -> sending, under a lease) commits before the transport is called, so two workers never
send one digest; a worker that dies mid-send leaves the lease to run out and maintenance re-queues the
digest (``schedule.requeue``); a retried digest keeps its Message-ID.

**The SendGrid request design** (measured with ``benchmarks/digest.py``, figures in benchmarks/README.md).
A digest differs per subscriber, its entries do not. SendGrid shares content between the recipients of a
request only as the message-level ``content``; per recipient it has ``substitutions`` (10,000 bytes each).
Section tags, the one feature that shared fragments between recipients with different content, were
removed by SendGrid ("due to low usage, this setting has been deprecated and has been removed") and are
absent from the official OpenAPI description the stand-in validates against. So, per batch of digests:

1. Subscribers whose digests have the same entries in the same order (``Assembled.key``), at least
   ``SHARE_MIN`` of them in the batch, share one rendering: one transport batch whose content is the
   assembled digest, links per recipient as substitutions, as immediate alerts are sent. Nothing is
   repeated; 1,000 such digests are one request. Smaller groups are packed (2.) with the rest.
2. Every other digest is packed: the batch's content is the digest shell (layout, CSS, footer) sent once
   per request, and each recipient's entries go in its own substitutions (``Recipient.parts``), 1,000
   digests per request. The entries repeat across recipients, which SendGrid leaves no way to avoid.
3. **The byte budget** (the product's decision): every digest is planned (``assemble.plan``) to keep its
   substitutions below SendGrid's 10,000 bytes with ``BUDGET_MARGIN_BYTES`` to spare (``budget``): the
   most important entries that fit, then "N more changes did not fit in this email" and one link to the
   whole digest's page (``/digest/<token>``, ``alerts.digests.view``). Before it, about half of the
   random benchmark's digests (over ~10 entries) went alone, one request each, which made 100,000 digests
   take minutes; now every digest is one personalization of a 1,000-recipient request. Entries are kept
   compact (headings alone get inline CSS) so most digests fit whole.
4. A digest whose substitutions would still exceed ``ctx.pack_limit_bytes`` (a link longer than the budget
   assumed; ``ALERTS_DIGEST_PACK_LIMIT_BYTES`` set lower to compare designs) is sent as a message of its own.

**The claim is set-based**: one ``UPDATE ... RETURNING`` claims the range, one query reads every held item
of the batch (Core rows), and digests whose items have the same shapes (``assemble.Shape``: news, group,
shown, weekly) are planned once per batch and only bound to each subscriber's links; 1,000 identical
digests are one plan.
"""

from __future__ import annotations

import functools
import html as html_module
import re
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ARRAY, BigInteger, Engine, String, Table, and_, any_, bindparam, or_, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from alerts import ctgov
from alerts.compiled import Statement, compiled
from alerts.db import transaction
from alerts.digests import held
from alerts.digests.assemble import (
    CHANGES_SECTION,
    INTRO,
    Assembled,
    Budget,
    Entries,
    Fragment,
    Shape,
    entries,
    needed_keys,
    plan,
)
from alerts.models import (
    Digest,
    DigestFragment,
    DigestStatus,
    HeldItem,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    TrialVersion,
    UTCDateTime,
    utcnow,
)
from alerts.rendering import Content, Renderer
from alerts.sending import Links, alert_headers
from alerts.tokens import Purpose, Signer
from alerts.transports.base import PART_TAGS, Batch, Outcome, Recipient, Result, Transport
from alerts.transports.sendgrid import MAX_SUBSTITUTION_BYTES, json_bytes, substitution_bytes

# SendGrid allows 10,000 bytes of substitutions per recipient (compact JSON, links included):
# ALERTS_DIGEST_PACK_LIMIT_BYTES.
PACK_LIMIT_BYTES = 10_000
# The byte budget of a digest (``budget``) keeps this much below SendGrid's limit: estimates of link and
# subject lengths can be a little short without any digest having to go alone.
BUDGET_MARGIN_BYTES = 600
TOKEN_BYTES = 48  # a signed token: an id of up to 9 digits in base64 (12), a dot, a 27-character signature
SUBJECT_BYTES = 120  # "Your weekly digest: 20 updates to studies you follow and 20 new studies", with its tag
MORE_NOTE_BYTES = 120  # "<p><strong>19 more changes</strong> did not fit in this email. <a href=..."
CATEGORY = "digest"
# Single-digest batches recorded together (see send_range).
RECORD_EVERY = 50
# Identical digests share one rendering (their own request) from this many on; fewer are packed with the
# rest. Random digests have pairs and triples of one-entry digests: as requests of their own they were 506
# of the random benchmark's 606 requests, each an HTTP round trip and a transaction to record it, to save
# a few kilobytes each (benchmarks/README.md, branch d15c). 10 is a judgement, not a tuned figure: a
# request's fixed cost against the few kilobytes of entries each packed copy repeats.
SHARE_MIN = 10


@dataclass
class DigestReport:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retry: int = 0
    empty: int = 0
    skipped: int = 0
    suppressed: int = 0
    shared_batches: int = 0  # batches of identical digests (one rendering, links per recipient)
    packed: int = 0  # digests sent with their entries as substitutions
    alone: int = 0  # digests too large to pack: a message of their own
    shortened: int = 0  # digests that left entries out (byte budget) and link to their whole page
    omitted: int = 0  # entries left out of those emails
    # Characters of content handed to the transport (shared content once per batch, plus each recipient's
    # own parts): what the request design saves or repeats.
    content_chars: int = 0
    retry_after_s: float | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """What sending needs from the process (``alerts.runtime.Runtime``), passed in."""

    engine: Engine
    transport: Transport
    links: Links
    signer: Signer
    renderer: Renderer
    site: Mapping[str, Any]
    sender: tuple[str, str]
    lease_s: int
    pack_limit_bytes: int = PACK_LIMIT_BYTES


_SHELLS: dict[tuple[int, str], Content] = {}


def shell(renderer: Renderer, site: Mapping[str, Any]) -> Content:
    """The digest layout, rendered and inlined once per process (it is the same for every digest)."""
    key = (id(renderer), repr(sorted(site.items())))
    found = _SHELLS.get(key)
    if found is None:
        found = _SHELLS[key] = renderer.render("digest", dict(site))
    return found


@dataclass(frozen=True)
class _Claimed:
    digest_id: int
    email: str | None  # None: the subscriber was erased
    manage_token: str | None
    suppressed: bool


def _claim(session: Session, after_id: int, upto_id: int, lease_s: int) -> tuple[datetime, list[_Claimed]]:
    """Queued -> sending under a lease, for the whole range in one ``UPDATE ... RETURNING``; then one query
    for the claimed digests' addresses, manage tokens and suppressions (Core rows, no ORM object per row).

    (Not subqueries in the RETURNING clause: SQLite's compiler writes them unqualified, and ambiguous.)"""
    now = utcnow()
    lease = now + timedelta(seconds=lease_s)
    table = cast(Table, Digest.__table__)
    connection = session.connection()
    returned = connection.execute(
        update(table)
        .where(table.c.id > after_id, table.c.id <= upto_id, table.c.status == DigestStatus.QUEUED.value)
        .values(status=DigestStatus.SENDING.value, lease_until=lease, attempts=table.c.attempts + 1, updated_at=now)
        .returning(table.c.id, table.c.subscriber_id)
    ).all()
    if not returned:
        return lease, []
    owners = (
        select(Digest.subscriber_id)
        .where(Digest.id > after_id, Digest.id <= upto_id, Digest.lease_until == lease)
        .scalar_subquery()
    )
    people = {
        int(subscriber_id): (email, manage_token, suppression is not None)
        for subscriber_id, email, manage_token, suppression in connection.execute(
            select(Subscriber.id, Subscriber.email, Subscriber.manage_token, Suppression.id)
            .join(Suppression, Suppression.email_hash == Subscriber.email_hash, isouter=True)
            .where(Subscriber.id.in_(owners))
        )
    }
    claimed = []
    for digest_id, subscriber_id in returned:
        email, manage_token, suppressed = people.get(subscriber_id, (None, None, False))
        claimed.append(_Claimed(int(digest_id), email, manage_token, suppressed))
    claimed.sort(key=lambda c: c.digest_id)
    return lease, claimed


def carried_by() -> Any:
    """Join condition: the held items a digest carries (its subscriber's, between its watermarks)."""
    return and_(
        HeldItem.subscriber_id == Digest.subscriber_id,
        HeldItem.id <= Digest.upto,
        or_(
            and_(HeldItem.weekly.is_(False), HeldItem.id > Digest.daily_after),
            and_(Digest.weekly.is_(True), HeldItem.weekly.is_(True), HeldItem.id > Digest.weekly_after),
        ),
    )


def items_query(*where: Any) -> Any:
    """The held items of the digests matching ``where``, with their subscriptions' state, in digest order and
    then in the order the service received the news (a net change runs from the first to the last)."""
    return (
        select(
            Digest.id,
            HeldItem.dedupe_key,
            HeldItem.variant,
            HeldItem.subscription_id,
            HeldItem.weekly,
            Subscription.status,
            Subscription.unsubscribe_token,
        )
        .join(HeldItem, carried_by())
        .join(Subscription, Subscription.id == HeldItem.subscription_id, isouter=True)
        .where(*where)
        .order_by(Digest.id, HeldItem.event_id, HeldItem.id)
    )


@dataclass
class _Carried:
    """One digest's items, split into what decides its content (shapes) and its own links."""

    shapes: list[Shape] = field(default_factory=list)
    tokens: list[str | None] = field(default_factory=list)
    key: tuple[Shape, ...] = ()  # the shapes as a dictionary key (digests of one key have one content)


@functools.cache
def _items_statement() -> Any:
    """``items_query`` of one claim: after_id < id <= upto_id, still sending under exactly this lease."""
    return items_query(
        Digest.id > bindparam("after_id", type_=BigInteger()),
        Digest.id <= bindparam("upto_id", type_=BigInteger()),
        Digest.status == bindparam("sending", type_=String()),
        Digest.lease_until == bindparam("lease", type_=UTCDateTime()),
    )


@functools.cache
def _items_sql() -> Statement:
    """``_items_statement`` compiled once for PostgreSQL (see ``_item_rows``)."""
    return compiled(_items_statement())


def _item_rows(session: Session, after_id: int, upto_id: int, lease: datetime) -> Sequence[Sequence[Any]]:
    values = {"after_id": after_id, "upto_id": upto_id, "sending": DigestStatus.SENDING.value, "lease": lease}
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        # The driver's own cursor on this transaction's connection: its rows are already the plain tuples the
        # loop below wants. Through SQLAlchemy's result each of the ~5,000 rows of a batch became a Row
        # first (a fifth of an identical-digest batch's worker time). The lease is an aware UTC datetime,
        # which psycopg binds to timestamptz as UTCDateTime does.
        statement = _items_sql()
        cursor = connection.connection.cursor()
        try:
            cursor.execute(statement.sql, statement.params(**values))
            return cast(Sequence[Sequence[Any]], cursor.fetchall())
        finally:
            cursor.close()
    # One fetch of the driver's rows, not a fetch per row.
    return connection.execute(_items_statement(), values).tuples().all()


def _items(session: Session, after_id: int, upto_id: int, lease: datetime) -> dict[int, _Carried]:
    """The held items each claimed digest carries, for the whole batch in one query (the hot loop of a
    batch: thousands of rows, so plain tuples and no object per row)."""
    rows = _item_rows(session, after_id, upto_id, lease)
    found: dict[int, _Carried] = {}
    active = SubscriptionStatus.ACTIVE.value
    current, shapes, tokens = -1, [], []
    for digest_id, key, variant, _subscription_id, weekly, status, token in rows:
        if digest_id != current:
            current = digest_id
            carried = found[int(digest_id)] = _Carried()
            shapes, tokens = carried.shapes, carried.tokens
        shapes.append((key, variant, status == active and token is not None, bool(weekly)))
        tokens.append(token)
    for carried in found.values():
        carried.key = tuple(carried.shapes)
    return found


def _render_missing(session: Session, renderer: Renderer, site: Mapping[str, Any], keys: Sequence[str]) -> None:
    """Fragments not made when their event was held: net changes (first seen now), static headings."""
    for key in keys:
        if key.startswith("static:"):
            if key == CHANGES_SECTION:
                text, html = renderer.inlined_fragment(
                    "digest/_section", {**site, "heading": "Changes to studies you follow"}
                )
            else:
                cadence = key.rsplit(":", 1)[-1]
                heading = f"Your {cadence} digest"
                text, html = renderer.inlined_fragment("digest/_intro", {**site, "heading": heading})
            held.store_fragment(session, key, held.STATIC, 0, "", text, html)
            continue
        if key.startswith(f"{held.GROUP}:"):
            held.render_group(session, renderer, site, key.removeprefix(f"{held.GROUP}:"))
            continue
        parsed = held.parse_change_key(key)
        if parsed is None:
            continue  # a new trial's fragment is made when held; without it the entry is left out
        nct, from_fp, to_fp = parsed
        rows = session.execute(
            select(TrialVersion.fingerprint, TrialVersion.record).where(
                TrialVersion.nct_id == nct, TrialVersion.fingerprint.in_([from_fp, to_fp])
            )
        )
        versions = {fingerprint: record for fingerprint, record in rows}
        if from_fp not in versions or to_fp not in versions:
            continue  # versions pruned: the entry is left out rather than shown wrong
        old, new = versions[from_fp], versions[to_fp]
        held.render_change(session, renderer, site, key, new, ctgov.diff(old, new))


def load_fragments(session: Session, keys: set[str]) -> dict[str, Fragment]:
    rows = session.connection().execute(
        select(
            DigestFragment.key,
            DigestFragment.kind,
            DigestFragment.importance,
            DigestFragment.title,
            DigestFragment.text,
            DigestFragment.html,
        ).where(DigestFragment.key.in_(sorted(keys)))
    )
    return {
        key: Fragment(kind, importance, title, text, html, json_bytes(text) + json_bytes(html))
        for key, kind, importance, title, text, html in rows
    }


def _mark(session: Session, ids: Sequence[int], status: DigestStatus, error: str | None = None) -> None:
    if ids:
        session.execute(
            update(Digest)
            .where(Digest.id.in_(list(ids)))
            .values(status=status.value, error=error, lease_until=None, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )


@dataclass(slots=True)
class _Prepared:
    digest_id: int
    email: str
    manage_token: str
    assembled: Assembled


def _urls(ctx: Context, p: _Prepared) -> dict[str, str]:
    token = ctx.signer.sign(Purpose.DIGEST, p.digest_id)
    values = {
        "unsubscribe_url": ctx.links.digest_unsubscribe(token),
        "manage_url": ctx.links.manage(p.manage_token),
    }
    if p.assembled.omitted:
        # The whole digest's page: the same token as the one-click link (it names the digest, not a person).
        values["digest_url"] = ctx.links.digest_view(token)
    prefix = ctx.links.unsubscribe("")
    for name, stop_token in p.assembled.stops.items():
        values[name] = prefix + stop_token
    return values


_STOP = re.compile(r"%%(stop_[0-9]+|digest_url)%%")


def _fill(text: str, values: Mapping[str, str], escape: bool) -> str:
    """The stop links (and the whole digest's link) put into a digest's own text (one pass)."""
    if escape:
        return _STOP.sub(lambda m: html_module.escape(values[m.group(1)], quote=True), text)
    return _STOP.sub(lambda m: values[m.group(1)], text)


_PLAIN_URL = re.compile(r"[A-Za-z0-9._~:/?#@!$()*+,;=%-]*")


def _link_limits(ctx: Context) -> tuple[dict[str, int], int]:
    """The longest each link may be for a budgeted digest to fit unmeasured (``_fits_unmeasured``): by name,
    and for the stop links. Worked out once per batch."""
    prefixes = {
        "unsubscribe_url": ctx.links.digest_unsubscribe(""),
        "manage_url": ctx.links.manage(""),
        "digest_url": ctx.links.digest_view(""),
    }
    by_name = {name: len(prefix) + TOKEN_BYTES for name, prefix in prefixes.items()}
    return by_name, len(ctx.links.unsubscribe("")) + TOKEN_BYTES


def _fits_unmeasured(
    ctx: Context, assembled: Assembled, values: Mapping[str, str], limits: tuple[dict[str, int], int]
) -> bool:
    """Whether a digest planned within its budget fits without measuring its filled parts: true when its
    links are no longer than the budget assumed (ASCII, as signed tokens are). Measuring each digest's
    10 KB of parts cost more than assembling it."""
    if not assembled.budgeted or ctx.pack_limit_bytes < MAX_SUBSTITUTION_BYTES:
        return False
    allowed_for, stop = limits
    for name, value in values.items():
        # Plain URL characters only: as many JSON bytes as characters, and nothing for HTML to escape.
        if len(value) > allowed_for.get(name, stop) or not _PLAIN_URL.fullmatch(value):
            return False
    return True


def _measured_fits(ctx: Context, parts: Mapping[str, str], links: Mapping[str, str]) -> bool:
    substitutions = {PART_TAGS[k]: v for k, v in parts.items()} | {f"%%{k}%%": v for k, v in links.items()}
    return substitution_bytes(substitutions) <= ctx.pack_limit_bytes


def batches(ctx: Context, prepared: Sequence[_Prepared], report: DigestReport) -> list[Batch]:
    """Transport batches for the assembled digests: shared where identical, packed, or alone (module docstring)."""
    base = shell(ctx.renderer, ctx.site)
    message_head, message_tail = ctx.links.message_id_parts("digest")
    by_key: dict[tuple[str, ...], list[_Prepared]] = defaultdict(list)
    for p in prepared:
        by_key[p.assembled.key].append(p)
    out: list[Batch] = []
    packed: list[Recipient] = []
    limits = _link_limits(ctx)

    def batch(content: Content, recipients: list[Recipient]) -> Batch:
        return Batch(
            content=content,
            recipients=recipients,
            from_email=ctx.sender[0],
            from_name=ctx.sender[1],
            headers=alert_headers(),
            category=CATEGORY,
        )

    def whole(a: Assembled) -> Content:
        return Content(
            subject=base.subject.replace(PART_TAGS["subject"], a.subject),
            text=base.text.replace(PART_TAGS["text"], a.text),
            html=base.html.replace(PART_TAGS["html"], a.html),
        )

    for group in by_key.values():
        first = group[0].assembled
        if len(group) >= SHARE_MIN:
            recipients = [
                Recipient(p.digest_id, p.email, _urls(ctx, p), f"{message_head}{p.digest_id}{message_tail}")
                for p in group
            ]
            out.append(batch(whole(first), recipients))
            report.shared_batches += 1
            continue
        for p in group:
            values = _urls(ctx, p)
            parts = {
                "subject": first.subject,
                "html": _fill(first.html, values, escape=True),
                "text": _fill(first.text, values, escape=False),
            }
            links = {"unsubscribe_url": values["unsubscribe_url"], "manage_url": values["manage_url"]}
            message_id = f"{message_head}{p.digest_id}{message_tail}"
            if _fits_unmeasured(ctx, first, values, limits) or _measured_fits(ctx, parts, links):
                packed.append(Recipient(p.digest_id, p.email, links, message_id, parts=parts))
                report.packed += 1
            else:
                content = whole(first)
                content = Content(
                    content.subject, _fill(content.text, values, False), _fill(content.html, values, True)
                )
                out.append(batch(content, [Recipient(p.digest_id, p.email, links, message_id)]))
                report.alone += 1
    if packed:
        out.append(batch(base, packed))
    return out


def _record_rows(
    session: Session, results: Sequence[Result], status_for: Mapping[Outcome, DigestStatus], now: datetime
) -> None:
    table = cast(Table, Digest.__table__)
    statement = (
        update(table)
        .where(
            table.c.id == bindparam("b_id"),
            # Not IN (...): executemany cannot expand a list.
            or_(table.c.status == DigestStatus.SENDING.value, table.c.status == DigestStatus.QUEUED.value),
        )
        .values(
            status=bindparam("b_status"),
            error=bindparam("b_error"),
            provider_message_id=bindparam("b_message_id"),
            sent_at=bindparam("b_sent_at"),
            lease_until=None,
            updated_at=now,
        )
    )
    rows = []
    for r in results:
        sent = r.outcome is Outcome.SENT
        rows.append(
            {
                "b_id": r.delivery_id,
                "b_status": status_for[r.outcome].value,
                "b_error": None if sent else (r.error or r.outcome.value)[:2000],
                "b_message_id": r.provider_message_id if sent else None,
                "b_sent_at": now if sent else None,
            }
        )
    session.connection().execute(statement, rows)


def _among(session: Session, column: Any, ids: Sequence[int]) -> Any:
    """``column IN ids``; on PostgreSQL as ``= ANY(array)``, one parameter: a list of 1,000 bound values cost
    more to send and parse (client and server) than updating the rows did."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam("ids", list(ids), type_=ARRAY(BigInteger())))
    return column.in_(list(ids))


def _record(engine: Engine, results: Sequence[Result], report: DigestReport) -> None:
    now = utcnow()
    groups: dict[tuple[Outcome, str | None, str | None], list[int]] = defaultdict(list)
    for r in results:
        sent = r.outcome is Outcome.SENT
        error = None if sent else (r.error or r.outcome.value)[:2000]
        groups[(r.outcome, r.provider_message_id if sent else None, error)].append(r.delivery_id)
    status_for = {
        Outcome.SENT: DigestStatus.SENT,
        Outcome.FAILED: DigestStatus.FAILED,
        Outcome.RETRY: DigestStatus.QUEUED,
    }
    deadline = time.monotonic() + 300
    while True:
        try:
            with transaction(engine) as session:
                if len(groups) > 5:
                    # Single-digest requests each have their own message id: one executemany by primary
                    # key instead of a statement per digest.
                    _record_rows(session, results, status_for, now)
                    groups = {}
                for (outcome, message_id, error), ids in groups.items():
                    values: dict[str, Any] = {
                        "status": status_for[outcome].value,
                        "error": error,
                        "lease_until": None,
                        "updated_at": now,
                    }
                    if outcome is Outcome.SENT:
                        values |= {"provider_message_id": message_id, "sent_at": now}
                    table = cast(Table, Digest.__table__)
                    session.connection().execute(
                        update(table)
                        .where(
                            _among(session, table.c.id, ids),
                            table.c.status.in_([DigestStatus.SENDING.value, DigestStatus.QUEUED.value]),
                        )
                        .values(**values)
                    )
            break
        except (OperationalError, InterfaceError):
            # The provider has answered: the outcome must reach the database or the digest is sent again.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    for r in results:
        if r.outcome is Outcome.SENT:
            report.sent += 1
        elif r.outcome is Outcome.FAILED:
            report.failed += 1
        else:
            report.retry += 1
            if r.retry_after_s is not None:
                report.retry_after_s = max(report.retry_after_s or 0.0, r.retry_after_s)


def budget(ctx: Context) -> Budget:
    """The byte budget of a digest's own parts (``alerts.digests.assemble.plan``): what keeps a packed
    digest's substitutions below SendGrid's 10,000 bytes with ``BUDGET_MARGIN_BYTES`` to spare, after the
    subject and the links every digest carries (tokens counted at their longest)."""
    links = (
        len(ctx.links.digest_unsubscribe("")) + TOKEN_BYTES,
        len(ctx.links.manage("")) + TOKEN_BYTES,
    )
    tags = sum(len(tag) + 6 for tag in PART_TAGS.values()) + len("%%unsubscribe_url%%%%manage_url%%") + 12
    fixed = tags + SUBJECT_BYTES + sum(links)
    digest_url = len(ctx.links.digest_view("")) + TOKEN_BYTES
    return Budget(
        bytes=MAX_SUBSTITUTION_BYTES - BUDGET_MARGIN_BYTES - fixed,
        stop_link_bytes=len(ctx.links.unsubscribe("")) + TOKEN_BYTES,
        more_bytes=2 * (MORE_NOTE_BYTES + digest_url),
    )


def send_range(ctx: Context, after_id: int, upto_id: int) -> DigestReport:
    """Send the queued digests with after_id < id <= upto_id."""
    report = DigestReport()
    clock = time.perf_counter
    started = clock()
    with transaction(ctx.engine) as session:
        lease, claimed = _claim(session, after_id, upto_id, ctx.lease_s)
        if not claimed:
            return report
        items = _items(session, after_id, upto_id, lease)
        # Digests whose items have the same shapes have the same content: each distinct one is planned
        # once per batch (identical digests: once), then bound to each subscriber's links.
        found: dict[tuple[Shape, ...], Entries] = {}
        for carried in items.values():
            if carried.key not in found:
                found[carried.key] = entries(carried.key)
        keys: set[str] = {CHANGES_SECTION, *INTRO.values()}
        for these in found.values():
            keys |= needed_keys(*these)
        fragments = load_fragments(session, keys)
        absent = sorted(keys - fragments.keys())
        if absent:
            _render_missing(session, ctx.renderer, ctx.site, absent)
            fragments |= load_fragments(session, set(absent))
        limits = budget(ctx)
        read = clock()
        distinct = {shapes: plan(shapes, fragments, limits, these) for shapes, these in found.items()}
        report.timings["plan_s"] = clock() - read
        report.claimed = len(claimed)
        prepared: list[_Prepared] = []
        skipped, suppressed, empty = [], [], []
        nothing = _Carried()
        for c in claimed:
            if c.email is None or c.manage_token is None:
                skipped.append(c.digest_id)
                continue
            if c.suppressed:
                suppressed.append(c.digest_id)
                continue
            carried = items.get(c.digest_id, nothing)
            planned = distinct.get(carried.key)
            if planned is None:
                empty.append(c.digest_id)  # nothing material left: no email
                continue
            assembled = planned.bind(carried.tokens)
            prepared.append(_Prepared(c.digest_id, c.email, c.manage_token, assembled))
            report.omitted += assembled.omitted
            report.shortened += 1 if assembled.omitted else 0
        _mark(session, skipped, DigestStatus.SKIPPED, "subscriber erased before sending")
        _mark(session, suppressed, DigestStatus.SUPPRESSED, "address is suppressed")
        _mark(session, empty, DigestStatus.EMPTY)
    report.skipped, report.suppressed, report.empty = len(skipped), len(suppressed), len(empty)
    report.timings["claim_s"] = clock() - started
    started = clock()
    requests = batches(ctx, prepared, report)
    report.timings["assemble_s"] = clock() - started
    # Each batch's outcome is recorded as soon as the provider answered, so a crash later never re-sends an
    # accepted one; single-digest batches (too large to pack) are recorded a few at a time, since a
    # transaction per email would cost more than its request (a crash between re-sends at most those).
    unrecorded: list[Result] = []
    for index, batch in enumerate(requests):
        report.content_chars += len(batch.content.html) + len(batch.content.text)
        report.content_chars += sum(len(p) for r in batch.recipients if r.parts for p in r.parts.values())
        started = clock()
        try:
            results = ctx.transport.send(batch)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
            results = [Result(r.delivery_id, Outcome.RETRY, error=error) for r in batch.recipients]
        report.timings["transport_s"] = report.timings.get("transport_s", 0.0) + clock() - started
        unrecorded += results
        if len(batch.recipients) > 1 or len(unrecorded) >= RECORD_EVERY or index == len(requests) - 1:
            started = clock()
            _record(ctx.engine, unrecorded, report)
            unrecorded = []
            report.timings["record_s"] = report.timings.get("record_s", 0.0) + clock() - started
    return report
