"""Suppressed addresses: never emailed again (hard bounce, spam report, operator's decision).

Kept by keyed hash only (``AddressHasher`` over the normalized address), so a suppression outlives the
subscriber's erasure without keeping the address. Sending checks it (``sending._recipients`` and
``pipeline.send_confirmation`` join on ``Subscriber.email_hash``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from alerts.addresses import AddressHasher, InvalidAddress, normalize_email
from alerts.digests import held
from alerts.models import Suppression, utcnow


def address_hash(hasher: AddressHasher, email: str) -> str:
    """The hash a subscriber with this address has (``Subscriber.email_hash``)."""
    try:
        normalized = normalize_email(email)
    except InvalidAddress:
        # Providers report addresses we would have refused; hash them the way we would have stored them.
        normalized = email.strip().lower()
    return hasher(normalized)


@dataclass(frozen=True)
class NewSuppression:
    email_hash: str
    reason: str
    source: str
    detail: str | None = None


def insert_ignoring_conflicts(session: Session, model: Any, column: str) -> Any:
    """``INSERT ... ON CONFLICT (column) DO NOTHING`` on PostgreSQL and SQLite, for many rows at once."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(model).on_conflict_do_nothing(index_elements=[column])
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(model).on_conflict_do_nothing(index_elements=[column])
    raise NotImplementedError(f"no ON CONFLICT support for {dialect}")


def suppress_many(session: Session, items: Iterable[NewSuppression]) -> int:
    """Add suppressions; an address already suppressed keeps its first reason. Returns how many were new."""
    rows: dict[str, dict[str, Any]] = {}
    now = utcnow()
    for item in items:
        rows.setdefault(
            item.email_hash,
            {
                "email_hash": item.email_hash,
                "reason": item.reason[:100],
                "source": item.source[:100],
                "detail": item.detail[:2000] if item.detail else None,
                "created_at": now,
            },
        )
    if not rows:
        return 0
    values = list(rows.values())
    stmt = insert_ignoring_conflicts(session, Suppression, "email_hash")
    result = session.execute(stmt.values(values).returning(Suppression.email_hash))
    added = len(result.all())
    # A suppressed address gets no digest either: what it had waiting is dropped.
    held.drop_for_addresses(session, list(rows))
    return added


def suppress(
    session: Session,
    hasher: AddressHasher,
    email: str,
    reason: str,
    source: str = "operator",
    detail: str | None = None,
) -> bool:
    """Suppress one address. False when it already was."""
    return suppress_many(session, [NewSuppression(address_hash(hasher, email), reason, source, detail)]) == 1


def lift(session: Session, hasher: AddressHasher, email: str) -> bool:
    """Remove the suppression of an address (an operator's decision). False when there was none."""
    result = session.execute(delete(Suppression).where(Suppression.email_hash == address_hash(hasher, email)))
    return bool(getattr(result, "rowcount", 0))


def is_suppressed(session: Session, hasher: AddressHasher, email: str) -> bool:
    found = session.scalar(select(Suppression.id).where(Suppression.email_hash == address_hash(hasher, email)))
    return found is not None


def list_suppressions(session: Session, limit: int = 100, reason: str | None = None) -> list[Suppression]:
    """Newest first."""
    query = select(Suppression).order_by(Suppression.created_at.desc(), Suppression.id.desc()).limit(limit)
    if reason:
        query = query.where(Suppression.reason == reason)
    return list(session.scalars(query))
