"""Subscription rules: sign-up (double opt-in), confirm, unsubscribe, erase.

Functions take a session and work inside the caller's transaction; emails they imply are returned to
the caller, who queues them after commit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from alerts.addresses import AddressHasher, normalize_email
from alerts.conditions import condition_key
from alerts.models import (
    Delivery,
    Subscriber,
    Subscription,
    SubscriptionKind,
    SubscriptionStatus,
    Trial,
    utcnow,
)
from alerts.tokens import Purpose, Signer

NCT_ID = re.compile(r"^NCT\d{8}$")


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


@dataclass(frozen=True)
class SignUp:
    subscription_id: int
    # True when a confirmation email should go out (pending); an active subscription is left alone.
    needs_confirmation: bool


def describe(session: Session, subscription: Subscription) -> str:
    """How a subscription is named to its subscriber."""
    if subscription.kind == SubscriptionKind.TRIAL:
        title = session.scalar(select(Trial.title).where(Trial.nct_id == subscription.target))
        return f"changes to study {subscription.target}" + (f": {title}" if title else "")
    return f"new studies for {subscription.label}"


def get_or_create_subscriber(session: Session, email: str, signer: Signer, hasher: AddressHasher) -> Subscriber:
    address = normalize_email(email)
    subscriber = session.scalar(select(Subscriber).where(Subscriber.email == address))
    if subscriber is None:
        subscriber = Subscriber(email=address, email_hash=hasher(address), manage_token="")
        session.add(subscriber)
        session.flush()
        subscriber.manage_token = signer.sign(Purpose.MANAGE, subscriber.id)
    return subscriber


def sign_up(session: Session, email: str, target: Target, signer: Signer, hasher: AddressHasher) -> SignUp:
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
        return SignUp(subscription.id, needs_confirmation=False)
    if subscription.status == SubscriptionStatus.UNSUBSCRIBED:
        subscription.status = SubscriptionStatus.PENDING
        subscription.unsubscribed_at = None
    subscription.confirm_sent_at = utcnow()
    return SignUp(subscription.id, needs_confirmation=True)


def confirm(session: Session, subscription_id: int) -> Subscription | None:
    """Pending -> active. Confirming twice is harmless; an unsubscribed one is not revived by an old link."""
    subscription = session.get(Subscription, subscription_id)
    if subscription is None:
        return None
    if subscription.status == SubscriptionStatus.PENDING:
        subscription.status = SubscriptionStatus.ACTIVE
        subscription.confirmed_at = utcnow()
    return subscription


def unsubscribe(session: Session, subscription_id: int) -> Subscription | None:
    subscription = session.get(Subscription, subscription_id)
    if subscription is not None and subscription.status != SubscriptionStatus.UNSUBSCRIBED:
        subscription.status = SubscriptionStatus.UNSUBSCRIBED
        subscription.unsubscribed_at = utcnow()
    return subscription


def unsubscribe_all(session: Session, subscriber_id: int) -> int:
    result = session.execute(
        update(Subscription)
        .where(Subscription.subscriber_id == subscriber_id)
        .where(Subscription.status != SubscriptionStatus.UNSUBSCRIBED)
        .values(status=SubscriptionStatus.UNSUBSCRIBED, unsubscribed_at=utcnow())
    )
    return int(getattr(result, "rowcount", 0) or 0)


def erase(session: Session, subscriber_id: int) -> bool:
    """Remove the person: address and subscriptions go; delivery history stays, with no address."""
    session.execute(update(Delivery).where(Delivery.subscriber_id == subscriber_id).values(subscriber_id=None))
    session.execute(delete(Subscription).where(Subscription.subscriber_id == subscriber_id))
    result = session.execute(delete(Subscriber).where(Subscriber.id == subscriber_id))
    return bool(getattr(result, "rowcount", 0))
