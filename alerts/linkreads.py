"""What the link pages show, each page read in ONE statement (PostgreSQL): the lean read path of a scanner burst.

A mail scanner opens every link of every email it scans, so the confirm, unsubscribe and manage pages are
read far more often than anything else. ``alerts.subscriptions`` names a subscription with a few small
reads (the trial's title; for a condition its concept's term, what the phrase means, its filters); here the
same reads are correlated subqueries of one statement, and ``subscriptions.shown`` / ``sentence`` rules turn
the row into the same words (``tests/test_linkreads.py`` checks they agree). The statements are SQLAlchemy
Core, compiled once for PostgreSQL and run by ``alerts.web.linkstore`` on psycopg's async connections.
SQLite (the embedded default) keeps the ORM path in ``alerts.web.links``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Select, any_, bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from alerts import preferences
from alerts.compiled import compiled
from alerts.digests.held import _not_carried as not_carried
from alerts.models import (
    ConditionConcept,
    ConditionMeaning,
    ConditionPhrase,
    HeldItem,
    Subscriber,
    Subscription,
    SubscriptionFilter,
    SubscriptionKind,
    SubscriptionStatus,
    Trial,
    UTCDateTime,
)
from alerts.preferences import Preferences
from alerts.subscriptions import Shown, filters_from_rows, sentence
from alerts.vocabulary import CONCEPT_PREFIX, target_concept

_UNSUBSCRIBED = SubscriptionStatus.UNSUBSCRIBED.value


def _naming(s: Any) -> list[ColumnElement[Any]]:
    """Everything ``subscriptions.describe`` reads about subscription ``s``, as columns of the same row."""
    title = select(Trial.title).where(Trial.nct_id == s.target).scalar_subquery()
    concept_term = (
        select(ConditionConcept.term)
        .where(
            s.target.startswith(CONCEPT_PREFIX, autoescape=True),
            ConditionConcept.id == func.substr(s.target, len(CONCEPT_PREFIX) + 1),
        )
        .scalar_subquery()
    )
    # Correlated to ``s`` two levels up (it sits inside the aggregate's subquery).
    main = (
        select(ConditionPhrase.concept_id)
        .where(ConditionPhrase.key == s.target)
        .correlate_except(ConditionPhrase)
        .scalar_subquery()
    )
    # alerts.vocabulary.meaning's order: the phrase's main concept first, then by trials, then by id (codepoints).
    meaning_terms = (
        select(
            func.array_agg(
                aggregate_order_by(
                    ConditionConcept.term,
                    ConditionConcept.id.is_distinct_from(main),
                    ConditionConcept.trials.desc(),
                    ConditionConcept.id.collate("C"),
                )
            )
        )
        .join(ConditionMeaning, ConditionMeaning.concept_id == ConditionConcept.id)
        .where(ConditionMeaning.phrase_key == s.target)
        .scalar_subquery()
    )
    phrase_label = select(ConditionPhrase.label).where(ConditionPhrase.key == s.target).scalar_subquery()
    filters = (
        select(
            func.json_agg(
                aggregate_order_by(
                    func.json_build_array(SubscriptionFilter.kind, SubscriptionFilter.value, SubscriptionFilter.label),
                    SubscriptionFilter.kind,
                    SubscriptionFilter.label,
                )
            )
        )
        .where(SubscriptionFilter.subscription_id == s.id)
        .scalar_subquery()
    )
    return [
        s.id,
        s.kind,
        s.target,
        s.label,
        s.status,
        s.include_narrower,
        s.recruiting_only,
        s.frequency,
        title,
        concept_term,
        meaning_terms,
        phrase_label,
        filters,
    ]


_NAMING_WIDTH = 13


@dataclass(frozen=True)
class Named:
    """One subscription as the pages show it."""

    id: int
    status: str
    frequency: str
    shown: Shown
    what: str  # subscriptions.describe's sentence


def _named(row: Sequence[Any]) -> Named:
    (sid, kind, target, label, status, narrower, recruiting, frequency, title, term, terms, phrase, filters) = row[
        :_NAMING_WIDTH
    ]
    if kind == SubscriptionKind.TRIAL:
        what = Shown(SubscriptionKind.TRIAL, target, title or None)
        return Named(int(sid), status, frequency, what, sentence(what))
    # alerts.subscriptions.shown: the concept's term, else what the phrase means, else as records wrote it.
    name = term if target_concept(target) is not None else (" or ".join(terms or ()) or None) or phrase
    what = Shown(SubscriptionKind.CONDITION, name or label)
    chosen = filters_from_rows(bool(recruiting), [tuple(f) for f in filters or ()])
    return Named(int(sid), status, frequency, what, sentence(what, chosen, bool(narrower)))


# --- GET /unsubscribe/{token} -------------------------------------------------------------------------


def _unsubscribe_statement() -> Select[Any]:
    s = aliased(Subscription)
    other = aliased(Subscription)
    others = (
        select(func.count())
        .select_from(other)
        .where(other.subscriber_id == s.subscriber_id, other.id != s.id, other.status != _UNSUBSCRIBED)
        .scalar_subquery()
    )
    return (
        select(*_naming(s), Subscriber.manage_token, others)
        .join(Subscriber, Subscriber.id == s.subscriber_id)
        .where(s.id == bindparam("id", type_=BigInteger))
    )


UNSUBSCRIBE_SQL = compiled(_unsubscribe_statement())


@dataclass(frozen=True)
class UnsubscribeView:
    subscription: Named
    manage_token: str
    others: int  # the subscriber's other alerts not unsubscribed


def unsubscribe_view(row: Sequence[Any] | None) -> UnsubscribeView | None:
    if row is None:
        return None
    return UnsubscribeView(_named(row), row[_NAMING_WIDTH], int(row[_NAMING_WIDTH + 1]))


# --- GET /confirm/{token} -----------------------------------------------------------------------------


def _confirm_statement() -> Select[Any]:
    s = aliased(Subscription)
    return (
        select(*_naming(s), Subscriber.manage_token)
        .join(Subscriber, Subscriber.id == s.subscriber_id)
        .where(s.id == any_(bindparam("ids", type_=ARRAY(BigInteger))))
    )


CONFIRM_SQL = compiled(_confirm_statement())


@dataclass(frozen=True)
class ConfirmView:
    """``alerts.web.links.Pending`` from one statement: the token's subscriptions that still exist."""

    ids: list[int]
    status: str  # pending if any is; else active if any is; else unsubscribed
    items: list[str]
    manage_token: str


