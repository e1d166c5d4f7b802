"""What the link pages need to know about the subscription or subscriber behind a token, in one statement.

Mail scanners fetch every link of every email within minutes of a send: a million-recipient send is up to two
million page views. The token alone answers whether a link is genuine (a bad signature never reaches the
database, ``alerts.tokens``). Whether the subscription still exists (erasure and expired sign-ups delete it),
its state and how it is named to its owner need one read by primary key: the subscription joined to its
subscriber (the manage link) and to its trial (the title), with the count of the subscriber's other alerts.
Condition filters are a second small read, only for the rare subscription that has some.

Reads run outside a transaction (``alerts.db.autocommit``): one statement is one round trip, without
BEGIN / ROLLBACK around it. The one-click unsubscribe is one statement too on PostgreSQL (an ``UPDATE`` in a
``WITH`` beside the read); SQLite, local and without data-modifying ``WITH``, runs the two in a transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Select, Update, bindparam, exists, func, select, update
from sqlalchemy.orm import aliased

from alerts import subscriptions
from alerts.db import autocommit
from alerts.models import (
    Subscriber,
    Subscription,
    SubscriptionFilter,
    SubscriptionKind,
    SubscriptionStatus,
    Trial,
    utcnow,
)


@dataclass(frozen=True)
class LinkState:
    """One subscription as its confirm and unsubscribe pages show it."""

    subscription_id: int
    subscriber_id: int
    status: str
    # How the subscription is named to its subscriber (``alerts.subscriptions.describe``).
    what: str
    manage_token: str
    # The subscriber's other subscriptions that are not unsubscribed.
    others: int


@dataclass(frozen=True)
class Listed:
    """One row of the manage page."""

    id: int
    kind: str
    target: str
    label: str
    status: str
    # The trial's title when the service has seen the study; None for conditions and unknown trials.
    title: str | None


_other = aliased(Subscription)
_others = (
    select(func.count())
    .select_from(_other)
    .where(
        _other.subscriber_id == Subscription.subscriber_id,
        _other.id != Subscription.id,
        _other.status != SubscriptionStatus.UNSUBSCRIBED,
    )
    .scalar_subquery()
)
_trial_of_subscription = (Subscription.kind == SubscriptionKind.TRIAL) & (Trial.nct_id == Subscription.target)


def _state_query(*extra: Any) -> Select[Any]:
    # Built once at import; SQLAlchemy caches its compiled form and psycopg prepares it per connection.
    return (
        select(
            Subscription.id,
            Subscription.subscriber_id,
            Subscription.kind,
            Subscription.target,
            Subscription.label,
            Subscription.status,
            Subscription.include_narrower,
            Subscription.recruiting_only,
            Trial.title,
            Subscriber.manage_token,
            _others.label("others"),
            exists().where(SubscriptionFilter.subscription_id == Subscription.id).label("has_filters"),
            *extra,
        )
        .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .outerjoin(Trial, _trial_of_subscription)
        .where(Subscription.id == bindparam("subscription_id"))
    )


STATE = _state_query()
# A subscription's filters, read only when STATE says it has some (``has_filters``): filters are rare.
FILTERS = subscriptions.filter_rows_query(bindparam("subscription_id"))


def has_filters(row: Sequence[Any]) -> bool:
    return bool(row[11])


def state_of(row: Sequence[Any], filter_rows: Iterable[Sequence[str]] = ()) -> LinkState:
    """A STATE (or UNSUBSCRIBE_AND_READ) row, with the FILTERS rows when ``has_filters``."""
    (sub_id, subscriber_id, kind, target, label, status, narrower, recruiting, title, manage_token, others) = row[:11]
    filters = subscriptions.filters_from_rows(bool(recruiting), filter_rows)
    what = subscriptions.name_of(kind, target, label, title=title, filters=filters, include_narrower=bool(narrower))
    return LinkState(int(sub_id), int(subscriber_id), str(status), what, str(manage_token), int(others or 0))


def _state(conn: Connection, row: Sequence[Any] | None) -> LinkState | None:
    if row is None:
        return None
    filter_rows = conn.execute(FILTERS, {"subscription_id": row[0]}).tuples() if has_filters(row) else ()
    return state_of(row, filter_rows)


def read(engine: Engine, subscription_id: int) -> LinkState | None:
    """The subscription behind a confirm or unsubscribe token; None when it no longer exists."""
    with autocommit(engine).connect() as conn:
        return read_in(conn, subscription_id)


def read_in(conn: Connection, subscription_id: int) -> LinkState | None:
    """``read`` in the caller's connection (inside its transaction, e.g. ``session.connection()``)."""
    return _state(conn, conn.execute(STATE, {"subscription_id": subscription_id}).first())


