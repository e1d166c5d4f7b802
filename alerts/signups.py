"""Sign-up requests: the web records what was asked for; a worker decides what it means for the address.

The web request does the same work whatever the address (validate, record one row, queue one task), so
neither its answer nor its timing tells a stranger whether someone already follows something. The worker
then signs the address up for every target (``alerts.subscriptions.sign_up``: new, pending, unsubscribed
or already active) and returns the subscriptions that need confirming: one email confirms them all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import Connection, Insert, bindparam, delete, func, select, update
from sqlalchemy import insert as sql_insert
from sqlalchemy.orm import Session

from alerts import places, preferences
from alerts.addresses import AddressHasher
from alerts.compiled import compiled
from alerts.digests.preferences import DigestChoice, DigestPreferences
from alerts.models import SignupRequest, SubscriptionKind, utcnow
from alerts.preferences import Preferences
from alerts.subscriptions import Target, sign_up
from alerts.tokens import Signer

# A request not decided this long after it was queued lost its message: maintenance queues it again.
REQUEUE_AFTER_S = 120


def record(
    session: Session,
    email: str,
    targets: Sequence[Target],
    *,
    chosen: Preferences | None = None,
    digest: DigestChoice | None = None,
) -> int:
    """Record a sign-up (one INSERT); returns the id to queue. ``email`` is already normalized.

    ``chosen``: "Can I take part?" preferences sent with it (``preferences.offer``); ``digest``: how often
    and when (``DigestChoice``). Both are applied by the worker with the targets.
    """
    row = SignupRequest(**_values(email, targets, chosen, digest))
    session.add(row)
    session.flush()
    return int(row.id)


def insert(
    connection: Connection,
    email: str,
    targets: Sequence[Target],
    *,
    chosen: Preferences | None = None,
    digest: DigestChoice | None = None,
) -> int:
    """``record`` as one statement on a connection (the web's sign-up: no ORM unit of work for one row)."""
    now = utcnow()
    values = _values(email, targets, chosen, digest) | {"created_at": now, "queued_at": now}
    return int(connection.execute(sql_insert(SignupRequest).values(values).returning(SignupRequest.id)).scalar_one())


def _insert_statement() -> Insert:
    columns = ("email", "targets", "options", "created_at", "queued_at")
    return sql_insert(SignupRequest).values({c: bindparam(c) for c in columns}).returning(SignupRequest.id)


# ``insert`` for the web's async path on PostgreSQL (alerts.web.linkstore): compiled once.
INSERT_PG = compiled(_insert_statement())


def insert_params(
    email: str,
    targets: Sequence[Target],
    *,
    chosen: Preferences | None = None,
    digest: DigestChoice | None = None,
) -> dict[str, Any]:
    """``INSERT_PG``'s values, as ``record`` would store them (JSON columns wrapped for psycopg)."""
    values = _values(email, targets, chosen, digest)
    now = utcnow()
    return INSERT_PG.params(
        email=values["email"],
        targets=Jsonb(values["targets"]),
        options=Jsonb(values["options"]),  # None is JSON null, as the ORM stores it
        created_at=now,
        queued_at=now,
    )


def _values(
    email: str, targets: Sequence[Target], chosen: Preferences | None, digest: DigestChoice | None
) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if chosen is not None:
        options["preferences"] = dataclasses.asdict(chosen)
    if digest is not None and digest != DigestChoice():
        options["digest"] = digest.as_json()
    return {
        "email": email,
        "targets": [{"kind": str(t.kind), "key": t.key, "label": t.label} for t in targets],
        "options": options or None,
    }


@dataclass(frozen=True)
class Decision:
    # Subscriptions waiting for the subscriber's click: one confirmation email names them all.
    to_confirm: list[int]
    # Subscriptions that were already active: left alone, nothing is sent about them.
    already_active: list[int]


def decide(session: Session, request_id: int, signer: Signer, hasher: AddressHasher) -> Decision | None:
    """Apply a recorded sign-up and delete it. None when it is gone (decided already: a redelivered task).

    The row is locked first, so two workers handed the same request cannot both apply it.
    """
    row = session.scalar(select(SignupRequest).where(SignupRequest.id == request_id).with_for_update())
    if row is None:
        return None
    to_confirm: list[int] = []
    active: list[int] = []
    subscriber_id = 0
    options = row.options or {}
    chosen = Preferences(**options["preferences"]) if options.get("preferences") else None
    digest = _digest_choice(options.get("digest"), chosen)
    for item in row.targets:
        target = Target(SubscriptionKind(item["kind"]), item["key"], item["label"])
        outcome = sign_up(
            session,
            row.email,
            target,
            signer,
            hasher,
            frequency=digest.frequency,
            preferences=digest.preferences,
        )
        (to_confirm if outcome.needs_confirmation else active).append(outcome.subscription_id)
        subscriber_id = outcome.subscriber_id
    if chosen is not None and row.targets:
        # Stored only while the address has no active alert: a stranger's form cannot move someone's place.
        preferences.offer(session, subscriber_id, chosen)
    session.delete(row)
    return Decision(to_confirm=list(dict.fromkeys(to_confirm)), already_active=active)


def _digest_choice(data: Mapping[str, Any] | None, chosen: Preferences | None) -> DigestChoice:
    """The digest choice a sign-up recorded; without a time zone, the chosen city's (``places.timezone_of``)."""
    digest = DigestChoice.from_json(data) if data else DigestChoice()
    zone = places.timezone_of(chosen.city_id) if chosen is not None and chosen.city_id is not None else None
    if zone and (digest.preferences is None or digest.preferences.time_zone is None):
        current = digest.preferences or DigestPreferences()
        digest = DigestChoice(digest.frequency, dataclasses.replace(current, time_zone=zone))
    return digest


def stale(session: Session, older_than_s: int = REQUEUE_AFTER_S) -> list[int]:
    """Requests queued longer ago than ``older_than_s`` and still undecided, marked as queued again now."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    ids = [int(i) for i in session.scalars(select(SignupRequest.id).where(SignupRequest.queued_at < cutoff))]
    if ids:
        session.execute(
            update(SignupRequest)
            .where(SignupRequest.id.in_(ids))
            .values(queued_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    return ids


def waiting(session: Session) -> tuple[int, float | None]:
    """Undecided requests and the age in seconds of the oldest (None: none waiting), for operators."""
    count, oldest = session.execute(select(func.count(), func.min(SignupRequest.created_at))).one()
    if not count or oldest is None:
        return 0, None
    if oldest.tzinfo is None:  # SQLite hands aggregates back as naive UTC
        oldest = oldest.replace(tzinfo=UTC)
    return int(count), max(0.0, (utcnow() - oldest).total_seconds())


def expire(session: Session, days: int) -> int:
    """Requests never decided in ``days`` are dropped: an address is not kept for a sign-up that never ran."""
    cutoff = utcnow() - timedelta(days=days)
    result = session.execute(
        delete(SignupRequest).where(SignupRequest.created_at < cutoff).execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