def confirm_view(ids: Sequence[int], rows: Sequence[Sequence[Any]]) -> ConfirmView | None:
    by_id = {int(r[0]): r for r in rows}
    found = [by_id[i] for i in ids if i in by_id]  # the token's order, as alerts.web.links._load keeps it
    if not found:
        return None
    named = [_named(r) for r in found]
    statuses = {n.status for n in named}
    status = next(
        (s for s in (SubscriptionStatus.PENDING, SubscriptionStatus.ACTIVE) if s in statuses),
        SubscriptionStatus.UNSUBSCRIBED,
    )
    shown = [n for n in named if n.status != _UNSUBSCRIBED] or named
    return ConfirmView([n.id for n in named], status, [n.what for n in shown], found[0][_NAMING_WIDTH])


# --- GET /manage/{token} ------------------------------------------------------------------------------

_SUBSCRIBER_COLUMNS = (
    Subscriber.city_id,
    Subscriber.distance_km,
    Subscriber.distance_unit,
    Subscriber.recruiting_sites_only,
    Subscriber.age,
    Subscriber.sex,
    Subscriber.time_zone,
    Subscriber.digest_hour,
    Subscriber.digest_weekday,
)


def _manage_statement() -> Select[Any]:
    s = aliased(Subscription)
    # The subscriber's row even without subscriptions (outer join, id NULL): no row at all means erased.
    return (
        select(*_naming(s), *_SUBSCRIBER_COLUMNS)
        .select_from(Subscriber)
        .outerjoin(s, s.subscriber_id == Subscriber.id)
        .where(Subscriber.id == bindparam("id", type_=BigInteger))
        .order_by(s.created_at, s.id)
    )


MANAGE_SQL = compiled(_manage_statement())


@dataclass(frozen=True)
class ManageView:
    subscriptions: list[Named]  # oldest first (subscriptions.list_subscriptions's order)
    chosen: Preferences  # preferences.of(subscriber)
    time_zone: str
    digest_hour: int
    digest_weekday: int


def manage_view(rows: Sequence[Sequence[Any]]) -> ManageView | None:
    if not rows:
        return None
    first = rows[0][_NAMING_WIDTH:]
    city_id, distance_km, unit, recruiting_sites_only, age, sex, time_zone, hour, weekday = first[:9]
    # The columns themselves, not an ORM Subscriber built for preferences.of (a third of this function's time).
    chosen = preferences.stored(city_id, distance_km, unit, bool(recruiting_sites_only), age, sex)
    named = [_named(r) for r in rows if r[0] is not None]
    return ManageView(named, chosen, time_zone, int(hour), int(weekday))


# --- one-click POST /unsubscribe/{token} --------------------------------------------------------------
# What alerts.subscriptions.unsubscribe / unsubscribe_all do, and the unsubscribe page's read, as ONE statement
# (one round trip, atomic on its own): data-modifying CTEs end the subscription(s) and drop what they still
# hold for a digest (the rule is alerts.digests.held's own expression); the SELECT names what was ended (it
# reads the rows as they were before, which is all the answer needs).


def _owner() -> Any:
    owner = aliased(Subscription)
    return select(owner.subscriber_id).where(owner.id == bindparam("id", type_=BigInteger)).scalar_subquery()


def _unsubscribe_now_statement(everything: bool) -> Select[Any]:
    now = bindparam("now", type_=UTCDateTime())
    ending = update(Subscription).where(Subscription.status != _UNSUBSCRIBED)
    if everything:
        # subscriptions.unsubscribe_all, then held.drop_for_subscriber: what the subscriber still holds.
        ended = ending.where(Subscription.subscriber_id == _owner())
        dropped = delete(HeldItem).where(HeldItem.subscriber_id == _owner(), not_carried())
    else:
        # subscriptions.unsubscribe: held.drop_for_subscriptions only when the subscription was still on.
        ended = ending.where(Subscription.id == bindparam("id", type_=BigInteger))
        ended_ids = ended.values(status=_UNSUBSCRIBED, unsubscribed_at=now).returning(Subscription.id).cte("ended")
        dropped = delete(HeldItem).where(HeldItem.subscription_id.in_(select(ended_ids.c.id)), not_carried())
        return _unsubscribe_statement().add_cte(ended_ids, dropped.returning(HeldItem.id).cte("dropped"))
    return _unsubscribe_statement().add_cte(
        ended.values(status=_UNSUBSCRIBED, unsubscribed_at=now).returning(Subscription.id).cte("ended"),
        dropped.returning(HeldItem.id).cte("dropped"),
    )


UNSUBSCRIBE_ONE_SQL = compiled(_unsubscribe_now_statement(everything=False))
UNSUBSCRIBE_ALL_SQL = compiled(_unsubscribe_now_statement(everything=True))
