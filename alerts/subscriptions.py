"""Subscription rules: sign-up (double opt-in), confirm, unsubscribe, erase.

Functions take a session and work inside the caller's transaction; emails they imply are returned to
the caller, who queues them after commit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import BindParameter, Select, delete, select, update
from sqlalchemy.orm import Session

from alerts import ctgov, vocabulary
from alerts.addresses import AddressHasher, normalize_email
from alerts.conditions import condition_key
from alerts.digests import held
from alerts.digests.preferences import (
    IMMEDIATELY,
    DigestPreferences,
    apply_preferences,
    parse_frequency,
    refresh_schedule,
)
from alerts.matching import COUNTRY, PHASE, country_key
from alerts.models import (
    ConditionConcept,
    ConditionPhrase,
    Delivery,
    SignupRequest,
    Subscriber,
    Subscription,
    SubscriptionFilter,
    SubscriptionKind,
    SubscriptionStatus,
    Trial,
    utcnow,
)
from alerts.tokens import Purpose, Signer

# ASCII digits only: \d would also accept other scripts' digits (Arabic-Indic...), which no registry issues.
NCT_ID = re.compile(r"^NCT[0-9]{8}$")


class InvalidTarget(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    kind: SubscriptionKind
    key: str
    label: str


def trial_target(nct_id: str) -> Target:
    nct = nct_id.strip().upper()
    if not NCT_ID.match(nct):
        raise InvalidTarget("a trial is identified by NCT followed by 8 digits, e.g. NCT06740149")
    return Target(SubscriptionKind.TRIAL, nct, nct)


def condition_target(phrase: str) -> Target:
    label = " ".join(phrase.split())
    key = condition_key(label)
    if not key:
        raise InvalidTarget("the condition needs at least one letter or digit")
    if len(label) > 300:
        raise InvalidTarget("the condition is longer than 300 characters")
    return Target(SubscriptionKind.CONDITION, key, label)


def resolve_target(session: Session, target: Target) -> Target:
    """The target a sign-up is stored under: the target itself.

    A condition subscription follows its phrase (the condition key), known to the vocabulary or not: what
    the phrase means is ``alerts.vocabulary.meaning``, re-resolved as records teach it, and a trial listing
    the phrase itself always matches. (Kept for callers of the earlier design, which pinned a known phrase
    to one concept here.)
    """
    return target


# --- filters on condition subscriptions ---------------------------------------------------------------

MAX_FILTER_VALUES = 50
_PHASES = {
    key: code
    for code, label in ctgov.PHASE_LABELS.items()
    for key in (condition_key(code), condition_key(label), condition_key(code.replace("PHASE", "PHASE ")))
}


class InvalidFilter(InvalidTarget):
    pass


@dataclass(frozen=True)
class ConditionFilters:
    """Optional narrowing of a condition subscription; every filter given must hold. The default narrows nothing.

    ``recruiting_only``: only trials recruiting or not yet recruiting.
    ``countries``: only trials listing a site in one of these countries, named as ClinicalTrials.gov names
    them ("United States", "Korea, Republic of"); case, accents and punctuation do not matter.
    ``phases``: only trials in one of these phases, as codes or labels of ``alerts.ctgov.PHASE_LABELS``
    ("PHASE2" or "Phase 2"; "NA" / "Not applicable" for studies without phases, e.g. device trials).
    A trial listing no sites passes no country filter; one with no phase passes no phase filter.
    See ``alerts.matching`` for how they are applied.
    """

    recruiting_only: bool = False
    countries: tuple[str, ...] = ()
    phases: tuple[str, ...] = ()

    def rows(self) -> list[tuple[str, str, str]]:
        """(kind, value, label) rows for ``subscription_filters``; raises InvalidFilter."""
        rows: dict[tuple[str, str], str] = {}
        for name in _strings(self.countries, "countries"):
            key = country_key(name)
            if not key or len(name) > 100:
                raise InvalidFilter(f"not a country name: {name[:100]!r}")
            rows.setdefault((COUNTRY, key), name)
        for name in _strings(self.phases, "phases"):
            code = _PHASES.get(condition_key(name))
            if code is None:
                raise InvalidFilter(f"not a trial phase: {name[:100]!r} (one of {', '.join(ctgov.PHASE_LABELS)})")
            rows.setdefault((PHASE, code), ctgov.phase_label(code))
        return [(kind, value, label) for (kind, value), label in rows.items()]


def _strings(values: Iterable[str], what: str) -> list[str]:
    if isinstance(values, str):
        raise InvalidFilter(f"{what} must be a list, not one string")
    items = [" ".join(str(v).split()) for v in values]
    if len(items) > MAX_FILTER_VALUES:
        raise InvalidFilter(f"at most {MAX_FILTER_VALUES} {what}")
    return items


def _apply_options(
    session: Session,
    subscription: Subscription,
    rows: list[tuple[str, str, str]] | None,
    recruiting_only: bool | None,
    include_narrower: bool | None,
) -> None:
    if rows is not None:
        session.execute(delete(SubscriptionFilter).where(SubscriptionFilter.subscription_id == subscription.id))
        session.add_all(
            SubscriptionFilter(subscription_id=subscription.id, kind=kind, value=value, label=label)
            for kind, value, label in rows
        )
    if recruiting_only is not None:
        subscription.recruiting_only = recruiting_only
    if include_narrower is not None:
        subscription.include_narrower = include_narrower


def set_filters(
    session: Session, subscription_id: int, filters: ConditionFilters, *, include_narrower: bool | None = None
) -> Subscription | None:
    """Replace a condition subscription's filters (from the subscriber's own manage page).

    ``include_narrower`` (None: unchanged) widens a subscription to a MeSH concept to trials filed under
    narrower concepts; see ``alerts.matching``. Raises InvalidFilter for a trial subscription.
    """
    rows = filters.rows()
    subscription = session.get(Subscription, subscription_id)
    if subscription is None:
        return None
    if subscription.kind != SubscriptionKind.CONDITION:
        raise InvalidFilter("filters apply to condition alerts only")
    _apply_options(session, subscription, rows, filters.recruiting_only, include_narrower)
    return subscription


def filters_of(session: Session, subscription_id: int) -> ConditionFilters:
    """A subscription's filters as the subscriber set them (countries as typed, phases as codes)."""
    recruiting_only = bool(
        session.scalar(select(Subscription.recruiting_only).where(Subscription.id == subscription_id))
    )
    rows = session.execute(filter_rows_query(subscription_id)).all()
    return filters_from_rows(recruiting_only, rows)