def _unsubscribe_statement(every: bool) -> Update:
    target = (
        Subscription.subscriber_id
        == select(_other.subscriber_id).where(_other.id == bindparam("subscription_id")).scalar_subquery()
        if every
        else Subscription.id == bindparam("subscription_id")
    )
    return (
        update(Subscription)
        .where(target, Subscription.status != SubscriptionStatus.UNSUBSCRIBED)
        .values(status=SubscriptionStatus.UNSUBSCRIBED, unsubscribed_at=bindparam("now"))
    )


_UNSUBSCRIBE = {every: _unsubscribe_statement(every) for every in (False, True)}
# PostgreSQL: the UPDATE runs in a WITH beside the read, one statement and one round trip; the read sees the
# row as it was before (the page names the alert, whatever its state was). Keyed by ``every``.
UNSUBSCRIBE_AND_READ = {
    every: _state_query(
        select(func.count())
        .select_from(statement.returning(Subscription.id).cte("changed"))
        .scalar_subquery()
        .label("changed")
    )
    for every, statement in _UNSUBSCRIBE.items()
}


def unsubscribe_params(subscription_id: int) -> dict[str, Any]:
    return {"subscription_id": subscription_id, "now": utcnow()}


def unsubscribe(engine: Engine, subscription_id: int, *, every: bool = False) -> LinkState | None:
    """Unsubscribe from one alert (or, ``every``, from all of the subscriber's) and read it for the page.

    Idempotent, like ``alerts.subscriptions.unsubscribe`` / ``unsubscribe_all``, which do the same through a
    session. Returns the subscription as it was, or None when it no longer exists (nothing to change).
    """
    if engine.dialect.name == "postgresql":
        with autocommit(engine).connect() as conn:
            return _state(conn, conn.execute(UNSUBSCRIBE_AND_READ[every], unsubscribe_params(subscription_id)).first())
    # SQLite has no UPDATE inside WITH: a read and an UPDATE in one (local) transaction.
    with engine.begin() as conn:
        state = read_in(conn, subscription_id)
        if state is not None:
            conn.execute(_UNSUBSCRIBE[every], unsubscribe_params(subscription_id))
        return state


LISTED = (
    select(
        Subscriber.id,
        Subscription.id,
        Subscription.kind,
        Subscription.target,
        Subscription.label,
        Subscription.status,
        Trial.title,
    )
    .select_from(Subscriber)
    .outerjoin(Subscription, Subscription.subscriber_id == Subscriber.id)
    .outerjoin(Trial, _trial_of_subscription)
    .where(Subscriber.id == bindparam("subscriber_id"))
    .order_by(Subscription.created_at, Subscription.id)
)


def listed_of(rows: Sequence[Sequence[Any]]) -> list[Listed] | None:
    """LISTED rows as the manage page lists them; None when there are none (the subscriber was erased)."""
    if not rows:
        return None
    return [Listed(int(r[1]), r[2], r[3], r[4], r[5], r[6]) for r in rows if r[1] is not None]


def listed(engine: Engine, subscriber_id: int) -> list[Listed] | None:
    """A subscriber's subscriptions, oldest first, with trial titles where known; None once erased."""
    with autocommit(engine).connect() as conn:
        return listed_of(conn.execute(LISTED, {"subscriber_id": subscriber_id}).all())