def filter_rows_query(subscription_id: int | BindParameter[int]) -> Select[tuple[str, str, str]]:
    """(kind, value, label) of a subscription's filters, in the order ``filters_from_rows`` expects."""
    return (
        select(SubscriptionFilter.kind, SubscriptionFilter.value, SubscriptionFilter.label)
        .where(SubscriptionFilter.subscription_id == subscription_id)
        .order_by(SubscriptionFilter.kind, SubscriptionFilter.label)
    )


def filters_from_rows(recruiting_only: bool, rows: Iterable[Sequence[str]]) -> ConditionFilters:
    listed = list(rows)
    return ConditionFilters(
        recruiting_only=recruiting_only,
        countries=tuple(label for kind, _, label in listed if kind == COUNTRY),
        phases=tuple(value for kind, value, _ in listed if kind == PHASE),
    )


def describe_filters(filters: ConditionFilters, include_narrower: bool = False) -> str:
    """ " (recruiting only; in France or Germany; phase 2 or phase 3)", or "" without any."""
    parts = []
    if include_narrower:
        parts.append("including narrower terms")
    if filters.recruiting_only:
        parts.append("recruiting only")
    if filters.countries:
        parts.append("in " + " or ".join(filters.countries))
    if filters.phases:
        parts.append(" or ".join(ctgov.phase_label(p).lower() for p in filters.phases))
    return f" ({'; '.join(parts)})" if parts else ""


@dataclass(frozen=True)
class SignUp:
    subscription_id: int
    # True when a confirmation email should go out (pending); an active subscription is left alone.
    needs_confirmation: bool
    subscriber_id: int = 0


@dataclass(frozen=True)
class Shown:
    """What a subscription follows, as every email and page names it: only words the service vouches for.

    A trial is its NCT ID, with its registered title once the service has its record. A condition is its
    MeSH concept's term, or the phrase as registry records wrote it, from the vocabulary; the stored label
    only when the vocabulary knows neither (a sign-up made by an operator before any record taught the
    phrase: the web only accepts conditions the vocabulary vouches for, and stores that wording).
    """

    kind: SubscriptionKind
    name: str
    title: str | None = None


def shown(session: Session, subscription: Subscription) -> Shown:
    """The one place that decides how a subscription is named (confirmation email, link pages, manage)."""
    if subscription.kind == SubscriptionKind.TRIAL:
        title = session.scalar(select(Trial.title).where(Trial.nct_id == subscription.target))
        return Shown(SubscriptionKind.TRIAL, subscription.target, title or None)
    concept = vocabulary.target_concept(subscription.target)
    if concept is not None:
        name = session.scalar(select(ConditionConcept.term).where(ConditionConcept.id == concept))
    else:
        # A phrase is named by what it means today (its concepts' terms), else as records wrote it.
        name = vocabulary.meaning(session, subscription.target).name or session.scalar(
            select(ConditionPhrase.label).where(ConditionPhrase.key == subscription.target)
        )
    return Shown(SubscriptionKind.CONDITION, name or subscription.label)


def describe(session: Session, subscription: Subscription) -> str:
    """How a subscription is named to its subscriber, in a sentence ("changes to study NCT…: title")."""
    what = shown(session, subscription)
    if what.kind == SubscriptionKind.TRIAL:
        return sentence(what)
    return sentence(what, filters_of(session, subscription.id), subscription.include_narrower)


def sentence(what: Shown, filters: ConditionFilters | None = None, include_narrower: bool = False) -> str:
    """``describe``'s sentence from what it read (``alerts.linkreads`` reads the same in one statement)."""
    if what.kind == SubscriptionKind.TRIAL:
        return f"changes to study {what.name}" + (f": {what.title}" if what.title else "")
    return f"new studies for {what.name}" + describe_filters(filters or ConditionFilters(), include_narrower)


def get_or_create_subscriber(session: Session, email: str, signer: Signer, hasher: AddressHasher) -> Subscriber:
    address = normalize_email(email)
    subscriber = session.scalar(select(Subscriber).where(Subscriber.email == address))
    if subscriber is None:
        subscriber = Subscriber(email=address, email_hash=hasher(address), manage_token="")
        session.add(subscriber)
        session.flush()
        subscriber.manage_token = signer.sign(Purpose.MANAGE, subscriber.id)
    return subscriber


def sign_up(
    session: Session,
    email: str,
    target: Target,
    signer: Signer,
    hasher: AddressHasher,
    *,
    filters: ConditionFilters | None = None,
    include_narrower: bool | None = None,
    frequency: str | None = None,
    preferences: DigestPreferences | None = None,
) -> SignUp:
    """Sign up (pending until confirmed). A condition follows its phrase, whatever the vocabulary knows of it.

    ``filters`` and ``include_narrower`` (condition alerts only; None: leave as they are, or none for a new
    subscription) apply to a new, pending or unsubscribed subscription, which the subscriber confirms by
    email. An active subscription is never changed from here: anyone can type an address into the form;
    its owner changes filters from the manage page (``set_filters``).

    ``frequency`` ("immediately", "daily", "weekly"; None: unchanged, "immediately" for a new one) follows
    the same rule. ``preferences`` (time zone, hour, weekday of digests) apply only to a subscriber with no
    active subscription yet, for the same reason: a stranger's form cannot move someone's digest.
    """
    rows = filters.rows() if filters is not None else None
    chosen_frequency = parse_frequency(frequency) if frequency is not None else None
    if target.kind != SubscriptionKind.CONDITION and (
        rows or (filters and filters.recruiting_only) or include_narrower
    ):
        raise InvalidFilter("filters apply to condition alerts only")
    target = resolve_target(session, target)
    subscriber = get_or_create_subscriber(session, email, signer, hasher)
    subscription = session.scalar(
        select(Subscription).where(
            Subscription.subscriber_id == subscriber.id,
            Subscription.kind == target.kind,
            Subscription.target == target.key,
        )
    )
    if subscription is None:
        subscription = Subscription(
            subscriber_id=subscriber.id, kind=target.kind, target=target.key, label=target.label
        )
        session.add(subscription)
        session.flush()
        # Signed once: unsubscribe links in old emails keep working and sending never re-signs.
        subscription.unsubscribe_token = signer.sign(Purpose.UNSUBSCRIBE, subscription.id)
    if subscription.status == SubscriptionStatus.ACTIVE:
        # Re-submitting never downgrades an active subscription.
        return SignUp(subscription.id, needs_confirmation=False, subscriber_id=subscriber.id)
    if chosen_frequency is not None:
        subscription.frequency = chosen_frequency
    if preferences is not None or subscription.frequency != IMMEDIATELY or subscriber.digest_cadence is not None:
        # Only when digests are involved: an immediate sign-up costs no extra round trip.
        _apply_digest_choices(session, subscriber, preferences)
    if subscription.status == SubscriptionStatus.UNSUBSCRIBED:
        subscription.status = SubscriptionStatus.PENDING
        subscription.unsubscribed_at = None
    if target.kind == SubscriptionKind.CONDITION:
        _apply_options(
            session, subscription, rows, filters.recruiting_only if filters is not None else None, include_narrower
        )
    subscription.confirm_sent_at = utcnow()
    return SignUp(subscription.id, needs_confirmation=True, subscriber_id=subscriber.id)


def _apply_digest_choices(session: Session, subscriber: Subscriber, preferences: DigestPreferences | None) -> None:
    session.flush()
    active = session.scalar(
        select(Subscription.id).where(
            Subscription.subscriber_id == subscriber.id, Subscription.status == SubscriptionStatus.ACTIVE.value
        )
    )
    if preferences is not None and active is None:
        apply_preferences(session, subscriber, preferences)
    else:
        refresh_schedule(session, subscriber)


def confirm(session: Session, subscription_id: int) -> Subscription | None:
    """Pending -> active. Confirming twice is harmless; an unsubscribed one is not revived by an old link."""
    subscription = session.get(Subscription, subscription_id)
    if subscription is None:
        return None
    if subscription.status == SubscriptionStatus.PENDING:
        subscription.status = SubscriptionStatus.ACTIVE
        subscription.confirmed_at = utcnow()
    return subscription


def resend_confirmation(session: Session, subscription_id: int) -> Subscription | None:
    """A new confirmation email for a still-pending subscription (its link expired or got lost).

    Returns the subscription when an email should go out; None when it is gone, active or unsubscribed.
    """
    subscription = session.get(Subscription, subscription_id)
    if subscription is None or subscription.status != SubscriptionStatus.PENDING:
        return None
    subscription.confirm_sent_at = utcnow()
    return subscription


@dataclass(frozen=True)
class Listed:
    subscription: Subscription
    # The trial's title when the service has seen the study; None for conditions and unknown trials.
    title: str | None


def list_subscriptions(session: Session, subscriber_id: int) -> list[Listed]:
    """A subscriber's subscriptions, oldest first, with trial titles where known."""
    rows = session.execute(
        select(Subscription, Trial.title)
        .join(
            Trial,
            (Subscription.kind == SubscriptionKind.TRIAL) & (Trial.nct_id == Subscription.target),
            isouter=True,
        )
        .where(Subscription.subscriber_id == subscriber_id)
        .order_by(Subscription.created_at, Subscription.id)
    )
    return [Listed(subscription, title) for subscription, title in rows]


def unsubscribe(session: Session, subscription_id: int) -> Subscription | None:
    subscription = session.get(Subscription, subscription_id)
    if subscription is not None and subscription.status != SubscriptionStatus.UNSUBSCRIBED:
        subscription.status = SubscriptionStatus.UNSUBSCRIBED
        subscription.unsubscribed_at = utcnow()
        held.drop_for_subscriptions(session, [subscription.id])
    return subscription


def unsubscribe_all(session: Session, subscriber_id: int) -> int:
    result = session.execute(
        update(Subscription)
        .where(Subscription.subscriber_id == subscriber_id)
        .where(Subscription.status != SubscriptionStatus.UNSUBSCRIBED)
        .values(status=SubscriptionStatus.UNSUBSCRIBED, unsubscribed_at=utcnow())
    )
    held.drop_for_subscriber(session, subscriber_id)
    return int(getattr(result, "rowcount", 0) or 0)


def erase(session: Session, subscriber_id: int) -> bool:
    """Remove the person: address and subscriptions go; delivery history stays, with no address.

    Sign-ups of the address still waiting for a worker (``alerts.signups``) go too.
    """
    email = session.scalar(select(Subscriber.email).where(Subscriber.id == subscriber_id))
    if email is not None:
        session.execute(delete(SignupRequest).where(SignupRequest.email == email))
    session.execute(update(Delivery).where(Delivery.subscriber_id == subscriber_id).values(subscriber_id=None))
    held.drop_for_subscriber(session, subscriber_id, erase=True)
    theirs = select(Subscription.id).where(Subscription.subscriber_id == subscriber_id).scalar_subquery()
    session.execute(update(Delivery).where(Delivery.subscription_id.in_(theirs)).values(subscription_id=None))
    session.execute(delete(Subscription).where(Subscription.subscriber_id == subscriber_id))
    result = session.execute(delete(Subscriber).where(Subscriber.id == subscriber_id))
    return bool(getattr(result, "rowcount", 0))
